"""Patch HDF5 (data contract 2): written by step 3 (genRDFPatchesSyn.py), read by step 4.

HDF5 layout (contract 2, format_version 3):
    /source/field, /source/mask, /source/chi     float32 (N, px, py, pz)
    /target/field, /target/mask, /target/weight  float32 (M, qx, qy, qz)  (sizes may differ)
        chunks (1, px, py, pz), lzf or gzip; field and chi in ppm, mask 0/1, weight in [0, 1];
        field, chi and weight are 0 outside the mask (the network's input contract)
    /source, /target attrs: voxel_size_mm (3), b0_dir (3), files (list of str), patch_size (3);
        /target also b0_tesla, te_s (TE of the weighting echo) — NaN when unknown, or when the
        target crops come from several acquisition protocols (then see `protocols`)
    /target attr protocols: JSON list of the distinct protocols of the target crops, each
        {"voxel_size_mm", "b0_dir", "b0_tesla", "te_s"} (null = unknown)   [format_version 3]
    root attrs: patch_size (3 ints, the source's), stride (3 ints, -1s in crop mode), mode,
        target_mode ("bbox" | "patches"), units="ppm", input_contract="field*mask",
        format_version=3 (+ brain_threshold, seed, config JSON)
    /index/source_volume, /index/target_volume   int32 (N,), (M,)  which input volume
    /index/source_origin, /index/target_origin   int32 (N, 3), (M, 3) patch start (may be < 0
        in crop mode, where the crop is padded)
    /index/target_protocol   int32 (M,)  each target crop's entry of `protocols`   [format_version 3]

Version 3 lets one file hold targets of several protocols (field strengths, echo times, B0
directions, voxel sizes: step 4 gives every crop its own dipole kernel and phase scale); a version-2
file (no `protocols`) is read as one protocol, the group attrs'.

`PatchFileWriter` is the one writer (step 3 and `write_patch_file` for in-memory arrays);
`read_patch_group` checks a group against the contract, `read_patch_file_info` summarises a file.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from daqsm.errors import InputError
from daqsm.training_data.geometry import extract_patch

FORMAT_VERSION = 3
INPUT_CONTRACT = "field*mask"
GROUP_DATASETS = {"source": ("field", "mask", "chi"), "target": ("field", "mask", "weight")}
SOURCE_KEYS, TARGET_KEYS = GROUP_DATASETS["source"], GROUP_DATASETS["target"]


@dataclass(frozen=True)
class Protocol:
    """The acquisition a target crop comes from: what its dipole kernel and NDI phase scale need.

    voxel_size_mm, b0_dir: 3 floats each; b0_tesla, te_s: the weighting echo's (None: unknown).
    """

    voxel_size_mm: tuple | None
    b0_dir: tuple | None
    b0_tesla: float | None = None
    te_s: float | None = None

    def __post_init__(self):  # plain floats (tuples for the vectors); a missing or non-finite value is None
        for key in ("voxel_size_mm", "b0_dir"):
            value = getattr(self, key)
            object.__setattr__(self, key, None if value is None else tuple(float(v) for v in value))
        for key in ("b0_tesla", "te_s"):
            value = getattr(self, key)
            object.__setattr__(self, key, None if value is None or not math.isfinite(float(value)) else float(value))

    def same_as(self, other: "Protocol", tol: float = 1e-3) -> bool:
        """Equal within `tol` (an unknown value equals only an unknown one)."""
        return all(same_value(getattr(self, k), getattr(other, k), tol) for k in Protocol.__dataclass_fields__)

    def as_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, item: dict) -> "Protocol":
        return cls(*(item.get(k) for k in cls.__dataclass_fields__))


def same_value(a, b, tol: float = 1e-3) -> bool:
    """Two geometry/acquisition values (numbers or vectors) equal within `tol`; None equals only None."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b, atol=tol))


