"""One measured (target-domain) dataset for fine-tuning: field (ppm), mask, NDI weight and phase scale.

Two ways in:
    a case folder (data contract 1): local_field.nii.gz (ppm), mask.nii.gz, optional
        magnitude.nii.gz (4-D, echoes last) and case.json (b0_tesla, te_s list, voxel_size_mm, b0_dir);
    separate files: a field in ppm, Hz or radians (NIfTI, MATLAB .mat v5/v7.3, HDF5, .npy; units
        converted by daqsm.training_data.units), a mask and an optional weight (e.g. a magnitude image).

Weight W (contract 1): daqsm.training_data.formats.case_folder (the 2nd echo's magnitude, max 1 in the mask).
Phase scale for NDI (radians per ppm): 2 pi gamma_bar B0 TE of the weighting echo.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry
from daqsm.training_data.formats import case_folder
from daqsm.training_data.geometry import Geometry
from daqsm.training_data.units import rad_per_ppm
from daqsm.training_data.volume_io import read_field, read_mask, read_volume


@dataclass
class TargetVolume:
    """A dataset ready for fine-tuning.

    Attributes:
        field_ppm: float32 (x, y, z) local field in ppm, 0 outside the mask.
        mask: float32 (x, y, z) 0/1.
        weight: float32 (x, y, z) in [0, 1], 0 outside the mask.
        geometry: shape, voxel size (mm), B0 direction (voxel axes).
        phase_rad_per_ppm: radians per ppm for the NDI loss, None when B0/TE are unknown.
        affine, header: of the field file, or of a NIfTI mask/weight when the field has none (kept for
            the output NIfTI; daqsm.training_data.field_geometry).
        geometry_sources: where each geometry value came from (file, companion, option, default).
        geometry_note: one line when a default geometry was assumed, else None.
        case_dir: the case folder it was read from (None for separate files or arrays).
        weight_source: what W was made of, e.g. "echo 2 of 4 of FILE" or "the mask".
    """

    field_ppm: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    geometry: Geometry
    phase_rad_per_ppm: float | None
    affine: np.ndarray
    header: object = None
    geometry_sources: dict | None = None
    geometry_note: str | None = None
    case_dir: str | None = None
    weight_source: str = "the mask"


def phase_scale(target: TargetVolume, explicit: float | None = None) -> float:
    """The NDI phase scale s in rad/ppm: `explicit` when given, else the target's 2 pi gamma_bar B0 TE.

    The one rule of step 5 (the command, the API and daqsm-check call it): an unknown scale is one
    line saying where it comes from, case.json for a case folder, --b0/--te for separate files.
    """
    phase = explicit or target.phase_rad_per_ppm
    if phase is not None and phase > 0 and math.isfinite(phase):
        return float(phase)
    if target.case_dir:
        info = os.path.join(target.case_dir, case_folder.INFO_NAME)
        raise InputError(f"{info}: phase scale unknown: expected b0_tesla and te_s (the weighting echo's TE), "
                         "found them incomplete; or give --phase_rad_per_ppm")
    raise InputError("phase scale unknown: give --b0 TESLA and --te SECONDS (or --phase_rad_per_ppm)")


def load_case(folder, voxel_size_mm=None, b0_dir=None, check: bool = False) -> TargetVolume:
    """Read a contract-1 case folder (weighting echo: daqsm.training_data.formats.case_folder decides).

    check: run daqsm-check's checks (daqsm.training_data.input_check) on the arrays just read.
    """
    case = case_folder.read_case(folder)
    if check:
        from daqsm.training_data.input_check import check_case_arrays

        check_case_arrays(case, voxel_size_mm, b0_dir)  # the one set of case checks (daqsm-check's)
    mask = case.mask.astype(np.float32)
    b0, te = case.b0_tesla, case.weight_te_s()
    phase = rad_per_ppm(b0, te) if b0 and te else None
    geometry = Geometry(case.field.data.shape, voxel_size_mm or case.voxel_size_mm or (1.0, 1.0, 1.0),
                        b0_dir or case.b0_dir or (0.0, 0.0, 1.0))
    weight_source = "the mask"
    if case.magnitude is not None:
        echoes = case.magnitude.shape[3] if case.magnitude.ndim == 4 else 1
        weight_source = (f"echo {case.weight_echo_index() + 1} of {echoes} of "
                         f"{os.path.join(case.folder, case_folder.MAGNITUDE_NAME)}")
    return TargetVolume(case.field.data * mask, mask, case.weight(), geometry, phase, case.field.affine,
                        case.field.header, case_dir=case.folder, weight_source=weight_source)


def load_files(field_path, mask_path, weight_path=None, units: str = "ppm", b0_tesla=None, te_s=None,
               voxel_size_mm=None, b0_dir=None, check: bool = False) -> TargetVolume:
    """Read a field (any supported format and unit), a mask and an optional weight/magnitude.

    check: run daqsm-check's checks (daqsm.training_data.input_check) on the arrays just read.
    """
    from daqsm.training_data.input_check import check_field_values, check_geometry

    if check and str(units).lower() not in ("ppm", "ppb", "hz", "rad"):
        raise InputError(f"units: expected one of ppm, ppb, hz, rad, found {units!r}")
    field = read_field(field_path, units, b0_tesla, te_s)
    mask = read_mask(mask_path, field, f"field {field_path}").astype(np.float32)
    if check:
        check_geometry(field, f"field {field_path}", voxel_size_mm, b0_dir)
        check_field_values(field.data, mask > 0, f"field {field_path}", str(units))
    if weight_path:
        weight_vol = read_volume(weight_path)
        if weight_vol.data.shape != field.data.shape:
            raise shape_mismatch(f"weight {weight_path}", weight_vol.data.shape, f"field {field_path}",
                                 field.data.shape)
        if check and np.any(weight_vol.data < 0):
            raise InputError(f"magnitude {weight_path}: expected non-negative values, found minimum "
                             f"{float(weight_vol.data.min()):.4g}")
        weight = case_folder.weight_from_magnitude(weight_vol.data, mask > 0, name=f"weight {weight_path}")
    else:
        weight = mask.copy()
    phase = rad_per_ppm(b0_tesla, te_s) if b0_tesla and te_s else None
    # .mat/.npy carry no geometry: a NIfTI mask or weight on the same grid lends its affine
    geom = resolve_field_geometry(field, [("mask", mask_path), ("magnitude", weight_path)], voxel_size_mm, b0_dir)
    return TargetVolume(field.data * mask, mask, weight, geom.geometry, phase, geom.affine, geom.header,
                        geom.sources, assumption_line(geom, f"field {field_path}"),
                        weight_source=str(weight_path) if weight_path else "the mask")


def target_from_arrays(field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                       b0_tesla=None, te_s=None, phase_rad_per_ppm=None) -> TargetVolume:
    """A TargetVolume from arrays in memory, checked as daqsm-check checks files (no file is read).

    Args:
        field_ppm: float (x, y, z) local field, ppm. mask: (x, y, z) 0/1.
        weight: (x, y, z) magnitude or weight (normalised to max 1 in the mask), or None (the mask).
        voxel_size_mm, b0_dir: geometry. b0_tesla, te_s: give the NDI phase scale 2 pi gamma_bar B0 TE,
            unless phase_rad_per_ppm is given.
    """
    from daqsm.training_data.input_check import check_field_values
    from daqsm.training_data.volume_io import check_mask

    field = np.asarray(field_ppm, np.float32)
    if field.ndim != 3:
        raise InputError(f"field_ppm: expected a 3-D volume, found shape {field.shape}")
    if not np.all(np.isfinite(field)):
        raise InputError("field_ppm: expected finite values, found NaN/Inf")
    mask_b = check_mask(mask, "mask", field, "field_ppm")
    check_field_values(field, mask_b, "field_ppm", "ppm")
    mask_f = mask_b.astype(np.float32)
    w = mask_f.copy() if weight is None else case_folder.weight_from_magnitude(weight, mask_b, name="weight")
    phase = phase_rad_per_ppm or (rad_per_ppm(b0_tesla, te_s) if b0_tesla and te_s else None)
    geometry = Geometry(field.shape, tuple(map(float, voxel_size_mm)), tuple(map(float, b0_dir)))
    return TargetVolume(field * mask_f, mask_f, w, geometry, phase, np.diag(list(geometry.voxel_size_mm) + [1.0]))
