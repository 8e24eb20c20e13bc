"""The TV weight alpha of nonlinear TV (`tv_inversion.ndi_tv`): the scan over alpha and the rule without ground truth.

RC2 (Marques et al., MRM 2021;86:526) reported every method twice: stage 1 with parameters chosen
without the ground truth, stage 2 with the parameters that optimise a metric against it. Both here
come from one scan of alpha over a log grid (`scan_alpha`, warm-started from the largest alpha down):

Stage 1 — discrepancy principle (Morozov), `choose_alpha_discrepancy`: the largest alpha whose
weighted data residual
    R(alpha) = sum_mask W^2 |exp(i s D chi_alpha) - exp(i s f)|^2          (s: rad per ppm)
does not exceed the residual that the data cannot be fitted below, T = max(E, 1.3 R_floor): E the
residual that the noise alone would leave, E = E_n[R(chi_true)], and R_floor the smallest residual
over the grid (what even the least regularised map leaves: unfitted noise plus model error).
For Gaussian field noise n of std sigma_x (ppm) per voxel, E|e^{ia} - e^{i(a + s n)}|^2 = 2 (1 - exp(-s^2 sigma_x^2 / 2)),
so E = sum_mask W^2 2 (1 - exp(-(s sigma_w / W)^2 / 2)) (~ s^2 sigma_w^2 |mask| for small noise).
The noise is estimated from the field itself (`estimate_noise_ppm`): the median absolute value of
the finest-scale diagonal Haar (2x2x2 alternating-sign) coefficient of W f over blocks inside the
mask, / 0.6745 (Donoho & Johnstone, Biometrika 1994;81:425) — smooth fields have almost no energy
there and the median ignores the few voxels next to strong sources. The weight W times the noise is
assumed to have one std over the mask (magnitude weighting makes it so: the phase noise is ∝ 1/|S|;
with W = mask the noise is assumed homoscedastic). This needs no magnitude, SNR or echo model, so it
also works for fields that come without them.
Why the floor: where the field holds model error above the noise (intra-voxel dephasing of the
RC2-like simulation, background remnants and anisotropy of real data) no alpha reaches E — Morozov's
rule alone then returns the smallest alpha (measured on the built-in Sim1 cases at 2 mm: rmse 53 /
46 % against 36 / 35 % at the best alpha). Counting the unexplainable part into the target, as the
generalised discrepancy principle does for an inexact forward model (Morozov 1984), moves the pick
to the knee where R starts to grow; a factor 1.3 on the floor leaves room for the bias every
regularised map has (`FLOOR_FACTOR`). Where noise dominates (R_floor < E / 1.3, e.g. the test
phantom) the rule is Morozov's.

kappa (`tau`; `--residual-factor` of daqsm-baseline and daqsm-finetune, default `RESIDUAL_FACTOR` = 3)
scales E: T = max(kappa E, 1.3 R_floor). The floor underestimates model error: small-alpha maps fit part of it, so the true chi's
own residual is several times both E and the floor (4.4-7.1 E on the built-in 3 mm cases, 2.1-2.7 E on
the built-in 1 mm ones, 5.3-12.6 E on the RC2-like 1 mm ones, 4.7-6.8 E on the 2016 brain;
benchmarks/bench_model_error.py, results in benchmarks/results_baselines.md), and kappa 1 picks alphas
2-20x below the best. kappa 3 was chosen on the four built-in 3 mm cases (the best factor on each) and
then tested on ten others (RC2-like 1 mm, built-in 1 mm, the 2016 brain): never worse than kappa 1,
15-29 % lower NLTV rmse on the RC2-like and in-vivo ones; the fine-tuned network gains with it too
(benchmarks/results_ablation.md). Not the best factor everywhere (2 on the built-in 1 mm cases, 5 in vivo).

The Haar estimate sees everything at the voxel scale that a smooth field has not, so on the RC2-like
cases it holds model error too (built-in 2 mm: 0.00065 ppm at peak SNR 100 and 0.00043 at 1000,
where the noise alone differs tenfold).

Also offered (daqsm/evaluation/nltv_alpha.py, with stage 2): the L-curve corner (`choose_alpha_lcurve`;
Hansen 1992): the grid point of largest Menger curvature of (log R, log TV), which needs no noise level
but is sensitive to the grid and to unconverged small-alpha solves: on the noisy test phantom (field
noise 0.0007 / 0.002 / 0.006 ppm) it picked 0.01 / 4.6e-4 / 1e-3 against best alphas 4.6e-3 / 0.01 / 0.022,
so it is not the default.

Used by the baselines (daqsm-baseline `--alpha auto`, daqsm.evaluation.baseline_cli) and by step 5's
per-case TV weight (daqsm.network_model.tv_weight), hence in daqsm.qc (beside the noise estimate it
needs) rather than in the evaluation package.

Stage 2 (daqsm/evaluation/nltv_alpha.py) — `best_alpha_by_truth`: the grid point of least demeaned rmse
against the truth inside the mask (the RC2 `rmse`); benchmarks only.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.qc.noise import estimate_noise_ppm as shared_noise_estimate
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.tv_inversion import NDITVParams, check_weight, ndi_data_term, ndi_tv

# 1e-4 .. 0.1 in steps of 10^(1/3) (x2.15): the 2016 data's best (0.1, 3 T / 25 ms) and high-SNR
# simulations' (~3e-3) both inside, 10 solves
ALPHA_GRID = tuple(float(a) for a in np.logspace(-4, -1, 10))
# Residual floor factor of the stage-1 rule (module doc), inside the usual 1.1-2 range of the
# discrepancy principle's tau; set once on the four built-in 2 mm cases of the simulator that kept the
# Gibbs ringing in its truth (1.2-1.45 gave the same picks there), not per case and not retuned
# (benchmarks/results_baselines.md)
FLOOR_FACTOR = 1.3
# kappa of the stage-1 target max(kappa E, 1.3 R_floor) (module doc): set on the four built-in 3 mm cases,
# tested on ten others (benchmarks/results_baselines.md, "Why stage 1 under-regularises")
RESIDUAL_FACTOR = 3.0


@dataclass(frozen=True)
class AlphaScan:
    """Nonlinear TV over a grid of alpha (ascending).

    Attributes:
        alphas: the grid, ascending.
        residual: weighted data residual R(alpha) of each map (dimensionless, rad^2 summed).
        tv: anisotropic TV of each map, sum |G chi| (ppm / mm summed over the volume).
        iterations: ADMM iterations of each solve.
        maps: float32 (x, y, z) chi in ppm per alpha (None when not kept).
        noise_ppm: robust std of W times the field noise (`estimate_noise_ppm`), ppm.
        noise_residual: E, the residual the noise alone leaves (module doc).
        seconds: wall time of the scan.
    """

    alphas: tuple
    residual: tuple
    tv: tuple
    iterations: tuple
    maps: tuple | None
    noise_ppm: float
    noise_residual: float
    seconds: float


@dataclass(frozen=True)
class AlphaChoice:
    """One rule's pick on a scan: the alpha, its grid index, the rule, whether its criterion was met, and
    (discrepancy rule) the residual target T it compared with."""

    alpha: float
    index: int
    rule: str
    reached: bool
    note: str
    target: float | None = None


def _weight(weight, mask):
    mask = np.asarray(mask).astype(bool)
    return mask.astype(np.float32) if weight is None else check_weight(weight, mask)


def estimate_noise_ppm(field_ppm, mask, weight=None) -> float:
    """Robust std of W times the field noise, ppm (daqsm.qc.noise.estimate_noise_ppm; W
    normalised to max 1 inside the mask, the mask when None)."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape != np.shape(field_ppm):
        raise shape_mismatch("mask", mask.shape, "field", np.shape(field_ppm))
    return shared_noise_estimate(field_ppm, mask, _weight(weight, mask))