class PatchFileWriter:
    """Append patches to the contract-2 layout in an open h5py.File (the caller handles the temp name).

    Example:
        with h5py.File(tmp, "w") as h5:
            writer = PatchFileWriter(h5, (64, 64, 64), (64, 64, 64), "patches")
            writer.append("source", volume_index, origins, field=f, mask=m, chi=c)
            writer.set_group_attrs("source", voxel_size_mm, b0_dir, files)
    """

    def __init__(self, h5, patch_size, stride, mode: str, compression: str = "lzf", extra_attrs=None,
                 target_patch_size=None, target_mode: str = "patches"):
        self.h5 = h5
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sizes = {"source": self.patch_size,
                      "target": tuple(int(p) for p in (target_patch_size or patch_size))}
        comp = None if compression == "none" else compression
        opts = 1 if comp == "gzip" else None
        for group_name, names in GROUP_DATASETS.items():
            group = h5.create_group(group_name)
            size = self.sizes[group_name]
            group.attrs["patch_size"] = np.asarray(size, dtype=np.int64)
            for name in names:
                group.create_dataset(name, (0,) + size, np.float32, maxshape=(None,) + size,
                                     chunks=(1,) + size, compression=comp, compression_opts=opts)
            group["field"].attrs["units"] = "ppm"
            if "chi" in group:
                group["chi"].attrs["units"] = "ppm"
        index = h5.create_group("index")
        for group_name in GROUP_DATASETS:
            index.create_dataset(f"{group_name}_volume", (0,), np.int32, maxshape=(None,), chunks=(1024,))
            index.create_dataset(f"{group_name}_origin", (0, 3), np.int32, maxshape=(None, 3), chunks=(1024, 3))
        index.create_dataset("target_protocol", (0,), np.int32, maxshape=(None,), chunks=(1024,))
        self._protocols: list = []  # the target group's distinct protocols, in order of first use
        h5.attrs["patch_size"] = np.asarray(self.patch_size, dtype=np.int64)
        h5.attrs["stride"] = np.asarray(stride, dtype=np.int64)
        h5.attrs["mode"] = mode
        h5.attrs["target_mode"] = target_mode
        h5.attrs["input_contract"] = INPUT_CONTRACT
        h5.attrs["units"] = "ppm"
        h5.attrs["format_version"] = FORMAT_VERSION
        from daqsm.outputs import storable_text

        for key, value in (extra_attrs or {}).items():
            h5.attrs[key] = storable_text(value)

    def count(self, group_name: str) -> int:
        return int(self.h5[group_name]["field"].shape[0])

    def append(self, group_name: str, volume_index: int, origins, protocol: Protocol | None = None,
               **volumes) -> int:
        """Cut the patches at `origins` from each named volume (the group's three) and append them.

        protocol: the target volume's acquisition (required for the target group; its crops are
            indexed into the group's `protocols`).

        Returns:
            The number of patches appended.
        """
        names = GROUP_DATASETS[group_name]
        if set(volumes) != set(names):
            raise ValueError(f"{group_name} needs volumes {names}, got {sorted(volumes)}")
        if group_name == "target" and protocol is None:
            raise ValueError("target patches need their protocol")
        origins = np.asarray(origins, dtype=np.int64).reshape(-1, 3)
        k = len(origins)
        if k == 0:
            return 0
        group = self.h5[group_name]
        start = self.count(group_name)
        for name in names:
            dset = group[name]
            dset.resize(start + k, axis=0)
            # One write per volume and dataset (h5py's per-call overhead dominates per-patch writes).
            size = self.sizes[group_name]
            dset[start:start + k] = np.stack([extract_patch(volumes[name], o, size) for o in origins])
        index = self.h5["index"]
        vol, org = index[f"{group_name}_volume"], index[f"{group_name}_origin"]
        vol.resize(start + k, axis=0)
        org.resize(start + k, axis=0)
        vol[start:] = volume_index
        org[start:] = origins
        if group_name == "target":
            which = next((i for i, seen in enumerate(self._protocols) if seen.same_as(protocol)), None)
            if which is None:
                self._protocols.append(protocol)
                which = len(self._protocols) - 1
            dset = index["target_protocol"]
            dset.resize(start + k, axis=0)
            dset[start:] = which
        return k

    def set_group_attrs(self, group_name: str, voxel_size_mm, b0_dir, files, b0_tesla=None, te_s=None) -> None:
        """The group's geometry and files; for the target group with crops of several protocols the
        scalar attrs are NaN and `protocols` lists them (`voxel_size_mm`... are then ignored)."""
        attrs = self.h5[group_name].attrs
        nan3 = [float("nan")] * 3
        if group_name == "target" and self._protocols:
            attrs["protocols"] = json.dumps([p.as_json() for p in self._protocols])
            if len(self._protocols) > 1:
                voxel_size_mm = b0_dir = b0_tesla = te_s = None
            else:
                only = self._protocols[0]
                voxel_size_mm, b0_dir, b0_tesla, te_s = only.voxel_size_mm, only.b0_dir, only.b0_tesla, only.te_s
        attrs["voxel_size_mm"] = np.asarray(voxel_size_mm if voxel_size_mm is not None else nan3, dtype=np.float64)
        attrs["b0_dir"] = np.asarray(b0_dir if b0_dir is not None else nan3, dtype=np.float64)
        from daqsm.outputs import storable_text

        attrs["files"] = storable_text([str(f) for f in files])
        if group_name == "target":
            attrs["b0_tesla"] = float("nan") if b0_tesla is None else float(b0_tesla)
            attrs["te_s"] = float("nan") if te_s is None else float(te_s)


