"""`daqsm-baseline` (`python -m daqsm.evaluation.baseline_cli`): the command around the classic inversions.

Usage: `daqsm-baseline tkd|l2|ndi-tv|tv (--case DIR | --field F --mask M [--weight W]) [--alpha A|auto]
[--voxel-size X Y Z] [--b0-dir X Y Z] [--pad none|fast|auto|N] [method options] -o OUT.nii.gz`. `--case`
reads the field, mask, weighting magnitude, B0, that echo's TE and the geometry from a case folder, as
fine-tuning does; ndi-tv and tv never assume B0 or TE. The solvers are in
baselines.py, the alpha scan of `--alpha auto` in nltv_alpha.py; this module imports both and neither
imports it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, param, require, resolve_config
from daqsm.errors import InputError, run_cli
from daqsm.evaluation.baselines import L2_LAMBDA, METHODS, TKD_THRESHOLD, NDITVParams, l2_gradient, ndi_tv, tkd
from daqsm.qc.tv_alpha import RESIDUAL_FACTOR

_ND = NDITVParams()
TV_METHODS = ("ndi-tv", "tv")


@dataclass(frozen=True)
class BaselineConfig:
    """Options of `daqsm-baseline` (config-file keys = field names)."""

    method: str = param("", "tkd, l2, ndi-tv (nonlinear TV) or tv (linear TV-ADMM) (also the first positional "
                        "argument)", choices=METHODS)
    case: str = param("", "case folder (contract 1): field, mask, magnitude weight, B0, TE, voxel size and B0 "
                      "direction from the case (instead of --field/--mask)")
    field: str = param("", "local field map, ppm (NIfTI/.mat/.h5/.npy)")
    mask: str = param("", "brain mask, 0/1")
    weight: str = param("", "ndi-tv data weight (e.g. 2nd echo magnitude); default the mask")
    output: str = param("", "output chi map, ppm (.nii.gz keeps the field's affine)", flags=("-o",))
    voxel_size_mm: tuple | None = param(None, "voxel size in mm; default from the file", type=float, nargs=3,
                                        aliases=("voxel_size",))
    b0_dir: tuple | None = param(None, "B0 in voxel axes; default from the affine, else 0 0 1", type=float, nargs=3)
    pad: str = param("auto", "FFT zero padding: auto (a quarter of each axis per side), fast, none (circular) or "
                     "voxels per side")
    threshold: float = param(TKD_THRESHOLD, "tkd: |D| threshold", check="positive")
    lambda_grad: float = param(L2_LAMBDA, "l2: gradient weight", aliases=("lambda",), check="non_negative")
    alpha: str = param(str(_ND.alpha), "ndi-tv / tv: TV weight, or 'auto': scan --alpha-grid and take the "
                       "discrepancy principle's alpha (daqsm.evaluation.nltv_alpha; needs no ground truth)")
    alpha_grid: tuple | None = param(None, "ndi-tv --alpha auto: the scanned values (default nltv_alpha.ALPHA_GRID)",
                                     type=float, check="positive")
    residual_factor: float = param(RESIDUAL_FACTOR, "ndi-tv / tv --alpha auto: kappa of the residual target max(kappa x noise "
                                   "residual, 1.3 x residual floor)", check="positive")
    mu_grad: float | None = param(None, "ndi-tv: gradient consistency (default 10*alpha)", aliases=("mu",), check="non_negative")
    mu_data: float = param(_ND.mu_data, "ndi-tv: data split weight", check="positive")
    iterations: int = param(_ND.iterations, "ndi-tv: max iterations", check="int>=1")
    tol: float = param(_ND.tol, "ndi-tv: relative update tolerance", check="non_negative")
    b0_tesla: float | None = param(None, "ndi-tv / tv: B0 in tesla (default: the case's; never assumed)",
                                   aliases=("b0",))
    te_s: float | None = param(None, "ndi-tv / tv: echo time of the weighting echo in seconds (default: the "
                               "case's; never assumed)", aliases=("te",))
    overwrite: bool = param(False, "replace an existing output")
    progress: bool = param(True, "ndi-tv / tv: progress bar of the solve or the alpha scan (--quiet: none)",
                           negation="quiet")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m daqsm.evaluation.baseline_cli",
                                     description="Classic QSM dipole inversions (field in ppm -> chi in ppm).")
    parser.add_argument("positional_method", nargs="?", metavar="METHOD", help="tkd, l2, ndi-tv or tv (= --method)")
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of the parameters below")
    add_config_options(parser, BaselineConfig, group_title=None)
    return parser


def main(argv=None) -> int:
    from daqsm.provenance import command

    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_method:
            values = {**values, "method": args.positional_method}
        return _run(resolve_config(BaselineConfig, args.config, values))

    with command("daqsm-baseline", argv):
        return run_cli(body, "python -m daqsm.evaluation.baseline_cli")


def _alpha(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--alpha: expected a positive number or 'auto', got {text!r}") from None


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


def _run(args) -> int:
    from daqsm.errors import choices_message

    if args.method not in METHODS:
        raise choices_message("method", args.method, METHODS)
    if args.case and (args.field or args.mask or args.weight):
        raise InputError("give either --case or --field/--mask/--weight, not both")
    if not args.case:
        require(args, ("field", "mask"), alternative="--case DIR")
    require(args, ("output",))
    from daqsm.output_lock import check_qsm_set, claim_qsm_set
    inputs = [args.case] if args.case else [args.field, args.mask, args.weight]
    check_qsm_set("-o", args.output, args.overwrite, inputs)  # the whole set (daqsm.outputs.qsm_set)

    if args.alpha.strip().lower() != "auto":
        from daqsm.validate import positive

        positive("--alpha", _alpha(args.alpha))
    if args.alpha_grid and args.alpha.strip().lower() != "auto":
        raise InputError("--alpha-grid: only with --alpha auto")
    if args.weight and args.method not in TV_METHODS:
        raise InputError(f"--weight: only ndi-tv and tv use a data weight, not {args.method}")
    with claim_qsm_set("-o", args.output, args.overwrite, inputs) as qset:
        return _invert_and_write(args, qset)


def _invert_and_write(args, qset) -> int:
    """The inversion and its outputs, inside the lock of the output's set; the map is written last."""
    from daqsm.training_data.volume_io import check_mask, read_volume, write_volume

    tv_method = args.method in TV_METHODS
    b0_tesla, te_s, weight = args.b0_tesla, args.te_s, None
    if args.case:  # like-for-like with fine-tuning: everything from the case (contract 1)
        from daqsm.training_data.formats.case_folder import read_case

        case = read_case(args.case, "--case", magnitude=tv_method)
        field, mask = case.field, case.mask
        geom = field.geometry(args.voxel_size_mm or case.voxel_size_mm, args.b0_dir or case.b0_dir)
        b0_tesla, te_s = b0_tesla or case.b0_tesla, te_s or case.weight_te_s()
        weight = case.weight() if tv_method else None
        where = f"case {args.case}"
        affine, header = field.affine, field.header
        geometry_sources = {"voxel_size_mm": "option --voxel-size" if args.voxel_size_mm else where,
                            "b0_dir": "option --b0-dir" if args.b0_dir else where, "affine": where}
    else:
        field = read_volume(args.field)
        mask = check_mask(read_volume(args.mask, dtype=None), args.mask, field, f"field {args.field}")
        from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry

        # .mat/.npy carry no geometry: a NIfTI mask (or weight) on the same grid lends its affine
        located = resolve_field_geometry(field, [("mask", args.mask), ("magnitude", args.weight)],
                                         args.voxel_size_mm, args.b0_dir)
        note = assumption_line(located, f"field {args.field}")
        if note:
            print(f"daqsm-baseline: warning: {note}", file=sys.stderr)
        geom = located.geometry
        affine, header, geometry_sources = located.affine, located.header, located.sources
        weight = read_volume(args.weight).data if args.weight else None
    if tv_method and not (b0_tesla and te_s):
        raise InputError(f"{args.method}: the phase scale needs B0 and TE: give --b0 TESLA --te SECONDS "
                         f"(or --case DIR with case.json), found b0 {b0_tesla}, te {te_s}")
    common = dict(voxel_size_mm=geom.voxel_size_mm, b0_dir=geom.b0_dir, pad=args.pad)
    alpha_record = {}
    if args.method == "tkd":
        chi = tkd(field.data, mask, threshold=args.threshold, **common)
    elif args.method == "l2":
        chi = l2_gradient(field.data, mask, lambda_grad=args.lambda_grad, **common)
    else:
        auto = args.alpha.strip().lower() == "auto"
        params = NDITVParams(alpha=NDITVParams.alpha if auto else _alpha(args.alpha), mu_grad=args.mu_grad,
                             mu_data=args.mu_data, iterations=args.iterations, tol=args.tol, b0_tesla=b0_tesla,
                             te_s=te_s, linear=args.method == "tv")
        if auto:
            from daqsm.evaluation import nltv_alpha

            scan = nltv_alpha.scan_alpha(field.data, mask, weight, params=params,
                                         alphas=args.alpha_grid or nltv_alpha.ALPHA_GRID, progress=args.progress,
                                         **common)
            choice = nltv_alpha.choose_alpha_discrepancy(scan, tau=args.residual_factor)
            for a, r, it in zip(scan.alphas, scan.residual, scan.iterations):
                print(f"{args.method}: alpha {a:.3g}: residual {r:.4g}, {it} iterations")
            print(f"{args.method}: alpha {choice.alpha:.3g} by the discrepancy principle ({choice.note}), "
                  f"{scan.seconds:.1f} s")
            chi = scan.maps[choice.index]
            # the config says only 'auto': the sidecar must name the alpha that made the map, and why
            alpha_record = {"AlphaChoice": {
                "alpha": float(choice.alpha), "rule": choice.rule, "reached": bool(choice.reached),
                "target": float(choice.target), "residual_factor": float(args.residual_factor),
                "note": choice.note, "alphas": [float(a) for a in scan.alphas],
                "residual": [float(r) for r in scan.residual], "tv": [float(t) for t in scan.tv],
                "iterations": [int(i) for i in scan.iterations],
                "noise_ppm": float(scan.noise_ppm), "noise_residual": float(scan.noise_residual),
                "seconds": round(float(scan.seconds), 1)}}
        else:
            from tqdm import tqdm

            with tqdm(total=params.iterations, desc=args.method, unit="it", disable=not args.progress,
                      file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
                chi, info = ndi_tv(field.data, mask, weight, params=params, return_info=True,
                                   on_iteration=lambda _it, change: (bar.update(1),
                                                                     bar.set_postfix(change=f"{change:.2g}")),
                                   **common)
            print(f"{args.method}: {info['iterations']} iterations, converged={info['converged']}, "
                  f"{info['seconds']:.1f} s")
    from daqsm.provenance import build_record, write_sidecar

    qset.start_writing()

    settings = {k: v for k, v in vars(args).items()}
    settings.update(b0_tesla=b0_tesla, te_s=te_s)
    sources = [args.case] if args.case else [args.field, args.mask, args.weight]
    write_sidecar(args.output, build_record(f"susceptibility map, {args.method} baseline", "ppm",
                                            sources=sources, b0_tesla=b0_tesla if tv_method else None,
                                            b0_dir=geom.b0_dir, voxel_size_mm=geom.voxel_size_mm, dipole_pad=args.pad,
                                            config=settings), {"GeometrySources": geometry_sources, **alpha_record})
    qset.commit(lambda path: write_volume(path, chi.astype(np.float32), affine=affine, header=header))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    cli()