def noise_residual(noise_ppm: float, mask, weight, phase_scale: float) -> float:
    """E = sum_mask W^2 2 (1 - exp(-(s sigma_w / W)^2 / 2)), the residual of the truth under the noise."""
    mask = np.asarray(mask).astype(bool)
    w = np.asarray(_weight(weight, mask), np.float64)[mask]
    w = w[w > 0]
    return float(np.sum(w**2 * 2.0 * (1.0 - np.exp(-0.5 * (phase_scale * noise_ppm / w) ** 2))))


def data_residual(chi_ppm, field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0),
                  b0_dir=(0.0, 0.0, 1.0), phase_scale: float = 1.0, pad="auto") -> float:
    """R = sum_mask W^2 |exp(i s D chi) - exp(i s f)|^2 of a map (the data term of `ndi_tv`)."""
    mask = np.asarray(mask).astype(bool)
    model = forward_field(np.asarray(chi_ppm, np.float32), voxel_size_mm, b0_dir, pad=pad)
    w = _weight(weight, mask)
    return ndi_data_term(phase_scale * model[mask], phase_scale * np.asarray(field_ppm)[mask], w[mask])


def total_variation(chi_ppm, voxel_size_mm=(1.0, 1.0, 1.0)) -> float:
    """Anisotropic TV, sum over axes and voxels of |forward difference| / voxel size (ppm / mm)."""
    chi = np.asarray(chi_ppm, np.float64)
    return float(sum(np.abs(np.diff(chi, axis=a)).sum() / h for a, h in enumerate(voxel_size_mm)))


