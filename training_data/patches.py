"""Patch cutting and the patch HDF5 layout (step 3, genRDFPatchesSyn.py; read by network_model/data.py).

Grid (mode "patches"): along each axis of length n, patches of size p start at 0, s, 2s, ... while
they fit; when the last one stops short of the end, one more patch flush with the end (start n - p)
is added so every voxel is covered. Patches per axis: ceil((n - p) / s) + 1; per volume the product
over the axes, before the brain-fraction filter (keep a patch when mean(mask) >= threshold).
Crop (mode "crop"): one crop of the given size per volume, centred on the mask's bounding box,
zero-padded where it leaves the volume (volumes smaller than the crop are padded).

Target crops ("bbox", step 3's default): one crop per target volume centred on its mask's bounding
box, the same size for every target: the largest bounding box plus a margin, rounded up to a
multiple of 16 (`bbox_crop_size`). Data consistency needs the sources of the field: the true chi's
NDI inside a 32^3 patch is several times its whole-volume value (benchmarks/results_ndi_floor.md).

HDF5 layout (contract 2, format_version 2):
    /source/field, /source/mask, /source/chi     float32 (N, px, py, pz)
    /target/field, /target/mask, /target/weight  float32 (M, qx, qy, qz)  (sizes may differ)
        chunks (1, px, py, pz), lzf or gzip; field and chi in ppm, mask 0/1, weight in [0, 1];
        field, chi and weight are 0 outside the mask (the network's input contract)
    /source, /target attrs: voxel_size_mm (3), b0_dir (3), files (list of str), patch_size (3);
        /target also b0_tesla, te_s (TE of the weighting echo) — NaN when unknown
    root attrs: patch_size (3 ints, the source's), stride (3 ints, -1s in crop mode), mode,
        target_mode ("bbox" | "patches"), units="ppm", input_contract="field*mask",
        format_version=2 (+ brain_threshold, seed, config JSON)
    /index/source_volume, /index/target_volume   int32 (N,), (M,)  which input volume
    /index/source_origin, /index/target_origin   int32 (N, 3), (M, 3) patch start (may be < 0
        in crop mode, where the crop is padded)
"""
from __future__ import annotations

import json
import math

import numpy as np

from training_data.errors import InputError

FORMAT_VERSION = 2
INPUT_CONTRACT = "field*mask"
#: Target crop sizes are rounded up to this (2**depth for networks up to 4 poolings).
CROP_MULTIPLE = 16
GROUP_DATASETS = {"source": ("field", "mask", "chi"), "target": ("field", "mask", "weight")}


def axis_starts(n: int, p: int, stride: int) -> list[int]:
    """Patch starts along one axis (see the module doc); raises InputError when p > n or stride <= 0."""
    if stride <= 0:
        raise InputError(f"stride: expected a positive number of voxels, got {stride}")
    if p <= 0:
        raise InputError(f"patch size: expected a positive number of voxels, got {p}")
    if p > n:
        raise InputError(f"patch size {p} is larger than the volume ({n} voxels along an axis); "
                         "use a smaller --patch-size or --mode crop (pads)")
    starts = list(range(0, n - p + 1, stride))
    if starts[-1] + p < n:
        starts.append(n - p)
    return starts


def patch_count(shape, patch_size, stride) -> int:
    """Number of grid patches of a volume: prod over axes of ceil((n - p) / s) + 1."""
    return int(np.prod([math.ceil((n - p) / s) + 1 for n, p, s in zip(shape, patch_size, stride)]))


def grid_origins(shape, patch_size, stride) -> np.ndarray:
    """All grid patch origins, int (k, 3), in C order."""
    starts = [axis_starts(int(n), int(p), int(s)) for n, p, s in zip(shape, patch_size, stride)]
    mesh = np.meshgrid(*starts, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1).astype(np.int64)


