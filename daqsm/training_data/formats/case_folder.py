"""Case folder (data contract 1): one measured or simulated dataset, read and written here only.

Layout:
    local_field.nii.gz   local field in ppm (x, y, z)
    mask.nii.gz          brain mask 0/1
    magnitude.nii.gz     optional, 3-D or 4-D (echoes last)
    case.json            optional: b0_tesla, te_s (list, s), voxel_size_mm, b0_dir, ...
    chi.nii.gz, segmentation.nii.gz   optional truth and labels (simulated cases)

Weighting echo (docs/physics.md, NDI loss): W = the magnitude of the 2nd echo normalised to max 1
inside the mask, or of the only echo when there is one; the NDI phase scale uses the TE of that
same echo. `WEIGHT_ECHO` and `Case.weight_echo_index` are the one place that decides it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from daqsm.errors import InputError, did_you_mean, shape_mismatch
from daqsm.outputs import temp_path
from daqsm.training_data.volume_io import Volume, check_mask, read_volume

WEIGHT_ECHO = 2  # 1-based; the only echo when the magnitude has fewer
FIELD_NAME, MASK_NAME, MAGNITUDE_NAME, INFO_NAME = "local_field.nii.gz", "mask.nii.gz", "magnitude.nii.gz", "case.json"


def weight_from_magnitude(magnitude, mask, echo: int | None = None, name: str = "magnitude") -> np.ndarray:
    """Weight W in [0, 1] from a 3-D magnitude or echo `echo` (1-based) of a 4-D one.

    Args:
        magnitude: float (x, y, z) or (x, y, z, echoes).
        mask: bool (x, y, z).
        echo: 1-based echo; None = WEIGHT_ECHO, or the last echo when there are fewer.
        name: the input named in errors.

    Returns:
        float32 (x, y, z): |magnitude| / its maximum inside the mask, 0 outside.
    """
    mask = np.asarray(mask, dtype=bool)
    mag = np.abs(np.asarray(magnitude, dtype=np.float32))
    if mag.ndim == 4:
        if echo is None:
            echo = min(WEIGHT_ECHO, mag.shape[3])
        if not 1 <= echo <= mag.shape[3]:
            raise InputError(f"{name}: weight echo {echo} requested, the magnitude has {mag.shape[3]} echoes")
        mag = mag[..., echo - 1]
    if mag.shape != mask.shape:
        raise shape_mismatch(f"weight {name}", mag.shape, "mask", mask.shape)
    peak = float(mag[mask].max()) if mask.any() else 0.0
    if peak <= 0:
        raise InputError(f"{name}: the magnitude is zero everywhere inside the mask")
    return (np.clip(mag / np.float32(peak), 0.0, 1.0) * mask).astype(np.float32)


@dataclass
class Case:
    """A case folder in memory.

    Attributes:
        folder: where it was read from.
        field: Volume, local field in ppm (x, y, z), with affine/header/voxel size of the file.
        mask: bool (x, y, z).
        magnitude: float32 (x, y, z[, echoes]) or None.
        info: case.json as a dict ({} when absent).
    """

    folder: str
    field: Volume
    mask: np.ndarray
    magnitude: np.ndarray | None = None
    info: dict = dc_field(default_factory=dict)

    @property
    def te_list(self) -> list:
        te = self.info.get("te_s") or []
        return [te] if isinstance(te, (int, float)) else list(te)

    def weight_echo_index(self, echo: int | None = None) -> int:
        """0-based index of the weighting echo (module doc)."""
        n_echoes = self.magnitude.shape[3] if self.magnitude is not None and self.magnitude.ndim == 4 else \
            max(len(self.te_list), 1)
        return (min(WEIGHT_ECHO, n_echoes) if echo is None else echo) - 1

    def weight(self, echo: int | None = None) -> np.ndarray:
        """float32 (x, y, z) weight W: the weighting echo's magnitude (max 1 in the mask), else the mask."""
        if self.magnitude is None:
            return self.mask.astype(np.float32)
        return weight_from_magnitude(self.magnitude, self.mask, echo, os.path.join(self.folder, MAGNITUDE_NAME))

    def weight_te_s(self, echo: int | None = None) -> float | None:
        """TE (s) of the weighting echo, None when case.json gives no echo times."""
        k = self.weight_echo_index(echo)
        te = self.te_list
        return float(te[k]) if len(te) > k else None

    @property
    def b0_tesla(self) -> float | None:
        b0 = self.info.get("b0_tesla")
        return float(b0) if b0 else None

    @property
    def voxel_size_mm(self) -> tuple | None:
        vs = self.info.get("voxel_size_mm")
        return tuple(map(float, vs)) if vs else self.field.voxel_size_mm

    @property
    def b0_dir(self) -> tuple | None:
        b0 = self.info.get("b0_dir")
        return tuple(map(float, b0)) if b0 else self.field.b0_dir

    def read_extra(self, name: str, dtype=np.float32) -> np.ndarray:
        """An optional volume of the folder (e.g. 'chi', 'segmentation'), checked against the field's grid."""
        path = os.path.join(self.folder, f"{name}.nii.gz")
        if not os.path.isfile(path):
            raise InputError(f"case {self.folder}: no {name}.nii.gz")
        data = read_volume(path, dtype=dtype).data
        if data.shape != self.field.data.shape:
            raise shape_mismatch(path, data.shape, FIELD_NAME, self.field.data.shape)
        return data


