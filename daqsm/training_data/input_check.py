"""`daqsm-check`: validate a case folder or field / mask / magnitude files before a long run.

    daqsm-check CASE_DIR
    daqsm-check --field F --mask M [--magnitude MAG] [--units ppm|ppb|hz|rad --b0 TESLA --te S [S ...]]
    daqsm-check --config FILE        (keys: the long option names, e.g. case, field, b0_tesla)

Reads the volumes once and runs only cheap numpy checks (no TensorFlow): the files exist and parse,
3-D field and mask on one grid, finite values, a binary non-empty mask, a field that is not zero in
the mask, a usable affine (voxel size 0.05-20 mm, B0 direction from it; obliquity reported), case.json
values that parse and agree with the header, a field magnitude plausible for its stated unit (a local
field rarely exceeds a few tenths of a ppm: a field in Hz labelled ppm is ~100-300x too large), and a
magnitude whose echoes match the echo times (count, TEs positive and increasing; a rise of the
signal with TE is noted). Prints a short report and exits 0; exits 2 with the first problem (one line) otherwise.

Steps 3 and 5 and inference call `check_case` / `check_files` on their target inputs before any
heavy work (step 4 reads only step 3's patch file, which step 3 wrote from checked inputs).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config
from daqsm.errors import InputError, run_cli, shape_mismatch
from daqsm.training_data.geometry import b0_dir_from_affine, normalise_b0_dir, voxel_size_from_affine
from daqsm.training_data.units import FIELD_UNITS, to_ppm
from daqsm.training_data.volume_io import check_mask, read_volume
from daqsm.validate import RANGES, quantity

PROG = "daqsm-check"

#: 99th percentile of |local field| inside the mask above which a field in ppm is implausible:
#: brain local fields are ~0.01-0.3 ppm (a field in Hz at 1.5-7 T labelled ppm reads 64-300x more)
MAX_P99_PPM = 1.0
#: ... and below which it is implausibly small (1 ppb; a ppm field labelled Hz reads 64-300x too small)
MIN_P99_PPM = 1e-3
VOXEL_MM_RANGE = RANGES["voxel_size_mm"][:2]  # the one table (daqsm/validate.py)
CASE_FILES = ("local_field.nii.gz", "mask.nii.gz")


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


def _read_case_json(path: str) -> dict:
    from daqsm.training_data.formats.case_folder import read_info  # the one reader: types, unknown keys

    info = read_info(os.path.dirname(path))
    b0 = info.get("b0_tesla")
    if b0 is not None:
        quantity(f"{path}: b0_tesla", "b0_tesla", b0)  # the one table (daqsm/validate.py)
    return info


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
    """A 3-D or 4-D (echoes last) magnitude on the field's grid, matching the echo times; returns echoes."""
    mag = _read(path, ndim=(3, 4)).data
    if mag.shape[:3] != tuple(shape):
        raise shape_mismatch(f"magnitude {path}", mag.shape[:3], "field", shape)
    if np.any(mag < 0):
        raise InputError(f"magnitude {path}: expected non-negative values, found minimum {float(mag.min()):.4g}")
    echoes = mag.shape[3] if mag.ndim == 4 else 1
    if len(te_s or ()) > 1 and echoes != len(te_s):  # one TE: the phase scale's echo, any magnitude
        raise InputError(f"magnitude {path}: expected {len(te_s)} echoes (one per TE {te_s}), found {echoes}")
    stack = mag.reshape(mag.shape[:3] + (echoes,))
    means = [float(stack[..., e][mask].mean()) for e in range(echoes)]
    if means[0] <= 0:
        raise InputError(f"magnitude {path}: expected signal inside the mask, found zeros in echo 1")
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
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"case {folder}: expected a case folder, not found")
    for name in CASE_FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise InputError(f"case {folder}: expected {name}, not found")
    info = {}
    info_path = os.path.join(folder, "case.json")
    if os.path.isfile(info_path):
        info = _read_case_json(info_path)
    te = _te_list(info.get("te_s"), f"{info_path} te_s")
    field_path = os.path.join(folder, "local_field.nii.gz")
    vs = voxel_size_mm or info.get("voxel_size_mm")
    if vs is not None and voxel_size_mm is None:
        field_vol = _read(field_path)
        if not np.allclose(vs, voxel_size_from_affine(field_vol.affine), rtol=0.01):
            raise InputError(f"{info_path}: voxel_size_mm {tuple(vs)} disagrees with the header of {field_path} "
                             f"{tuple(round(v, 4) for v in voxel_size_from_affine(field_vol.affine))}")
    mag_path = os.path.join(folder, "magnitude.nii.gz")
    report = check_files(field_path, os.path.join(folder, "mask.nii.gz"),
                         mag_path if os.path.isfile(mag_path) else None, "ppm", info.get("b0_tesla"), te or None,
                         vs, b0_dir or info.get("b0_dir"))
    if report.echoes > 1 and len(te) == 1:
        # step 5 weights by echo 2 and takes the phase scale from its TE: one TE cannot say which it is
        raise InputError(f"{info_path}: te_s gives 1 echo time but magnitude.nii.gz has {report.echoes} echoes; "
                         "give one TE per echo")
    if info.get("b0_tesla"):
        report.lines.append(f"case.json: B0 {info['b0_tesla']:g} T" + (f", TE {te} s" if te else ""))
    return report


@dataclass(frozen=True)
class CheckConfig:
    """What to check (config-file keys = field names; options daqsm.config). Nothing is written."""

    case: str | None = param(None, "case folder (local_field.nii.gz, mask.nii.gz, [magnitude.nii.gz, case.json]); "
                             "also the positional CASE_DIR")
    field: str | None = param(None, "local field map (NIfTI, FILE.mat[:VAR], .h5, .npy)")
    mask: str | None = param(None, "brain mask (0/1) on the field's grid")
    magnitude: str | None = param(None, "magnitude, 3-D or 4-D with echoes last")
    units: str = param("ppm", "field unit: ppm, ppb, hz or rad (any case; checked by check_files)")
    b0_tesla: float | None = param(None, "B0 in tesla (needed for hz and rad)", aliases=("b0",))
    te_s: tuple | None = param(None, "echo time(s) in seconds, one per magnitude echo", type=float, aliases=("te",))
    voxel_size_mm: tuple | None = param(None, "voxel size override, mm", type=float, nargs=3,
                                        aliases=("voxel_size",))
    b0_dir: tuple | None = param(None, "B0 direction override, voxel axes", type=float, nargs=3)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[2])
    p.add_argument("positional_case", nargs="?", metavar="CASE_DIR", help="case folder (= --case)")
    add_config_options(p, CheckConfig, group_title=None, config_option=True)
    return p


def check(cfg: CheckConfig) -> CheckReport:
    """Run the checks a resolved CheckConfig asks for; raises InputError on the first problem."""
    if cfg.case and (cfg.field or cfg.mask):
        raise InputError("input: give a case folder or --field/--mask, not both")
    if cfg.case:
        return check_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
    if cfg.field and cfg.mask:
        te = cfg.te_s[0] if cfg.te_s and len(cfg.te_s) == 1 else cfg.te_s
        return check_files(cfg.field, cfg.mask, cfg.magnitude, cfg.units, cfg.b0_tesla, te,
                           cfg.voxel_size_mm, cfg.b0_dir)
    raise InputError("input: expected a case folder or --field and --mask, found neither")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_case:
            values = {**values, "case": args.positional_case}
        report = check(resolve_config(CheckConfig, args.config, values))
        print(report.text())
        print(f"{PROG}: ok")
        return 0

    return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