def write_patch_file(path, source: dict, target: dict, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                     b0_tesla: float | None = None, te_s: float | None = None, files=("synthetic",)) -> str:
    """Write in-memory patches as a contract-2 file (with /index), atomically.

    Args:
        source: {'field' ppm, 'mask' 0/1, 'chi' ppm} float32 (N, px, py, pz).
        target: {'field' ppm, 'mask' 0/1, 'weight' [0, 1]} float32 (M, qx, qy, qz).
        voxel_size_mm, b0_dir: geometry of every patch; b0_tesla, te_s: the target's weighting echo.
    Field, chi and weight are multiplied by the mask (the network's input contract).
    """
    import h5py

    from daqsm.training_data.volume_io import atomic_path

    size = np.asarray(source["field"]).shape[1:]
    target_size = np.asarray(target["field"]).shape[1:]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = PatchFileWriter(h5, size, size, "patches", target_patch_size=target_size)
        for name, items in (("source", source), ("target", target)):
            for i in range(len(items["field"])):
                inside = np.asarray(items["mask"][i]) > 0
                volumes = {key: np.asarray(items[key][i], np.float32) for key in GROUP_DATASETS[name]}
                for key in volumes:
                    if key != "mask":
                        volumes[key] = np.where(inside, volumes[key], np.float32(0))
                protocol = Protocol(voxel_size_mm, b0_dir, b0_tesla, te_s) if name == "target" else None
                writer.append(name, i, np.zeros((1, 3), np.int64), protocol, **volumes)
        for name in GROUP_DATASETS:
            writer.set_group_attrs(name, voxel_size_mm, b0_dir, files, b0_tesla, te_s)
    return str(path)


