"""Nonlinear TV's alpha for the evaluation: stage 1 (no truth) and stage 2 (best by truth), RC2 style.

The scan over alpha and the stage-1 discrepancy rule live in daqsm/qc/tv_alpha.py (step 5's
lambda rule uses them too; their names are importable from here as before). Here: the L-curve corner
(`choose_alpha_lcurve`; Hansen 1992), the grid point of largest Menger curvature of (log R, log TV),
which needs no noise level but is sensitive to the grid and to unconverged small-alpha solves (on the
noisy test phantom, field noise 0.0007 / 0.002 / 0.006 ppm, it picked 0.01 / 4.6e-4 / 1e-3 against best
alphas 4.6e-3 / 0.01 / 0.022, so it is not the default), and stage 2, `best_alpha_by_truth`: the grid
point of least demeaned rmse against the truth inside the mask (the RC2 `rmse`); benchmarks only.
"""
from __future__ import annotations

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.qc.tv_alpha import (  # noqa: F401  (importable from here as before)
    ALPHA_GRID,
    FLOOR_FACTOR,
    RESIDUAL_FACTOR,
    AlphaChoice,
    AlphaScan,
    choose_alpha_discrepancy,
    data_residual,
    estimate_noise_ppm,
    noise_residual,
    scan_alpha,
    total_variation,
)


def choose_alpha_lcurve(scan: AlphaScan) -> AlphaChoice:
    """The L-curve corner: the interior grid point of largest Menger curvature of (log R, log TV)."""
    if len(scan.alphas) < 3:
        raise InputError(f"alphas: the L-curve needs at least 3 grid points, got {len(scan.alphas)}")
    x = np.log(np.maximum(np.asarray(scan.residual), 1e-300))
    y = np.log(np.maximum(np.asarray(scan.tv), 1e-300))
    # normalise both axes to [0, 1] so that the curvature does not depend on the units
    x = (x - x.min()) / max(np.ptp(x), 1e-12)
    y = (y - y.min()) / max(np.ptp(y), 1e-12)
    curvature = np.full(len(x), -np.inf)
    for i in range(1, len(x) - 1):
        a = np.array([x[i - 1], y[i - 1]])
        b = np.array([x[i], y[i]])
        c = np.array([x[i + 1], y[i + 1]])
        area2 = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        sides = np.linalg.norm(b - a) * np.linalg.norm(c - b) * np.linalg.norm(c - a)
        # ascending alpha runs from (small R, large TV) to (large R, small TV): the corner is a left turn (> 0)
        curvature[i] = 2.0 * area2 / sides if sides > 0 else -np.inf
    index = int(np.argmax(curvature))
    return AlphaChoice(scan.alphas[index], index, "lcurve", bool(np.isfinite(curvature[index])),
                       f"max curvature {curvature[index]:.3g} of (log R, log TV)")


def best_alpha_by_truth(scan: AlphaScan, truth_ppm, mask) -> tuple[AlphaChoice, tuple]:
    """Stage 2 (benchmarks only): the grid alpha of least demeaned rmse vs the truth in the mask.

    Returns:
        (AlphaChoice, rmse per grid alpha in %).
    """
    from daqsm.evaluation.metrics import nrmse_pair

    if scan.maps is None:
        raise InputError("scan: best_alpha_by_truth needs the maps (scan_alpha(..., keep_maps=True))")
    truth = np.asarray(truth_ppm)
    if truth.shape != scan.maps[0].shape:
        raise shape_mismatch("truth", truth.shape, "maps", scan.maps[0].shape)
    rmse = tuple(nrmse_pair(chi, truth, np.asarray(mask).astype(bool))[0] for chi in scan.maps)
    index = int(np.nanargmin(rmse))
    return AlphaChoice(scan.alphas[index], index, "truth", True, f"rmse {rmse[index]:.4g} %"), rmse
