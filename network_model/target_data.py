"""One measured (target-domain) dataset for fine-tuning: field (ppm), mask, NDI weight and phase scale.

Two ways in:
    a case folder (data contract 1): local_field.nii.gz (ppm), mask.nii.gz, optional
        magnitude.nii.gz (4-D, echoes last) and case.json (b0_tesla, te_s list, voxel_size_mm, b0_dir);
    separate files: a field in ppm, Hz or radians (NIfTI, MATLAB .mat v5/v7.3, HDF5, .npy; units
        converted by training_data.units), a mask and an optional weight (e.g. a magnitude image).

Weight W (contract 1): the 2nd echo's magnitude normalised to max 1 inside the mask, or the mask.
Phase scale for NDI (radians per ppm): 2 pi gamma_bar B0 TE of the weighting echo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from training_data.case_json import read_case_json
from training_data.errors import InputError, shape_mismatch
from training_data.geometry import Geometry
from training_data.units import rad_per_ppm
from training_data.volume_io import read_field, read_mask, read_volume


@dataclass
class TargetVolume:
    """A dataset ready for fine-tuning.

    Attributes:
        field_ppm: float32 (x, y, z) local field in ppm, 0 outside the mask.
        mask: float32 (x, y, z) 0/1.
        weight: float32 (x, y, z) in [0, 1], 0 outside the mask.
        geometry: shape, voxel size (mm), B0 direction (voxel axes).
        phase_rad_per_ppm: radians per ppm for the NDI loss, None when B0/TE are unknown.
        affine, header: of the field file (kept for the output NIfTI).
    """

    field_ppm: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    geometry: Geometry
    phase_rad_per_ppm: float | None
    affine: np.ndarray
    header: object = None


def normalised_weight(magnitude, mask) -> np.ndarray:
    """Magnitude scaled to max 1 inside the mask, 0 outside (float32)."""
    mag = np.abs(np.asarray(magnitude, np.float32)) * mask
    peak = float(mag.max())
    if peak <= 0:
        raise InputError("weight: the magnitude is zero everywhere inside the mask")
    return (mag / peak).astype(np.float32)


def load_case(folder, voxel_size_mm=None, b0_dir=None) -> TargetVolume:
    """Read a contract-1 case folder (weighting echo: the 2nd, or the only one)."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"case {folder}: folder not found")
    info = read_case_json(folder)
    field = read_volume(os.path.join(folder, "local_field.nii.gz"))
    mask = read_mask(os.path.join(folder, "mask.nii.gz"), field.data, "local_field").astype(np.float32)
    te_list = info.get("te_s") or []
    te_list = [te_list] if isinstance(te_list, (int, float)) else list(te_list)
    echo = 1 if len(te_list) >= 2 else 0
    mag_path = os.path.join(folder, "magnitude.nii.gz")
    if os.path.isfile(mag_path):
        mag = read_volume(mag_path, ndim=(3, 4)).data
        if mag.shape[:3] != field.data.shape:
            raise shape_mismatch(f"magnitude {mag_path}", mag.shape[:3], "local_field", field.data.shape)
        if mag.ndim == 4:
            echo = min(echo, mag.shape[3] - 1)
            mag = mag[..., echo]
        weight = normalised_weight(mag, mask)
    else:
        weight = mask.copy()
    b0 = info.get("b0_tesla")
    phase = rad_per_ppm(float(b0), float(te_list[echo])) if b0 and te_list else None
    geometry = Geometry(field.data.shape, voxel_size_mm or info.get("voxel_size_mm") or field.voxel_size_mm
                        or (1.0, 1.0, 1.0), b0_dir or info.get("b0_dir") or field.b0_dir or (0.0, 0.0, 1.0))
    return TargetVolume(field.data * mask, mask, weight, geometry, phase, field.affine, field.header)


def load_files(field_path, mask_path, weight_path=None, units: str = "ppm", b0_tesla=None, te_s=None,
               voxel_size_mm=None, b0_dir=None) -> TargetVolume:
    """Read a field (any supported format and unit), a mask and an optional weight/magnitude."""
    field = read_field(field_path, units, b0_tesla, te_s)
    mask = read_mask(mask_path, field.data, f"field {field_path}").astype(np.float32)
    if weight_path:
        weight_vol = read_volume(weight_path)
        if weight_vol.data.shape != field.data.shape:
            raise shape_mismatch(f"weight {weight_path}", weight_vol.data.shape, f"field {field_path}",
                                 field.data.shape)
        weight = normalised_weight(weight_vol.data, mask)
    else:
        weight = mask.copy()
    phase = rad_per_ppm(b0_tesla, te_s) if b0_tesla and te_s else None
    geometry = field.geometry(voxel_size_mm, b0_dir)
    affine = field.affine
    if field.voxel_size_mm is None:  # .mat/.npy carry no geometry: the output affine uses the voxel size
        affine = np.diag(list(geometry.voxel_size_mm) + [1.0])
    return TargetVolume(field.data * mask, mask, weight, geometry, phase, affine, field.header)