def read_patch_file_info(path) -> dict:
    """Summary of a patch file: counts per group, patch size, stride, mode, group attrs (as lists)."""
    import h5py

    with h5py.File(path, "r") as h5:
        info = {key: _plain(value) for key, value in h5.attrs.items()}
        for group_name in GROUP_DATASETS:
            group = h5[group_name]
            info[group_name] = {"count": int(group["field"].shape[0]),
                                **{key: _plain(value) for key, value in group.attrs.items()}}
    return info


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind != "O" else [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and (value.startswith("{") or value.startswith("[{")):  # config, protocols
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class PatchGroup:
    """What a group of the patch file holds.

    Attributes:
        path: HDF5 file; group: 'source' or 'target'; count: number of patches N.
        patch_size: (px, py, pz); voxel_size_mm, b0_dir: geometry of every patch.
        b0_tesla, te_s: acquisition of the weighting echo (None when unknown).
        keys: the datasets read per patch (a missing `/target/weight` falls back to the mask).
        protocols: the distinct Protocols of a target group whose crops come from several (then
            voxel_size_mm, b0_dir, b0_tesla and te_s are None); () for one protocol.
        protocol_index: int32 (count,), each crop's entry of `protocols`; None for one protocol.
    """

    path: str
    group: str
    count: int
    patch_size: tuple
    voxel_size_mm: tuple
    b0_dir: tuple
    b0_tesla: float | None
    te_s: float | None
    keys: tuple
    protocols: tuple = ()
    protocol_index: object = None

    @property
    def mixed(self) -> bool:
        """Crops of several protocols (each needs its own kernel and phase scale)."""
        return len(self.protocols) > 1

    def crop_protocols(self) -> list:
        """The Protocol of every crop, (count,)."""
        if not self.mixed:
            return [Protocol(self.voxel_size_mm, self.b0_dir, self.b0_tesla, self.te_s)] * self.count
        return [self.protocols[int(i)] for i in self.protocol_index]


def _attr_float(attrs, key):
    value = attrs.get(key)
    if value is None:
        return None
    value = float(np.ravel(value)[0])
    return value if math.isfinite(value) else None


def read_patch_group(path, group: str) -> PatchGroup:
    """Open a patch HDF5 and check one group against contract 2 (InputError naming what is wrong)."""
    import h5py

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: patch file not found")
    wanted = SOURCE_KEYS if group == "source" else TARGET_KEYS
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot open as HDF5 ({err})".splitlines()[0]) from None
    with h5:
        if group not in h5:
            raise InputError(f"{path}: no /{group} group; present: {', '.join(h5.keys()) or 'none'}")
        grp = h5[group]
        required = wanted if group == "source" else wanted[:2]
        missing = [k for k in required if k not in grp]
        keys = wanted
        if group == "target" and "weight" not in grp:
            keys = ("field", "mask", "mask")  # weight = mask when no magnitude was available
        if missing:
            raise InputError(f"{path}: /{group} lacks {', '.join(missing)}; present: {', '.join(grp.keys())}")
        shapes = {k: grp[k].shape for k in set(keys)}
        first = shapes[keys[0]]
        for key, shape in shapes.items():
            if len(shape) != 4 or shape != first:
                raise InputError(f"{path}: /{group}/{key} has shape {shape}, expected {first} (N, px, py, pz)")
        if first[0] < 1:
            raise InputError(f"{path}: /{group} holds no patches")
        check_input_contract(path, group, grp, first[0])
        attrs = dict(grp.attrs)
        protocols, index = _read_protocols(path, h5, group, attrs, int(first[0]))
    if len(protocols) > 1:
        return PatchGroup(path, group, int(first[0]), tuple(int(n) for n in first[1:]), None, None, None, None,
                          keys, tuple(protocols), index)
    return PatchGroup(path, group, int(first[0]), tuple(int(n) for n in first[1:]),
                      tuple(float(v) for v in attrs.get("voxel_size_mm", (1.0, 1.0, 1.0))),
                      tuple(float(v) for v in attrs.get("b0_dir", (0.0, 0.0, 1.0))),
                      _attr_float(attrs, "b0_tesla"), _attr_float(attrs, "te_s"), keys)


def _read_protocols(path, h5, group: str, attrs: dict, count: int) -> tuple[list, np.ndarray | None]:
    """The target group's distinct protocols and each crop's index (format 3); ([], None) otherwise."""
    if group != "target" or "protocols" not in attrs:
        return [], None
    index = h5["index"]["target_protocol"][...] if "target_protocol" in h5.get("index", {}) else None
    return parse_protocols(path, attrs["protocols"], index, count)


def parse_protocols(name: str, protocols_attr, index, count: int) -> tuple[list, np.ndarray | None]:
    """The `protocols` attr (JSON text or list) and `/index/target_protocol` of a target group, checked.

    Shared by the file reader and `make_patches`' in-memory dict (`name` says which in messages).
    Returns (protocols, per-crop index); the index is None for one protocol.
    """
    try:
        items = _plain(protocols_attr)  # parsed there when stored as text
        items = json.loads(items) if isinstance(items, str) else items
        protocols = [Protocol.from_json(item) for item in items]
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"{name}: /target attr protocols: expected a JSON list of protocols, cannot read it") from None
    if len(protocols) < 2:
        return protocols, None
    index = None if index is None else np.asarray(index, np.int32)
    if index is None or index.shape != (count,) or index.min() < 0 or index.max() >= len(protocols):
        raise InputError(f"{name}: /index/target_protocol: expected {count} indices into the {len(protocols)} "
                         "protocols of /target, found none or out of range; rewrite the file with step 3")
    return protocols, index


def check_input_contract(path: str, group: str, grp, count: int, samples: int = 4) -> None:
    """The network's input is field x mask in both domains (daqsm/network_model/unet.py): check a few
    patches (first, last, evenly spaced) and refuse a file whose field is non-zero outside the mask."""
    for i in sorted(set(np.linspace(0, count - 1, min(samples, count)).astype(int).tolist())):
        field, mask = np.asarray(grp["field"][i]), np.asarray(grp["mask"][i])
        outside = np.abs(field[mask <= 0])
        if outside.size and float(outside.max()) > 0:
            raise InputError(f"{path}: /{group}/field patch {i} is non-zero outside the mask (max |field| "
                             f"{float(outside.max()):.3g} ppm there); expected field x mask: rewrite the file "
                             "with step 3 (genRDFPatchesSyn.py) of this version")


