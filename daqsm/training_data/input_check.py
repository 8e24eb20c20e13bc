"""The input checks of steps 3 and 5 and inference (and so of `daqsm-check`), cheap numpy only.

Reads the volumes once and runs only cheap numpy checks (no TensorFlow): the files exist and parse,
3-D field and mask on one grid, finite values, a binary non-empty mask, a field that is not zero in
the mask, a usable affine (voxel size 0.05-20 mm, B0 direction from it; obliquity reported), case.json
values that parse and agree with the header, a field magnitude plausible for its stated unit (a local
field rarely exceeds a few tenths of a ppm: a field in Hz labelled ppm is ~100-300x too large), and a
magnitude whose echoes match the echo times (count, TEs positive and increasing; a rise of the
signal with TE is noted). Each raises InputError (one line) at the first problem.

Steps 3 and 5 and inference call `check_case` / `check_case_arrays` / `check_files` on their target
inputs before any heavy work (step 4 reads only step 3's patch file, which step 3 wrote from checked
inputs). The `daqsm-check` command (daqsm/network_model/check_cli.py) runs the readers of the step
that follows, which call these.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.training_data.geometry import b0_dir_from_affine, normalise_b0_dir, voxel_size_from_affine
from daqsm.training_data.units import FIELD_UNITS, to_ppm
from daqsm.training_data.volume_io import check_mask, read_volume
from daqsm.validate import RANGES, quantity

#: 99th percentile of |local field| inside the mask above which a field in ppm is implausible:
#: brain local fields are ~0.01-0.3 ppm (a field in Hz at 1.5-7 T labelled ppm reads 64-300x more)
MAX_P99_PPM = 1.0
#: ... and below which it is implausibly small (1 ppb; a ppm field labelled Hz reads 64-300x too small)
MIN_P99_PPM = 1e-3
VOXEL_MM_RANGE = RANGES["voxel_size_mm"][:2]  # the one table (daqsm/validate.py)


@dataclass
class CheckReport:
    """What was checked, as short report lines (`lines`) and the values found."""

    shape: tuple = ()
    voxel_size_mm: tuple = ()
    b0_dir: tuple = ()
    units: str = "ppm"
    field_p99_ppm: float = 0.0
    echoes: int = 0
    lines: list = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)


def _te_list(te_s, where: str) -> list:
    if te_s is None:
        return []
    te = [te_s] if isinstance(te_s, (int, float)) else list(te_s)
    try:
        te = [float(t) for t in te]
    except (TypeError, ValueError):
        raise InputError(f"{where}: echo times expected numbers in seconds, found {te_s!r}") from None
    for t in te:
        quantity(where, "te_s", t)  # the one table (daqsm/validate.py)
    if any(b <= a for a, b in zip(te, te[1:])):
        raise InputError(f"{where}: echo times expected increasing, found {te}")
    return te


def _read(path, **kwargs):
    """read_volume whose errors always name the file (a header's affine can fail deep in the reader)."""
    try:
        return read_volume(path, **kwargs)
    except InputError as err:
        if str(path) in str(err):
            raise
        raise InputError(f"{path}: {err}") from None


def check_geometry(vol, name: str, voxel_size_mm=None, b0_dir=None, report: CheckReport | None = None):
    """Voxel size and B0 direction of a volume (overrides win); an unusable affine is an InputError."""
    affine = np.asarray(vol.affine, np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{name}: affine expected finite values, found NaN/Inf")
    header_vs = voxel_size_from_affine(affine)
    if min(header_vs) <= 0 or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: affine expected invertible, found voxel size {tuple(round(v, 4) for v in header_vs)}")
    b0_dir_from_affine(affine)  # a zero voxel axis: one line naming it
    # the geometry the steps read (Volume.geometry: overrides, else the file's record, e.g. an HDF5
    # field's voxel_size_mm / b0_dir attributes, else the affine), so "ok" means read the same way
    geometry = vol.geometry(voxel_size_mm, b0_dir) if hasattr(vol, "geometry") else None
    vs = tuple(float(v) for v in (geometry.voxel_size_mm if geometry else (voxel_size_mm or header_vs)))
    low, high = RANGES["voxel_size_mm"][:2]
    if not all(low <= v <= high for v in vs):
        raise InputError(f"{name}: voxel size expected {low:g}-{high:g} mm, found {vs}")
    raw_b0 = geometry.b0_dir if geometry else (b0_dir if b0_dir is not None else b0_dir_from_affine(affine))
    b0 = normalise_b0_dir(raw_b0)  # a zero B0 direction is refused here as in the steps
    angle = math.degrees(math.acos(min(1.0, abs(b0[2]) / max(np.linalg.norm(b0), 1e-12))))
    if report is not None:
        report.voxel_size_mm, report.b0_dir = vs, b0
        report.lines.append(f"voxel size {vs[0]:.3g} x {vs[1]:.3g} x {vs[2]:.3g} mm; B0 direction (voxel axes) "
                            f"({b0[0]:.3f}, {b0[1]:.3f}, {b0[2]:.3f}), {angle:.1f} deg from the 3rd axis")
    return vs, b0


def check_field_values(field_ppm, mask, name: str, units: str, report: CheckReport | None = None) -> float:
    """Non-zero and plausible magnitude inside the mask; returns the 99th percentile of |field| (ppm)."""
    inside = np.abs(np.asarray(field_ppm, np.float64)[mask])
    if not np.any(inside > 0):
        raise InputError(f"{name}: expected a non-zero field inside the mask, found all zeros")
    p99 = float(np.percentile(inside, 99))
    if p99 > MAX_P99_PPM:
        raise InputError(f"{name}: field magnitude implausible for units {units!r}: 99th percentile of |field| "
                         f"{p99:.3g} ppm, a local field is below ~{MAX_P99_PPM:g} ppm (Hz labelled ppm? "
                         "give --units hz --b0 TESLA; or not background-removed)")
    if p99 < MIN_P99_PPM:
        raise InputError(f"{name}: field magnitude implausible for units {units!r}: 99th percentile of |field| "
                         f"{p99:.3g} ppm, expected above {MIN_P99_PPM:g} ppm (ppm labelled Hz or rad?)")
    if report is not None:
        report.field_p99_ppm = p99
        report.lines.append(f"field: 99th percentile of |field| in the mask {p99:.3g} ppm (plausible for {units})")
    return p99


def check_magnitude(path: str, shape, mask, te_s, report: CheckReport | None = None) -> int:
    """A 3-D or 4-D (echoes last) magnitude file on the field's grid, matching the echo times; returns echoes."""
    return check_magnitude_array(_read(path, ndim=(3, 4)).data, f"magnitude {path}", shape, mask, te_s, report)


def check_magnitude_array(mag, name: str, shape, mask, te_s, report: CheckReport | None = None) -> int:
    """`check_magnitude` on a magnitude already read: float (x, y, z[, echoes]); returns the echo count."""
    if mag.shape[:3] != tuple(shape):
        raise shape_mismatch(name, mag.shape[:3], "field", shape)
    if np.any(mag < 0):
        raise InputError(f"{name}: expected non-negative values, found minimum {float(mag.min()):.4g}")
    echoes = mag.shape[3] if mag.ndim == 4 else 1
    if len(te_s or ()) > 1 and echoes != len(te_s):  # one TE: the phase scale's echo, any magnitude
        raise InputError(f"{name}: expected {len(te_s)} echoes (one per TE {te_s}), found {echoes}")
    stack = mag.reshape(mag.shape[:3] + (echoes,))
    means = [float(stack[..., e][mask].mean()) for e in range(echoes)]
    if means[0] <= 0:
        raise InputError(f"{name}: expected signal inside the mask, found zeros in echo 1")
    if report is not None:
        report.echoes = echoes
        report.lines.append(f"magnitude: {echoes} echo(es)" + (f", TE {te_s} s" if te_s else ""))
        # T2* decay: the signal falls with TE; a steady rise over 3+ echoes hints at a reversed order
        # (a note, not an error: weights and synthetic magnitudes need not decay)
        if echoes >= 3 and all(b > a for a, b in zip(means, means[1:])):
            report.lines.append(f"note: echo means rise with TE {[round(m, 4) for m in means]}; "
                                "measured echoes decay (reverse order?)")
    return echoes


def check_files(field_path, mask_path, magnitude_path=None, units: str = "ppm", b0_tesla=None, te_s=None,
                voxel_size_mm=None, b0_dir=None) -> CheckReport:
    """Check a field (in `units`), a mask and an optional magnitude; raises InputError on the first problem.

    Args:
        field_path, mask_path, magnitude_path: files in any daqsm.training_data.volume_io format.
        units: field unit, ppm | ppb | hz | rad (hz needs b0_tesla, rad also te_s).
        b0_tesla: tesla. te_s: echo time(s) in seconds (the first is used for rad).
        voxel_size_mm, b0_dir: overrides of the file's geometry.

    Returns:
        CheckReport.
    """
    report = CheckReport(units=str(units))
    if str(units).lower() not in FIELD_UNITS:
        raise InputError(f"units: expected one of {', '.join(FIELD_UNITS)}, found {units!r}")
    te = _te_list(te_s, "--te")
    field = _read(field_path)
    report.shape = field.data.shape
    mask = check_mask(_read(mask_path, dtype=None), str(mask_path), field, f"field {field_path}")
    report.lines.append(f"field {field_path}: shape {field.data.shape}; mask {int(mask.sum())} voxels "
                        f"({100 * mask.mean():.1f}%)")
    from types import SimpleNamespace

    from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry

    # a .mat/.npy field takes a NIfTI mask's / magnitude's geometry (daqsm/training_data/field_geometry.py)
    located = resolve_field_geometry(field, [("mask", mask_path), ("magnitude", magnitude_path)], voxel_size_mm,
                                     b0_dir)
    check_geometry(SimpleNamespace(affine=located.affine), f"field {field_path}", located.geometry.voxel_size_mm,
                   located.geometry.b0_dir, report)
    src = located.sources
    report.lines.append(f"geometry from: voxel size {src['voxel_size_mm']}; B0 direction {src['b0_dir']}; "
                        f"output affine {src['affine']}")
    note = assumption_line(located, f"field {field_path}")
    if note:
        report.lines.append(f"note: {note}")
    field_ppm = to_ppm(field.data, units, b0_tesla, te[0] if te else None)
    check_field_values(field_ppm, mask, f"field {field_path}", str(units), report)
    if magnitude_path:
        check_magnitude(str(magnitude_path), field.data.shape, mask, te, report)
    return report


def check_case(folder, voxel_size_mm=None, b0_dir=None) -> CheckReport:
    """Check a case folder (local_field.nii.gz in ppm, mask.nii.gz, optional magnitude.nii.gz, case.json)."""
    from daqsm.training_data.formats.case_folder import read_case

    return check_case_arrays(read_case(folder), voxel_size_mm, b0_dir)


def check_case_arrays(case, voxel_size_mm=None, b0_dir=None) -> CheckReport:
    """`check_case` on a case folder already read (daqsm.training_data.formats.case_folder.Case).

    The one set of case checks: daqsm-check, step 3's targets, step 5 and inference all run it, so a
    case one of them refuses, the others refuse with the same line.
    """
    from daqsm.training_data.formats.case_folder import FIELD_NAME, INFO_NAME, MAGNITUDE_NAME

    info_path = os.path.join(case.folder, INFO_NAME)
    field_path = os.path.join(case.folder, FIELD_NAME)
    b0 = case.info.get("b0_tesla")
    if b0 is not None:
        quantity(f"{info_path}: b0_tesla", "b0_tesla", b0)  # the one table (daqsm/validate.py)
    te = _te_list(case.info.get("te_s"), f"{info_path} te_s")
    vs = voxel_size_mm or case.info.get("voxel_size_mm")
    header_vs = voxel_size_from_affine(case.field.affine)
    if vs is not None and voxel_size_mm is None and not np.allclose(vs, header_vs, rtol=0.01):
        raise InputError(f"{info_path}: voxel_size_mm {tuple(vs)} disagrees with the header of {field_path} "
                         f"{tuple(round(v, 4) for v in header_vs)}")
    report = CheckReport(units="ppm", shape=case.field.data.shape)
    report.lines.append(f"field {field_path}: shape {case.field.data.shape}; mask {int(case.mask.sum())} voxels "
                        f"({100 * case.mask.mean():.1f}%)")
    check_geometry(case.field, f"field {field_path}", vs, b0_dir or case.info.get("b0_dir"), report)
    check_field_values(case.field.data, case.mask, f"field {field_path}", "ppm", report)
    if case.magnitude is not None:
        check_magnitude_array(case.magnitude, f"magnitude {os.path.join(case.folder, MAGNITUDE_NAME)}",
                              case.field.data.shape, case.mask, te or None, report)
    if report.echoes > 1 and len(te) == 1:
        # step 5 weights by echo 2 and takes the phase scale from its TE: one TE cannot say which it is
        raise InputError(f"{info_path}: te_s gives 1 echo time but {MAGNITUDE_NAME} has {report.echoes} echoes; "
                         "give one TE per echo")
    if b0:
        report.lines.append(f"case.json: B0 {b0:g} T" + (f", TE {te} s" if te else ""))
    return report
