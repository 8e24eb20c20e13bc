"""Classic dipole inversions for comparison: TKD, closed-form L2-gradient, nonlinear and linear TV (ADMM).

The TV solver lives in daqsm/training_data/tv_inversion.py (step 5's lambda rule uses it too); its
names are importable from here as before.

All three share the project's one kernel `daqsm.training_data.dipole.dipole_kernel` (rfft half-spectrum,
D(0) = 0) and use scipy.fft rfftn/irfftn in float32/complex64. Inputs: local field in ppm and a
brain mask; output: susceptibility in ppm, zero outside the mask. The mean of chi is undetermined
(D(0) = 0) and is returned as 0 over the FFT grid; compare maps after demeaning (RC2 metrics do).

Command: `python -m daqsm.evaluation.baselines tkd|l2|ndi-tv --field F --mask M [--weight W] [--alpha A|auto]
[--voxel-size X Y Z] [--b0-dir X Y Z] [--pad none|fast|auto|N] [method options] -o OUT.nii.gz`.

Padding: every inversion zero-pads its FFT grid by default (`pad="auto"`, a quarter of each axis per
side, `daqsm.training_data.dipole.fft_shape`), like the field simulation: a circular FFT wraps the field of
a source near one face onto the opposite face and the inversion writes a copy of it there.

References:
    TKD: Shmueli K, et al. Magn Reson Med 2009;62:1510-1522 (thresholded k-space division);
        threshold 0.19, inside the 0.15-0.2 range that open implementations default to (QSM.jl
        0.15, several deep-QSM codebases 0.2); a scan on the 2016 data is in
        benchmarks/results_baselines.md.
    L2: Bilgic B, et al. Fast image reconstruction with L2-regularization. J Magn Reson Imaging
        2014;40:181-191 (closed-form Tikhonov with a gradient regulariser).
    Nonlinear TV: Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear
        susceptibility inversion with variational regularization (FANSI). Magn Reson Med
        2018;80:814-821. Implemented here from the published splitting (see `ndi_tv`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config
from daqsm.errors import InputError, run_cli
from daqsm.training_data.dipole import dipole_kernel
from daqsm.training_data.tv_inversion import (  # noqa: F401  (the solver's names, importable from here as before)
    NDITVParams,
    _check_weight,
    _irfft,
    _prepare,
    _rfft,
    grad,
    grad_adjoint,
    gradient_eigenvalues,
    ndi_data_gradient,
    ndi_data_term,
    ndi_tv,
    solve_v,
)

METHODS = ("tkd", "l2", "ndi-tv", "tv")


TKD_THRESHOLD = 0.19
# Gradient weight (field in ppm, gradients per mm). Chosen on the 2016 challenge data (NRMSE vs chi_33
# over lambda in {0.003, 0.01, 0.03, 0.1, 0.3, 1, 3}: 140, 110, 92, 81.3, 79.8, 83, 88 %): 0.1 is within
# 2 % of the minimum (0.3) with less over-smoothing (detrended RC2 rmse 121 vs 131 %).
L2_LAMBDA = 0.1


# --- TKD and L2 ------------------------------------------------------------------------------


def tkd(field_ppm, mask, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
        threshold: float = TKD_THRESHOLD, pad="auto") -> np.ndarray:
    """Thresholded k-space division: 1/D where |D| > threshold, sign(D)/threshold elsewhere (0 where D = 0).

    Args:
        field_ppm: float32 (x, y, z) local field, ppm.
        mask: (x, y, z) 0/1 brain mask.
        threshold: truncation level of |D| (0.19 default; smaller -> less bias, more streaking).
        pad: FFT zero padding (`daqsm.training_data.dipole.fft_shape`); "auto" default, "none" circular.

    Returns:
        float32 (x, y, z) chi in ppm, 0 outside the mask.
    """
    if not 0 < threshold <= 2.0 / 3.0:
        raise InputError(f"threshold: expected a value in (0, 2/3], got {threshold}")
    field, mask, full = _prepare(field_ppm, mask, pad)
    kernel = dipole_kernel(full, voxel_size_mm, b0_dir)
    inverse = np.where(np.abs(kernel) > threshold, 1.0 / np.where(kernel == 0, 1, kernel),
                       np.sign(kernel) / threshold).astype(np.float32)
    return _irfft(_rfft(field, full) * inverse, full, field.shape) * mask


def l2_gradient(field_ppm, mask, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                lambda_grad: float = L2_LAMBDA, pad="auto") -> np.ndarray:
    """Closed-form L2-gradient (Tikhonov) inversion: argmin ||D chi - f||^2 + lambda ||G chi||^2.

    chi = IFFT( D F(f) / (D^2 + lambda sum_i |E_i|^2) ), E_i the forward-difference eigenvalues per mm.

    Args:
        field_ppm: float32 (x, y, z) local field, ppm.
        mask: (x, y, z) 0/1 brain mask.
        lambda_grad: regularisation weight (> 0).
        pad: FFT zero padding, as `tkd`.

    Returns:
        float32 (x, y, z) chi in ppm, 0 outside the mask.
    """
    if not lambda_grad > 0:
        raise InputError(f"lambda: expected a positive number, got {lambda_grad}")
    field, mask, full = _prepare(field_ppm, mask, pad)
    kernel = dipole_kernel(full, voxel_size_mm, b0_dir)
    denom = kernel**2 + np.float32(lambda_grad) * gradient_eigenvalues(full, voxel_size_mm)
    denom[0, 0, 0] = 1.0  # numerator is 0 there (D(0) = 0): the mean of chi is set to 0
    return _irfft(_rfft(field, full) * (kernel / denom), full, field.shape) * mask


# --- command ---------------------------------------------------------------------------------


_ND = NDITVParams()


@dataclass(frozen=True)
class BaselineConfig:
    """Options of `python -m daqsm.evaluation.baselines` (config-file keys = field names)."""

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
    threshold: float = param(TKD_THRESHOLD, "tkd: |D| threshold")
    lambda_grad: float = param(L2_LAMBDA, "l2: gradient weight", aliases=("lambda",))
    alpha: str = param(str(_ND.alpha), "ndi-tv / tv: TV weight, or 'auto': scan --alpha-grid and take the "
                       "discrepancy principle's alpha (daqsm.evaluation.nltv_alpha; needs no ground truth)")
    alpha_grid: tuple | None = param(None, "ndi-tv --alpha auto: the scanned values (default nltv_alpha.ALPHA_GRID)",
                                     type=float)
    mu_grad: float | None = param(None, "ndi-tv: gradient consistency (default 10*alpha)", aliases=("mu",))
    mu_data: float = param(_ND.mu_data, "ndi-tv: data split weight")
    iterations: int = param(_ND.iterations, "ndi-tv: max iterations")
    tol: float = param(_ND.tol, "ndi-tv: relative update tolerance")
    b0_tesla: float | None = param(None, "ndi-tv / tv: B0 in tesla (default: the case's; never assumed)",
                                   aliases=("b0",))
    te_s: float | None = param(None, "ndi-tv / tv: echo time of the weighting echo in seconds (default: the "
                               "case's; never assumed)", aliases=("te",))
    overwrite: bool = param(False, "replace an existing output")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m daqsm.evaluation.baselines",
                                     description="Classic QSM dipole inversions (field in ppm -> chi in ppm).")
    parser.add_argument("positional_method", nargs="?", metavar="METHOD", help="tkd, l2 or ndi-tv (= --method)")
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of the parameters below")
    add_config_options(parser, BaselineConfig, group_title=None)
    return parser


def main(argv=None) -> int:
    from daqsm.training_data.provenance import command

    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_method:
            values = {**values, "method": args.positional_method}
        return _run(resolve_config(BaselineConfig, args.config, values))

    with command("daqsm-baseline", argv):
        return run_cli(body, "python -m daqsm.evaluation.baselines")


def _alpha(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--alpha: expected a positive number or 'auto', got {text!r}") from None


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


def _run(args) -> int:
    import os

    from daqsm.errors import choices_message
    from daqsm.training_data.volume_io import check_mask, read_volume, write_volume

    if args.method not in METHODS:
        raise choices_message("method", args.method, METHODS)
    if args.case and (args.field or args.mask or args.weight):
        raise InputError("give either --case or --field/--mask/--weight, not both")
    for name in (("output",) if args.case else ("field", "mask", "output")):
        if not getattr(args, name):
            raise InputError(f"--{name}: required (see --help)")
    if os.path.exists(args.output) and not args.overwrite:
        raise InputError(f"{args.output}: output exists; pass --overwrite to replace it")
    from daqsm.errors import output_path
    from daqsm.validate import check_numbers

    check_numbers(args, {"threshold": "positive", "lambda_grad": "non_negative", "mu_grad": "non_negative",
                         "mu_data": "positive", "iterations": "int>=1", "tol": "non_negative", "b0_tesla": "positive",
                         "te_s": "positive", "alpha_grid": "positive", "voxel_size": "positive", "b0_dir": "finite"},
                  spell=lambda k: {"lambda_grad": "--lambda", "mu_grad": "--mu", "b0_tesla": "--b0",
                                       "te_s": "--te"}.get(k, "--" + k.replace("_", "-")))
    if args.alpha.strip().lower() != "auto":
        from daqsm.validate import positive

        positive("--alpha", _alpha(args.alpha))
    output_path("-o", args.output)
    if args.alpha_grid and args.alpha.strip().lower() != "auto":
        raise InputError("--alpha-grid: only with --alpha auto")
    tv_method = args.method in ("ndi-tv", "tv")
    if args.weight and not tv_method:
        raise InputError(f"--weight: only ndi-tv and tv use a data weight, not {args.method}")
    b0_tesla, te_s, weight = args.b0_tesla, args.te_s, None
    if args.case:  # like-for-like with fine-tuning: everything from the case (contract 1)
        from daqsm.training_data.formats.case_folder import read_case

        case = read_case(args.case, "--case", magnitude=tv_method)
        field, mask = case.field, case.mask
        geom = field.geometry(args.voxel_size_mm or case.voxel_size_mm, args.b0_dir or case.b0_dir)
        b0_tesla, te_s = b0_tesla or case.b0_tesla, te_s or case.weight_te_s()
        weight = case.weight() if tv_method else None
    else:
        field = read_volume(args.field)
        mask = check_mask(read_volume(args.mask, dtype=None).data, args.mask, field.data)
        geom = field.geometry(args.voxel_size_mm, args.b0_dir)
        weight = read_volume(args.weight).data if args.weight else None
    if tv_method and not (b0_tesla and te_s):
        raise InputError(f"{args.method}: the phase scale needs B0 and TE: give --b0 TESLA --te SECONDS "
                         f"(or --case DIR with case.json), found b0 {b0_tesla}, te {te_s}")
    common = dict(voxel_size_mm=geom.voxel_size_mm, b0_dir=geom.b0_dir, pad=args.pad)
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
                                         alphas=args.alpha_grid or nltv_alpha.ALPHA_GRID, **common)
            choice = nltv_alpha.choose_alpha_discrepancy(scan)
            for a, r, it in zip(scan.alphas, scan.residual, scan.iterations):
                print(f"{args.method}: alpha {a:.3g}: residual {r:.4g}, {it} iterations")
            print(f"{args.method}: alpha {choice.alpha:.3g} by the discrepancy principle ({choice.note}), "
                  f"{scan.seconds:.1f} s")
            chi = scan.maps[choice.index]
        else:
            chi, info = ndi_tv(field.data, mask, weight, params=params, return_info=True, **common)
            print(f"{args.method}: {info['iterations']} iterations, converged={info['converged']}, "
                  f"{info['seconds']:.1f} s")
    write_volume(args.output, chi.astype(np.float32), affine=field.affine, header=field.header)
    from daqsm.training_data.provenance import build_record, write_sidecar

    settings = {k: v for k, v in vars(args).items()}
    settings.update(b0_tesla=b0_tesla, te_s=te_s)
    write_sidecar(args.output, build_record(f"susceptibility map, {args.method} baseline", "ppm",
                                            sources=[args.case] if args.case else [args.field, args.mask, args.weight],
                                            b0_tesla=b0_tesla if tv_method else None,
                                            b0_dir=geom.b0_dir, voxel_size_mm=geom.voxel_size_mm, dipole_pad=args.pad,
                                            config=settings))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    cli()