# the geometry/acquisition keys the pipeline uses, and the provenance keys simulate.py writes
INFO_KEYS = ("b0_tesla", "te_s", "voxel_size_mm", "b0_dir", "peak_snr", "noise_sigma", "seed", "source", "variant",
        "resolution_mm")


def read_info(folder) -> dict:
    """The checked contents of FOLDER/case.json ({} when the file is absent).

    An unknown key is refused with a "did you mean" (a misspelt `b0_tesla` would otherwise become
    "no phase scale" much later); one `te_s` number is read as a one-echo list; invalid JSON or a
    wrong type is one line naming the file.
    """
    path = os.path.join(str(folder), INFO_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: expected a JSON object, cannot parse ({str(err).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object of keys, found a {type(meta).__name__}")
    for key in meta:
        if key not in INFO_KEYS:
            raise InputError(f"{path}: unknown key {key!r}{did_you_mean(key, INFO_KEYS)}; known: {', '.join(INFO_KEYS)}")
    if meta.get("b0_tesla") is not None:
        meta["b0_tesla"] = _positive(path, "b0_tesla", meta["b0_tesla"])
    if meta.get("te_s") is not None:
        te = meta["te_s"]
        te = [te] if isinstance(te, (int, float)) and not isinstance(te, bool) else te
        if not isinstance(te, list) or not te:
            raise InputError(f"{path}: te_s: expected a list of echo times in seconds, found {meta['te_s']!r}")
        meta["te_s"] = [_positive(path, "te_s", t) for t in te]
    for key in ("voxel_size_mm", "b0_dir"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != 3:
            raise InputError(f"{path}: {key}: expected 3 numbers, found {value!r}")
        meta[key] = [_positive(path, key, v) if key == "voxel_size_mm" else _number(path, key, v) for v in value]
    return meta


def _number(path, key, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{path}: {key}: expected a finite number, found {value!r}")
    return float(value)


def _positive(path, key, value) -> float:
    if _number(path, key, value) <= 0:
        raise InputError(f"{path}: {key}: expected a positive number, found {value!r}")
    return float(value)


def check_case(folder, what: str = "case") -> str:
    """Refuse a path that is not a case folder with its field and mask."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{what} {folder}: expected a case folder ({FIELD_NAME}, {MASK_NAME}, ...), not found")
    for name in (FIELD_NAME, MASK_NAME):
        if not os.path.exists(os.path.join(folder, name)):
            problem = "target field without a mask" if name == MASK_NAME else "no local field"
            raise InputError(f"{what} {folder}: {problem} (missing {name})")
    return folder


def read_case(folder, what: str = "case", magnitude: bool = True) -> Case:
    """Read a case folder (module doc); the field is in ppm by contract.

    Args:
        folder: the case folder.
        what: how errors name it (e.g. '--target').
        magnitude: read magnitude.nii.gz when present.
    """
    folder = check_case(folder, what)
    info = read_info(folder)
    field = read_volume(os.path.join(folder, FIELD_NAME))
    mask_path = os.path.join(folder, MASK_NAME)
    mask = check_mask(read_volume(mask_path, dtype=None), mask_path, field, "local_field")
    mag = None
    mag_path = os.path.join(folder, MAGNITUDE_NAME)
    if magnitude and os.path.isfile(mag_path):
        mag = read_volume(mag_path, ndim=(3, 4)).data
        if mag.shape[:3] != field.data.shape:
            raise shape_mismatch(f"magnitude {mag_path}", mag.shape[:3], "local_field", field.data.shape)
    return Case(folder, field, mask, mag, info)


def write_case(folder, arrays: dict, info: dict, affine, sidecar=None) -> str:
    """Write one case folder atomically (temp folder, then rename).

    Args:
        folder: the case folder to (re)place.
        arrays: file stem -> array, e.g. {'local_field': ppm (x, y, z), 'mask': ..., 'magnitude': (x, y, z, e)}.
        info: written as case.json (b0_tesla, te_s, voxel_size_mm, b0_dir, ...).
        affine: 4x4 of every volume.
        sidecar: optional callable(stem) -> provenance record, written beside each volume
            (daqsm/provenance.py).
    """
    from daqsm.training_data.volume_io import write_volume

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_path(folder, suffix="", folder=True))
    try:
        for name, data in arrays.items():
            write_volume(tmp / f"{name}.nii.gz", data, affine=affine)
            if sidecar is not None:
                from daqsm.provenance import write_sidecar

                write_sidecar(tmp / f"{name}.nii.gz", sidecar(name))
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return str(folder)
