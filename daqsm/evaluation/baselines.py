"""Classic dipole inversions for comparison: TKD, closed-form L2-gradient and nonlinear TV (ADMM).

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
import time
from dataclasses import dataclass

import numpy as np
import scipy.fft

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config
from daqsm.errors import InputError, run_cli, shape_mismatch
from daqsm.training_data.dipole import dipole_kernel, fft_shape

METHODS = ("tkd", "l2", "ndi-tv")


@dataclass(frozen=True)
class NDITVParams:
    """Defaults of the nonlinear TV inversion (phase units: rad, chi scaled by `phase_scale`).

    Defaults chosen on the 2016 challenge data (3 T, phase scale 20.06 rad/ppm), NRMSE vs chi_33 after
    40 iterations for alpha in {1e-4, 3e-4, 1e-2, 3e-2, 0.1, 0.3}: 246, 205, 104, 82, 76, 87 %; mu_grad
    in {1, 10, 100} x alpha: 75.7, 76.1, 79.1 %. High-SNR simulations need a smaller alpha (the noisy
    test phantom, field noise 0.002 ppm, does best near 3e-3): tune alpha per dataset.

    Attributes:
        alpha: TV weight (alpha1 in FANSI), in the phase-unit problem.
        mu_grad: gradient consistency weight of the z = grad(chi) split (mu1); None -> 10 * alpha.
        mu_data: consistency weight of the v = D chi split of the nonlinear data term (mu2).
        iterations: maximum ADMM iterations.
        tol: stop when ||chi_k - chi_{k-1}|| / ||chi_k|| falls below this.
        newton_steps: Newton iterations of the per-voxel nonlinear v-update.
        b0_tesla, te_s: set the phase scale 2 pi gamma_bar B0 TE (rad per ppm) that turns the field
            into the phase of exp(i.) (3 T, 25 ms: 20.06 rad/ppm, the 2016 challenge's setting).
    """

    alpha: float = 0.1
    mu_grad: float | None = None
    mu_data: float = 1.0
    iterations: int = 150
    tol: float = 1e-3
    newton_steps: int = 4
    b0_tesla: float = 3.0
    te_s: float = 0.025


TKD_THRESHOLD = 0.19
# Gradient weight (field in ppm, gradients per mm). Chosen on the 2016 challenge data (NRMSE vs chi_33
# over lambda in {0.003, 0.01, 0.03, 0.1, 0.3, 1, 3}: 140, 110, 92, 81.3, 79.8, 83, 88 %): 0.1 is within
# 2 % of the minimum (0.3) with less over-smoothing (detrended RC2 rmse 121 vs 131 %).
L2_LAMBDA = 0.1


# --- shared pieces ---------------------------------------------------------------------------


def _prepare(field_ppm, mask, pad):
    field = np.asarray(field_ppm, dtype=np.float32)
    if field.ndim != 3:
        raise InputError(f"field: expected a 3-D volume, found shape {field.shape}")
    if not np.all(np.isfinite(field)):
        raise InputError("field: expected finite values, found NaN/Inf")
    mask = np.asarray(mask).astype(bool)
    if mask.shape != field.shape:
        raise shape_mismatch("mask", mask.shape, "field", field.shape)
    return field * mask, mask, fft_shape(field.shape, pad)


def _rfft(x, full):
    return scipy.fft.rfftn(x, s=full, workers=-1).astype(np.complex64, copy=False)


def _irfft(x_hat, full, shape=None):
    out = scipy.fft.irfftn(x_hat, s=full, workers=-1).astype(np.float32, copy=False)
    return out if shape is None else out[: shape[0], : shape[1], : shape[2]]


def gradient_eigenvalues(full, voxel_size_mm) -> np.ndarray:
    """sum_i |E_i|^2 on the rfft grid for periodic forward differences (x[n+1] - x[n]) / h_i.

    E_i(k) = (exp(2 pi i k_i / N_i) - 1) / h_i, so |E_i|^2 = (2 - 2 cos(2 pi k_i / N_i)) / h_i^2.
    Returns float32 (nx, ny, nz // 2 + 1).
    """
    axes = []
    for axis, (n, h) in enumerate(zip(full, voxel_size_mm)):
        k = np.arange(n // 2 + 1 if axis == 2 else n)
        e2 = (2.0 - 2.0 * np.cos(2.0 * np.pi * k / n)) / h**2
        axes.append(e2.reshape([-1 if a == axis else 1 for a in range(3)]))
    return (axes[0] + axes[1] + axes[2]).astype(np.float32)


def grad(x, voxel_size_mm) -> np.ndarray:
    """Periodic forward differences, float32 (3, x, y, z), per mm."""
    return np.stack([(np.roll(x, -1, axis=a) - x) / np.float32(h) for a, h in enumerate(voxel_size_mm)])


def grad_adjoint(g, voxel_size_mm) -> np.ndarray:
    """Adjoint of `grad`: sum_i (g_i[n-1] - g_i[n]) / h_i."""
    return sum((np.roll(g[a], 1, axis=a) - g[a]) / np.float32(h) for a, h in enumerate(voxel_size_mm))


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


# --- nonlinear TV (FANSI-style ADMM) ---------------------------------------------------------


def ndi_data_term(phase_model, phase_meas, weight) -> float:
    """sum W^2 |exp(i a) - exp(i b)|^2 = sum W^2 (2 - 2 cos(a - b)), phases in radians."""
    return float(np.sum(np.asarray(weight, np.float64) ** 2 * (2.0 - 2.0 * np.cos(
        np.asarray(phase_model, np.float64) - phase_meas))))


def ndi_data_gradient(phase_model, phase_meas, weight) -> np.ndarray:
    """Gradient of `ndi_data_term` w.r.t. the model phase: 2 W^2 sin(a - b)."""
    return 2.0 * np.asarray(weight) ** 2 * np.sin(np.asarray(phase_model) - phase_meas)


def solve_v(target, phase_meas, weight2, mu_data, v0=None, steps: int = 4) -> np.ndarray:
    """Per-voxel argmin_v W^2 |e^{iv} - e^{i phi}|^2 + mu/2 (v - target)^2 by safeguarded Newton.

    Stationarity: 2 W^2 sin(v - phi) + mu (v - target) = 0. Where the curvature
    2 W^2 cos(v - phi) + mu is small or negative, a gradient step 1 / (mu + 2 W^2) (the inverse
    Lipschitz constant) replaces the Newton step, so each step decreases the objective.
    """
    v = np.array(target if v0 is None else v0, dtype=np.float32, copy=True)
    lipschitz = mu_data + 2.0 * weight2
    for _ in range(steps):
        diff = v - phase_meas
        g1 = 2.0 * weight2 * np.sin(diff) + mu_data * (v - target)
        g2 = 2.0 * weight2 * np.cos(diff) + mu_data
        v -= g1 / np.where(g2 > 0.1 * mu_data, g2, lipschitz)
    return v


def ndi_tv(field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
           params: NDITVParams = NDITVParams(), pad="auto", return_info: bool = False, chi0=None):
    """Weighted nonlinear TV inversion by ADMM (FANSI-style; Milovic et al. 2018).

    Problem (phase units phi = s f, u = s chi, s = 2 pi gamma_bar B0 TE in rad/ppm):
        min_u ||W (exp(i D u) - exp(i phi))||_2^2 + alpha ||G u||_1   (anisotropic TV)
    Splits z = G u and v = D u with scaled duals; each iteration:
        u = IFFT[(mu_grad F(G^T(z - s_z)) + mu_data D F(v - s_v)) / (mu_grad |E|^2 + mu_data D^2)]
        z = soft(G u + s_z, alpha / mu_grad);  s_z += G u - z
        v = argmin W^2 |e^{iv} - e^{i phi}|^2 + mu_data/2 |v - (D u + s_v)|^2 (Newton, `solve_v`)
        s_v += D u - v
    Units: exp(i.) needs radians, hence the phase scale; the result is divided by it again.

    Args:
        field_ppm: float32 (x, y, z) local field, ppm.
        mask: (x, y, z) 0/1 brain mask.
        weight: (x, y, z) data weight >= 0 (e.g. magnitude), normalised to max 1 inside the mask;
            None -> the mask.
        params: NDITVParams.
        pad: FFT zero padding, as `tkd` (the padding has weight 0 in the data term).
        return_info: also return {"iterations", "converged", "seconds"}.
        chi0: optional float32 (x, y, z) start, ppm (warm start, e.g. the solution at a nearby alpha
            in an alpha scan); the splits start consistent with it (z = G u0, v = D u0).

    Returns:
        float32 (x, y, z) chi in ppm (0 outside the mask) [, info].
    """
    start = time.perf_counter()
    p = params
    if not (p.alpha > 0 and p.mu_data > 0 and p.iterations >= 1 and p.tol >= 0):
        raise InputError(f"ndi-tv parameters: expected alpha, mu_data > 0 and iterations >= 1, got {p}")
    from daqsm.training_data.units import rad_per_ppm

    scale = np.float32(rad_per_ppm(p.b0_tesla, p.te_s))
    mu_grad = np.float32(p.mu_grad if p.mu_grad is not None else 10.0 * p.alpha)
    mu_data, alpha = np.float32(p.mu_data), np.float32(p.alpha)
    field, mask, full = _prepare(field_ppm, mask, pad)
    w = mask.astype(np.float32) if weight is None else _check_weight(weight, mask)
    padding = [(0, f - n) for n, f in zip(field.shape, full)]
    phi = np.pad(field * scale, padding)
    w2 = np.pad(w * w, padding)
    kernel = dipole_kernel(full, voxel_size_mm, b0_dir)
    denom = mu_grad * gradient_eigenvalues(full, voxel_size_mm) + mu_data * kernel**2
    denom[0, 0, 0] = 1.0  # both numerator terms vanish at k = 0: mean fixed to 0
    weighted = w2 > 0
    if chi0 is None:
        u = np.zeros_like(phi)
        z = np.zeros((3,) + full, np.float32)
        v = phi.copy()
    else:
        chi0 = np.asarray(chi0, np.float32)
        if chi0.shape != field.shape:
            raise shape_mismatch("chi0", chi0.shape, "field", field.shape)
        u = np.pad(chi0 * scale, padding)
        z = grad(u, voxel_size_mm)
        v = _irfft(_rfft(u, full) * kernel, full)
    s_z = np.zeros_like(z)
    s_v = np.zeros_like(phi)
    phi_w, w2_w, v_w = phi[weighted], w2[weighted], v[weighted]
    converged, it = False, 0
    for it in range(1, p.iterations + 1):
        rhs = _rfft(mu_grad * grad_adjoint(z - s_z, voxel_size_mm), full) + mu_data * kernel * _rfft(v - s_v, full)
        u_hat = rhs / denom
        u_new = _irfft(u_hat, full)
        du = _irfft(u_hat * kernel, full)
        gu = grad(u_new, voxel_size_mm)
        z = gu + s_z
        z = np.sign(z) * np.maximum(np.abs(z) - alpha / mu_grad, 0.0)
        s_z += gu - z
        # where W = 0 the v-update is v = D u + s_v exactly; Newton only on the weighted voxels
        v = du + s_v
        v[weighted] = solve_v(v[weighted], phi_w, w2_w, mu_data, v0=v_w, steps=p.newton_steps)
        v_w = v[weighted]
        s_v += du - v
        change = np.linalg.norm(u_new - u) / max(np.linalg.norm(u_new), 1e-12)
        u = u_new
        if change < p.tol:
            converged = True
            break
    chi = (u[: field.shape[0], : field.shape[1], : field.shape[2]] / scale * mask).astype(np.float32)
    if return_info:
        return chi, {"iterations": it, "converged": converged, "seconds": time.perf_counter() - start}
    return chi


def _check_weight(weight, mask) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float32)
    if w.shape != mask.shape:
        raise shape_mismatch("weight", w.shape, "mask", mask.shape)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("weight: expected finite values >= 0")
    peak = float(w[mask].max())
    if peak <= 0:
        raise InputError("weight: all zero inside the mask")
    return w * mask / np.float32(peak)


# --- command ---------------------------------------------------------------------------------


_ND = NDITVParams()


@dataclass(frozen=True)
class BaselineConfig:
    """Options of `python -m daqsm.evaluation.baselines` (config-file keys = field names)."""

    method: str = param("", "tkd, l2 or ndi-tv (also the first positional argument)", choices=METHODS)
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
    alpha: str = param(str(_ND.alpha), "ndi-tv: TV weight, or 'auto': scan --alpha-grid and take the discrepancy "
                       "principle's alpha (daqsm.evaluation.nltv_alpha; needs no ground truth)")
    alpha_grid: tuple | None = param(None, "ndi-tv --alpha auto: the scanned values (default nltv_alpha.ALPHA_GRID)",
                                     type=float)
    mu_grad: float | None = param(None, "ndi-tv: gradient consistency (default 10*alpha)", aliases=("mu",))
    mu_data: float = param(_ND.mu_data, "ndi-tv: data split weight")
    iterations: int = param(_ND.iterations, "ndi-tv: max iterations")
    tol: float = param(_ND.tol, "ndi-tv: relative update tolerance")
    b0_tesla: float = param(_ND.b0_tesla, "ndi-tv: B0 in tesla", aliases=("b0",))
    te_s: float = param(_ND.te_s, "ndi-tv: echo time in seconds", aliases=("te",))
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
    for name in ("field", "mask", "output"):
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
    if args.weight and args.method != "ndi-tv":
        raise InputError(f"--weight: only ndi-tv uses a data weight, not {args.method}")
    field = read_volume(args.field)
    mask = check_mask(read_volume(args.mask, dtype=None).data, args.mask, field.data)
    from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry

    # .mat/.npy carry no geometry: a NIfTI mask (or weight) on the same grid lends its affine
    located = resolve_field_geometry(field, [("mask", args.mask), ("magnitude", args.weight)], args.voxel_size_mm,
                                     args.b0_dir)
    note = assumption_line(located, f"field {args.field}")
    if note:
        print(f"daqsm-baseline: warning: {note}", file=sys.stderr)
    geom = located.geometry
    common = dict(voxel_size_mm=geom.voxel_size_mm, b0_dir=geom.b0_dir, pad=args.pad)
    if args.method == "tkd":
        chi = tkd(field.data, mask, threshold=args.threshold, **common)
    elif args.method == "l2":
        chi = l2_gradient(field.data, mask, lambda_grad=args.lambda_grad, **common)
    else:
        weight = read_volume(args.weight).data if args.weight else None
        auto = args.alpha.strip().lower() == "auto"
        params = NDITVParams(alpha=NDITVParams.alpha if auto else _alpha(args.alpha), mu_grad=args.mu_grad, mu_data=args.mu_data,
                             iterations=args.iterations, tol=args.tol, b0_tesla=args.b0_tesla, te_s=args.te_s)
        if auto:
            from daqsm.evaluation import nltv_alpha

            scan = nltv_alpha.scan_alpha(field.data, mask, weight, params=params,
                                         alphas=args.alpha_grid or nltv_alpha.ALPHA_GRID, **common)
            choice = nltv_alpha.choose_alpha_discrepancy(scan)
            for a, r, it in zip(scan.alphas, scan.residual, scan.iterations):
                print(f"ndi-tv: alpha {a:.3g}: residual {r:.4g}, {it} iterations")
            print(f"ndi-tv: alpha {choice.alpha:.3g} by the discrepancy principle ({choice.note}), {scan.seconds:.1f} s")
            chi = scan.maps[choice.index]
        else:
            chi, info = ndi_tv(field.data, mask, weight, params=params, return_info=True, **common)
            print(f"ndi-tv: {info['iterations']} iterations, converged={info['converged']}, {info['seconds']:.1f} s")
    write_volume(args.output, chi.astype(np.float32), affine=located.affine, header=located.header)
    from daqsm.training_data.provenance import build_record, write_sidecar

    settings = {k: v for k, v in vars(args).items()}
    b0 = args.b0_tesla if args.method == "ndi-tv" else None
    write_sidecar(args.output, build_record(f"susceptibility map, {args.method} baseline", "ppm",
                                            sources=[args.field, args.mask, args.weight], b0_tesla=b0,
                                            b0_dir=geom.b0_dir, voxel_size_mm=geom.voxel_size_mm, dipole_pad=args.pad,
                                            config=settings), {"GeometrySources": located.sources})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    cli()
