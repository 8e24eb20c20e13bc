"""Classic dipole inversions for comparison: TKD, closed-form L2-gradient, nonlinear and linear TV (ADMM).

The TV solver lives in daqsm/training_data/tv_inversion.py (step 5's lambda rule uses it too); its
names are importable from here as before.

All three share the project's one kernel `daqsm.training_data.dipole.dipole_kernel` (rfft half-spectrum,
D(0) = 0) and use scipy.fft rfftn/irfftn in float32/complex64. Inputs: local field in ppm and a
brain mask; output: susceptibility in ppm, zero outside the mask. The mean of chi is undetermined
(D(0) = 0) and is returned as 0 over the FFT grid; compare maps after demeaning (RC2 metrics do).

The command around them (`daqsm-baseline`, `python -m daqsm.evaluation.baseline_cli`) lives in
baseline_cli.py, so that nltv_alpha.py can import these solvers and the command both (no import circle).

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

import numpy as np

from daqsm.errors import InputError
from daqsm.training_data.dipole import dipole_kernel
from daqsm.training_data.tv_inversion import (  # noqa: F401  (the solver's names, importable from here as before)
    NDITVParams,
    _irfft,
    _prepare,
    _rfft,
    check_weight,
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
