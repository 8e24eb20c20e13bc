"""Noise level of a local field map, estimated from the data alone (no magnitude, SNR or echo model).

One home for the estimate that both data-consistency stopping rules use: fine-tuning's
discrepancy principle (daqsm/network_model/stopping.py) and nonlinear TV's stage-1 alpha
(daqsm/qc/tv_alpha.py).

d = (1/sqrt 8) sum over a 2x2x2 block of (-1)^(i+j+k) W f (the finest diagonal Haar coefficient, the
mixed third difference) is N(0, sigma^2) for white noise of std sigma and ~0 for a field that is
smooth over two voxels; sigma = median |d| / 0.6745 over all (overlapping) blocks whose 8 voxels
are inside the mask (Donoho and Johnstone, Biometrika 1994;81:425): the median ignores the few
blocks on sharp edges. W times the noise is assumed to have one std over the mask: with W = the
normalised magnitude and phase noise proportional to 1 / magnitude it does; with W = mask the noise
is assumed homoscedastic. Whatever else varies at the voxel scale (a simulator's intra-voxel
dephasing, background-removal remnants) is counted as noise.
"""
from __future__ import annotations

import numpy as np

from daqsm.errors import InputError, shape_mismatch

_MAD_TO_STD = 0.6745  # median |N(0, 1)|


def estimate_noise_ppm(field_ppm, mask, weight=None) -> float:
    """Robust std of W x the field noise in ppm (module docstring).

    Args:
        field_ppm: float (x, y, z) local field, ppm.
        mask: (x, y, z) 0/1 brain mask.
        weight: (x, y, z) data weight W in [0, 1] on the field's grid, or None (the mask).

    Returns:
        sigma_w in ppm.

    Raises:
        InputError: shape mismatch, or no 2x2x2 block inside the mask.
    """
    field = np.asarray(field_ppm, np.float64)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != field.shape:
        raise shape_mismatch("mask", mask.shape, "field", field.shape)
    w = mask.astype(np.float64) if weight is None else np.asarray(weight, np.float64)
    if w.shape != field.shape:
        raise shape_mismatch("weight", w.shape, "field", field.shape)
    wf = w * field * mask
    d = np.diff(np.diff(np.diff(wf, axis=0), axis=1), axis=2) / np.sqrt(8.0)
    inside = mask[:-1, :-1, :-1].copy()
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                inside &= mask[dx: dx + d.shape[0], dy: dy + d.shape[1], dz: dz + d.shape[2]]
    if not inside.any():
        raise InputError("mask: no 2x2x2 block inside the mask to estimate the noise from")
    return float(np.median(np.abs(d[inside])) / _MAD_TO_STD)
