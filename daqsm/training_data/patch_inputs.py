"""Inputs of step 3 (genRDFPatchesSyn.py): synthetic maps + their field maps, and target datasets.

Source entries (`--source`), each expanded to one or more maps:
    FILE.h5      genChi output: /chi (N, x, y, z) ppm, /mask; its field maps either in the same file
                 (/field, as step 2 writes it) or in the matching `--source-fields FILE.h5` (/field)
    FOLDER/      genChi NIfTI output: chi_*.nii.gz with mask_*.nii.gz beside them
    FILE         one chi map (NIfTI, .mat as FILE.mat:VAR, .npy); masks from `--source-masks`
Field entries (`--source-fields`): FILE.h5 with /field, a FOLDER of field files (sorted names), or
FILE(s) (NIfTI / .mat, e.g. MATLAB-made) converted with --field-units/--b0/--te (units.to_ppm).

Target entries: case FOLDERs (contract 1: local_field.nii.gz in ppm, mask.nii.gz, optional
magnitude.nii.gz (4-D, echoes last) and case.json), or explicit `--target-field F --target-mask M
[--target-weight W]` lists. Weight = the chosen echo's magnitude (2nd by default), normalised to
max 1 inside the mask, times the mask; the mask itself when there is no magnitude.

Volumes are read lazily, one at a time, so memory stays at a few volumes for any N.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.training_data.formats import case_folder
from daqsm.training_data.formats.chi_folder import mask_path_for
from daqsm.training_data.formats.chi_h5 import read_chi_map
from daqsm.training_data.formats.field_h5 import read_field_map
from daqsm.training_data.input_check import check_case, check_files
from daqsm.training_data.volume_io import HDF5_SUFFIXES, check_mask, read_field, read_volume, suffix_of


@dataclass
class PatchVolume:
    """One volume to cut: field (ppm), mask (bool), and chi (source, ppm) or weight (target, [0, 1]).

    The field and the third volume are multiplied by the mask on construction: the network's input
    contract (daqsm/network_model/unet.py) is the local field x mask in both domains, so a synthetic field
    computed over the whole volume (or a MATLAB field with values outside the brain) never gives the
    source patches signal that target patches and inference inputs do not have.
    """

    label: str
    field_ppm: np.ndarray
    mask: np.ndarray
    third: np.ndarray
    voxel_size_mm: tuple | None = None
    b0_dir: tuple | None = None
    b0_tesla: float | None = None
    te_s: float | None = None

    def __post_init__(self):
        inside = np.asarray(self.mask, dtype=bool)
        self.field_ppm = np.where(inside, np.asarray(self.field_ppm, np.float32), np.float32(0))
        self.third = np.where(inside, np.asarray(self.third, np.float32), np.float32(0))


# --- source side -------------------------------------------------------------------------------


def _h5_datasets(path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return {name: (h5[name].shape, dict(h5[name].attrs), dict(h5.attrs))
                    for name in h5 if isinstance(h5[name], h5py.Dataset)}
    except OSError as err:
        raise InputError(f"{path}: cannot read as HDF5 ({err})".splitlines()[0]) from None


def _expand_maps(entry: str, what: str) -> list[tuple]:
    """One entry -> items ('h5', path, index) or ('file', path)."""
    if not os.path.exists(entry.rsplit(":", 1)[0] if ":" in entry else entry):
        raise InputError(f"{what} {entry}: not found")
    if os.path.isdir(entry):
        pattern = "chi_*.nii*" if what == "--source" else "*"
        names = sorted(p for p in glob.glob(os.path.join(entry, pattern))
                       if os.path.isfile(p) and not os.path.basename(p).startswith(".")
                       and suffix_of(p) in (".nii", ".nii.gz", ".mat", ".npy"))
        if what == "--source-fields":
            names = [p for p in names if not os.path.basename(p).startswith(("mask_", "chi_"))]
        if not names:
            raise InputError(f"{what} {entry}: folder holds no {'chi_*.nii.gz' if what == '--source' else 'field'} files")
        return [("file", p) for p in names]
    if suffix_of(entry) in HDF5_SUFFIXES:
        sets = _h5_datasets(entry)
        key = "chi" if what == "--source" else "field"
        if key not in sets:
            raise InputError(f"{entry}: no /{key} dataset; present: {', '.join(sets) or 'none'}")
        shape = sets[key][0]
        if len(shape) != 4:
            raise InputError(f"{entry}: /{key} expected 4-D (N, x, y, z), found shape {shape}")
        return [("h5", entry, i) for i in range(shape[0])]
    return [("file", entry)]


def step2_name(item) -> str:
    """The name step 2 records for a map (daqsm/training_data/fieldmaps.py): FILE_0003 or the file's stem."""
    from pathlib import Path

    if item[0] == "h5":
        return f"{Path(item[1]).stem}_{item[2]:04d}"
    name = os.path.basename(item[1])
    for suffix in (".nii.gz", ".nii", ".mat", ".npy", ".h5", ".hdf5"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def check_pairs(items, fields) -> dict:
    """Each field map belongs to its chi map: step 2's recorded input names must match (issue 23).

    Returns {field HDF5 path: (voxel_size_mm, b0_dir)} as step 2 recorded them, compared map by map
    in `SourceInputs.load`. Field files not made by step 2 (no record) are paired by position.
    """
    import h5py

    recorded, geometry = {}, {}
    for k, (item, field) in enumerate(zip(items, fields)):
        made_from = None
        if field[0] == "h5":
            if field[1] not in recorded:
                with h5py.File(field[1], "r") as h5:
                    names = h5.attrs.get("files")
                    recorded[field[1]] = [n.decode() if isinstance(n, bytes) else str(n) for n in names] \
                        if names is not None else None
                    geometry[field[1]] = tuple(h5.attrs[key] if key in h5.attrs else None
                                               for key in ("voxel_size_mm", "b0_dir"))
            names = recorded[field[1]]
            made_from = names[field[2]] if names is not None and field[2] < len(names) else None
        else:
            stem = step2_name(field)
            made_from = stem[: -len("_field")] if stem.endswith("_field") else None
        if made_from is not None and made_from != step2_name(item):
            label = f"{field[1]}[{field[2]}]" if field[0] == "h5" else field[1]
            source = f"{item[1]}[{item[2]}]" if item[0] == "h5" else item[1]
            raise InputError(f"--source-fields {label}: step 2 computed it from {made_from!r}, but it pairs with "
                             f"--source {source} ({step2_name(item)!r}); give the fields made from these maps")
    return geometry


class SourceInputs:
    """The synthetic maps with their field maps and masks, validated up front, read lazily."""

    def __init__(self, sources, fields=None, masks=None, field_units="ppm", b0_tesla=None, te_s=None,
                 voxel_size_mm=None, b0_dir=None):
        if not sources:
            raise InputError("--source: at least one synthetic-map input is needed")
        self.items = [item for entry in sources for item in _expand_maps(str(entry), "--source")]
        if fields:
            self.fields = [item for entry in fields for item in _expand_maps(str(entry), "--source-fields")]
        else:
            self.fields = []
            has_field = {}
            for item in self.items:
                if item[0] == "h5" and item[1] not in has_field:
                    has_field[item[1]] = "field" in _h5_datasets(item[1])
                if item[0] != "h5" or not has_field[item[1]]:
                    raise InputError(f"--source {item[1]}: no field maps; give --source-fields (step 2 output "
                                     "or your own field files)")
                self.fields.append(item)
        if len(self.fields) != len(self.items):
            raise InputError(f"--source-fields: expected {len(self.items)} field maps (one per synthetic map), "
                             f"found {len(self.fields)}")
        self.field_geometry = check_pairs(self.items, self.fields) if fields else {}
        masks = list(masks or [])
        n_files = sum(1 for item in self.items if item[0] == "file")
        if masks and len(masks) not in (1, n_files):
            raise InputError(f"--source-masks: expected 1 or {n_files} masks, got {len(masks)}")
        self.masks = masks
        self.units, self.b0_tesla, self.te_s = field_units, b0_tesla, te_s
        self.voxel_size_mm, self.b0_dir = voxel_size_mm, b0_dir
        self.files = sorted({os.path.basename(str(e).rstrip("/")) for e in sources})

    def __len__(self) -> int:
        return len(self.items)

    def _mask_for(self, k: int, chi_path: str):
        if self.masks:
            n = sum(1 for item in self.items[:k] if item[0] == "file")
            return self.masks[0] if len(self.masks) == 1 else self.masks[n]
        candidate = mask_path_for(chi_path)  # a step-1 NIfTI folder's pair (formats/chi_folder.py)
        if candidate is not None and os.path.exists(candidate):
            return candidate
        raise InputError(f"--source {chi_path}: no mask; give --source-masks (one for all or one per map)")

    def load(self, k: int) -> PatchVolume:
        item, field_item = self.items[k], self.fields[k]
        if item[0] == "h5":
            chi, mask_data, vs, b0 = read_chi_map(item[1], item[2])
            if mask_data is None:
                raise InputError(f"{item[1]}: no /mask dataset next to /chi")
            if not np.all(np.isfinite(chi)):  # labels too: a NaN chi would train on NaN
                raise InputError(f"{item[1]}: expected finite values, found NaN/Inf in /chi[{item[2]}]")
            label = f"{item[1]}[{item[2]}]"
        else:
            vol = read_volume(item[1])
            chi, vs, b0, label = vol.data, vol.voxel_size_mm, vol.b0_dir, item[1]
            mask_path = self._mask_for(k, item[1])
            mask_data = read_volume(mask_path, dtype=None).data
            if mask_data.shape != chi.shape:
                raise shape_mismatch(f"mask {mask_path}", mask_data.shape, f"source {item[1]}", chi.shape)
        mask = check_mask(mask_data, label, chi, f"source {label}")
        field = self._load_field(field_item)
        if field.shape != chi.shape:
            raise shape_mismatch(f"field {self._label(field_item)}", field.shape, f"source {label}", chi.shape)
        made_for = self.field_geometry.get(field_item[1]) if field_item[0] == "h5" else None
        for what, recorded, own in zip(("voxel size", "B0 direction"), made_for or (None, None), (vs, b0)):
            if recorded is not None and own is not None and not np.allclose(recorded, own, atol=1e-3):
                raise InputError(f"--source-fields {self._label(field_item)}: computed with {what} "
                                 f"{tuple(np.round(recorded, 4).tolist())}, but --source {label} has "
                                 f"{tuple(np.round(own, 4).tolist())}")
        vs = self.voxel_size_mm or (tuple(map(float, vs)) if vs is not None else None)
        b0 = self.b0_dir or (tuple(map(float, b0)) if b0 is not None else None)
        return PatchVolume(label, field, mask, chi, vs, b0)

    @staticmethod
    def _label(item) -> str:
        return f"{item[1]}[{item[2]}]" if item[0] == "h5" else item[1]

    def _load_field(self, item) -> np.ndarray:
        if item[0] == "h5":
            data = read_field_map(item[1], item[2], self.b0_tesla, self.te_s)
        else:
            data = read_field(item[1], self.units, self.b0_tesla, self.te_s).data
        if not np.all(np.isfinite(data)):
            raise InputError(f"field {self._label(item)}: expected finite values, found NaN/Inf")
        return data


# --- target side -------------------------------------------------------------------------------


class TargetInputs:
    """Target datasets: case folders and/or explicit field + mask (+ weight) files, read lazily."""

    def __init__(self, cases=None, fields=None, masks=None, weights=None, field_units="ppm", b0_tesla=None,
                 te_s=None, weight_echo: int = 2):
        self.entries = []
        for case in cases or []:
            self.entries.append(("case", case_folder.check_case(case, "--target")))
            check_case(case)  # daqsm-check's checks before any patch is cut
        fields, masks, weights = list(fields or []), list(masks or []), list(weights or [])
        if len(masks) != len(fields):
            raise InputError(f"--target-mask: target field without a mask: {len(fields)} --target-field "
                             f"file(s) but {len(masks)} --target-mask file(s)")
        if weights and len(weights) != len(fields):
            raise InputError(f"--target-weight: expected {len(fields)} weight files (one per target field), "
                             f"got {len(weights)}")
        for i, (f, m) in enumerate(zip(fields, masks)):
            check_files(f, m, weights[i] if weights else None, field_units, b0_tesla, te_s)
            self.entries.append(("files", f, m, weights[i] if weights else None))
        self.units, self.b0_tesla, self.te_s, self.weight_echo = field_units, b0_tesla, te_s, weight_echo
        self.files = [os.path.basename(str(e[1]).rstrip("/")) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, k: int) -> PatchVolume:
        entry = self.entries[k]
        if entry[0] == "case":
            case = case_folder.read_case(entry[1], "--target")
            weight = case.weight(self.weight_echo)
            return PatchVolume(case.folder, case.field.data, case.mask, weight, case.voxel_size_mm, case.b0_dir,
                               case.info.get("b0_tesla"), case.weight_te_s(self.weight_echo))
        _, field_path, mask_path, weight_path = entry
        vol = read_field(field_path, self.units, self.b0_tesla, self.te_s)
        mask = check_mask(read_volume(mask_path, dtype=None), str(mask_path), vol, f"target field {field_path}")
        if weight_path:
            weight = case_folder.weight_from_magnitude(read_volume(weight_path, ndim=(3, 4)).data, mask,
                                                       self.weight_echo, str(weight_path))
        else:
            weight = mask.astype(np.float32)
        return PatchVolume(str(field_path), vol.data, mask, weight, vol.voxel_size_mm, vol.b0_dir,
                           self.b0_tesla, self.te_s)


class ArrayInputs:
    """Volumes already in memory (the Python API, daqsm.make_patches), with the Source/TargetInputs interface."""

    def __init__(self, volumes: list[PatchVolume]):
        self.volumes = list(volumes)
        self.files = [v.label for v in self.volumes]

    def __len__(self) -> int:
        return len(self.volumes)

    def load(self, k: int) -> PatchVolume:
        return self.volumes[k]