def extract_patch(volume, origin, size) -> np.ndarray:
    """volume[origin : origin + size] as float32, zero-padded where the box leaves the volume."""
    volume = np.asarray(volume)
    origin = np.asarray(origin, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    out = np.zeros(tuple(size), dtype=np.float32)
    src_lo = np.maximum(origin, 0)
    src_hi = np.minimum(origin + size, volume.shape[:3])
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - origin
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = volume[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def assemble_patches(patches, origins, shape) -> np.ndarray:
    """Put patches back into a volume (mean where they overlap, 0 where none lands); float32."""
    total = np.zeros(tuple(shape), dtype=np.float64)
    count = np.zeros(tuple(shape), dtype=np.float64)
    for patch, origin in zip(patches, origins):
        box = tuple(slice(int(o), int(o) + s) for o, s in zip(origin, np.shape(patch)))
        total[box] += patch
        count[box] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def brain_fraction(mask, origin, size) -> float:
    """Fraction of the patch at `origin` inside the mask."""
    return float(extract_patch(mask, origin, size).mean())


def bbox_crop_origin(mask, crop_size) -> np.ndarray:
    """Origin of a crop of `crop_size` centred on the mask's bounding box (may be < 0: padding)."""
    idx = np.argwhere(np.asarray(mask) > 0)
    if idx.size == 0:
        raise InputError("crop mode: the mask is empty")
    centre2 = idx.min(0) + idx.max(0)  # twice the bbox centre, kept integer
    return (centre2 + 1) // 2 - np.asarray(crop_size) // 2


def bbox_crop_size(masks, margin_vox: int = 8, multiple: int = CROP_MULTIPLE) -> tuple:
    """Size of a crop holding every mask's bounding box plus `margin_vox` per side, per axis rounded
    up to a multiple of `multiple` (raises InputError on an empty mask)."""
    size = np.zeros(3, dtype=np.int64)
    for mask in masks:
        idx = np.argwhere(np.asarray(mask) > 0)
        if idx.size == 0:
            raise InputError("target crop: a mask is empty")
        size = np.maximum(size, idx.max(0) - idx.min(0) + 1 + 2 * int(margin_vox))
    return tuple(int(-(-n // multiple) * multiple) for n in size)


def select_origins(mask, patch_size, stride, brain_threshold: float = 0.0, random_crops: int = 0,
                   rng: np.random.Generator | None = None, grid: bool = True, max_tries: int = 20) -> np.ndarray:
    """Patch origins of one volume: grid patches and random crops with enough brain; int (k, 3).

    Args:
        mask: (x, y, z) brain mask.
        patch_size, stride: 3 ints each.
        brain_threshold: keep patches with mean(mask) >= this (0 keeps all).
        random_crops: number of extra uniformly placed patches (each redrawn up to `max_tries`
            times until it passes the threshold, then dropped).
        rng: generator for the random crops.
        grid: include the grid patches.
    """
    shape = np.shape(mask)[:3]
    mask = np.asarray(mask, dtype=np.float32)
    out = []
    if grid:
        for origin in grid_origins(shape, patch_size, stride):
            if brain_fraction(mask, origin, patch_size) >= brain_threshold:
                out.append(origin)
    if random_crops:
        for n, p in zip(shape, patch_size):
            axis_starts(int(n), int(p), 1)  # same size checks as the grid
        rng = rng if rng is not None else np.random.default_rng(0)
        high = np.asarray(shape) - np.asarray(patch_size) + 1
        for _ in range(int(random_crops)):
            for _ in range(max_tries):
                origin = rng.integers(0, high)
                if brain_fraction(mask, origin, patch_size) >= brain_threshold:
                    out.append(origin)
                    break
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


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
        h5.attrs["patch_size"] = np.asarray(self.patch_size, dtype=np.int64)
        h5.attrs["stride"] = np.asarray(stride, dtype=np.int64)
        h5.attrs["mode"] = mode
        h5.attrs["target_mode"] = target_mode
        h5.attrs["input_contract"] = INPUT_CONTRACT
        h5.attrs["units"] = "ppm"
        h5.attrs["format_version"] = FORMAT_VERSION
        for key, value in (extra_attrs or {}).items():
            h5.attrs[key] = value

    def count(self, group_name: str) -> int:
        return int(self.h5[group_name]["field"].shape[0])

    def append(self, group_name: str, volume_index: int, origins, **volumes) -> int:
        """Cut the patches at `origins` from each named volume (the group's three) and append them.

        Returns:
            The number of patches appended.
        """
        names = GROUP_DATASETS[group_name]
        if set(volumes) != set(names):
            raise ValueError(f"{group_name} needs volumes {names}, got {sorted(volumes)}")
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
        return k

    def set_group_attrs(self, group_name: str, voxel_size_mm, b0_dir, files, b0_tesla=None, te_s=None) -> None:
        attrs = self.h5[group_name].attrs
        nan3 = [float("nan")] * 3
        attrs["voxel_size_mm"] = np.asarray(voxel_size_mm if voxel_size_mm is not None else nan3, dtype=np.float64)
        attrs["b0_dir"] = np.asarray(b0_dir if b0_dir is not None else nan3, dtype=np.float64)
        attrs["files"] = [str(f) for f in files]
        if group_name == "target":
            attrs["b0_tesla"] = float("nan") if b0_tesla is None else float(b0_tesla)
            attrs["te_s"] = float("nan") if te_s is None else float(te_s)


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
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