def scan_alpha(field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
               params: NDITVParams = NDITVParams(), alphas=ALPHA_GRID, pad="auto", keep_maps: bool = True,
               warm_start: bool = True, progress: bool = False) -> AlphaScan:
    """Nonlinear TV at each alpha of a grid, from the largest down, each warm-started from the previous map.

    Args:
        field_ppm, mask, weight, voxel_size_mm, b0_dir, pad: as `baselines.ndi_tv`.
        params: NDITVParams; its alpha is replaced by each grid value (mu_grad None -> 10 alpha).
        alphas: positive grid (any order; returned ascending).
        keep_maps: keep every map (needed by `best_alpha_by_truth` and to return the chosen map).
        warm_start: start each solve from the previous (larger alpha) map.
        progress: a progress bar on stderr over the solves (alpha and iterations so far).

    Returns:
        AlphaScan.
    """
    start = time.perf_counter()
    grid = sorted(float(a) for a in alphas)
    if not grid or grid[0] <= 0:
        raise InputError(f"alphas: expected positive values, got {alphas}")
    from tqdm import tqdm

    from daqsm.training_data.units import rad_per_ppm

    scale = rad_per_ppm(params.b0_tesla, params.te_s)
    results = {}
    previous = None
    with tqdm(total=len(grid) * params.iterations, desc="TV weight scan", unit="it", disable=not progress,
              file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
        for alpha in reversed(grid):
            bar.set_postfix(alpha=f"{alpha:.3g}")
            chi, info = ndi_tv(field_ppm, mask, weight, voxel_size_mm, b0_dir, replace(params, alpha=alpha), pad=pad,
                               return_info=True, chi0=previous if warm_start else None,
                               on_iteration=lambda _it, _change: bar.update(1))
            bar.update(params.iterations - info["iterations"])  # a solve that converged early
            results[alpha] = (chi, data_residual(chi, field_ppm, mask, weight, voxel_size_mm, b0_dir, scale, pad),
                              total_variation(chi, voxel_size_mm), info["iterations"])
            previous = chi
    noise = estimate_noise_ppm(field_ppm, mask, weight)
    return AlphaScan(alphas=tuple(grid), residual=tuple(results[a][1] for a in grid),
                     tv=tuple(results[a][2] for a in grid), iterations=tuple(results[a][3] for a in grid),
                     maps=tuple(results[a][0] for a in grid) if keep_maps else None, noise_ppm=noise,
                     noise_residual=noise_residual(noise, mask, weight, scale), seconds=time.perf_counter() - start)


def choose_alpha_discrepancy(scan: AlphaScan, tau: float = RESIDUAL_FACTOR,
                             floor_factor: float | None = FLOOR_FACTOR) -> AlphaChoice:
    """Stage 1: the largest alpha whose residual stays within the target T (module doc).

    T = max(tau E, floor_factor R_floor), R_floor = the smallest residual over the grid. With
    floor_factor None this is Morozov's rule on the noise alone (T = tau E).
    """
    floor = min(scan.residual)
    noise_target = tau * scan.noise_residual
    target = max(noise_target, floor_factor * floor) if floor_factor else noise_target
    below = [i for i, r in enumerate(scan.residual) if r <= target]
    if not below:
        return AlphaChoice(scan.alphas[0], 0, "discrepancy", False,
                           f"no alpha reaches the noise residual {noise_target:.4g} (smallest R {floor:.4g}): "
                           "model error above the noise; smallest alpha of the grid", target)
    index = max(below)
    source = (f"{tau:g} x noise residual {scan.noise_residual:.4g}" if target == noise_target else
              f"{floor_factor:g} x residual floor {floor:.4g} (model error above the noise residual "
              f"{scan.noise_residual:.4g})")
    note = f"R {scan.residual[index]:.4g} <= {source}"
    if index == len(scan.alphas) - 1:
        note += "; largest alpha of the grid (extend the grid upwards)"
    return AlphaChoice(scan.alphas[index], index, "discrepancy", True, note, target)
