"""Multi-echo complex GRE signal, k-space cropping, complex noise and the RC2 local-field estimate.

Signal (per voxel, echo time TE): S = M0 exp(-R2* TE) exp(i phi), phi = rad_per_ppm(B0, TE) f_ppm.
No receiver phase offset is simulated: the field estimate uses phase differences to the first echo,
which would cancel one anyway.

Noise: complex Gaussian, the real and the imaginary channel each with standard deviation
sigma = max|S(echo 1)| / peak_snr (RC2: peak SNR 100 = Snr1, 1000 = Snr2).

Field estimate (as RC2): phase differences to echo 1, dphi_e = angle(S_e conj(S_1)), combined by a
magnitude- and TE-weighted least-squares fit through the origin,
    f = sum_e w_e dTE_e dphi_e / sum_e w_e dTE_e^2 / (2 pi gamma_bar B0 1e-6),  w_e = |S_e|^2,
i.e. the average of the per-echo fields weighted by |S_e|^2 dTE_e^2 (inverse noise variances).
At 7 T the longer differences wrap (24 ms: pi is 0.07 ppm), so unwrapping is needed: the shortest
difference is unwrapped spatially (Laplacian unwrapping, then the congruent 2 pi multiple nearest
to it, global 2 pi offset chosen to give the mean inside the mask nearest 0), and each longer
difference temporally (2 pi multiple nearest to the prediction from the estimate so far).

Known limits (measured, benchmarks/results_simulate.md): next to the -3.3 ppm calcification the
field changes by more than pi per voxel even at the 8 ms difference, so a few voxels there keep a
2 pi error (as in real data); and after k-space cropping the phase of the voxel-averaged complex
signal is not the voxel average of the field (intra-voxel dephasing, mostly in veins and at
tissue edges), so the estimate differs from D * chi of the cropped truth by ~10-20 % NRMSE.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from daqsm.training_data.units import rad_per_ppm


def echo_signals(m0, r2star_hz, field_ppm, b0_tesla: float, te_s):
    """Yield the complex64 noise-free signal of each echo (x, y, z)."""
    for te in te_s:
        phase = np.float32(rad_per_ppm(b0_tesla, te)) * np.asarray(field_ppm, np.float32)
        decay = np.asarray(m0, np.float32) * np.exp(-np.asarray(r2star_hz, np.float32) * np.float32(te))
        # cos/sin in float32 straight into a complex64 array: exp(1j * phase) would go through
        # complex128 and take several times longer on a 0.64 mm head
        signal = np.empty(phase.shape, np.complex64)
        signal.real = decay * np.cos(phase)
        signal.imag = decay * np.sin(phase)
        yield signal


def crop_kspace(volume, out_shape):
    """Resample by keeping the central (low-frequency) block of k-space; the FOV is kept.

    Args:
        volume: real or complex (x, y, z) array.
        out_shape: (x, y, z) output grid, each <= the input size.

    Returns:
        complex64 (or float32 for real input) array on the output grid, intensity preserved.
    """
    volume = np.asarray(volume)
    out_shape = tuple(int(n) for n in out_shape)
    if out_shape == volume.shape:
        return volume.astype(np.complex64 if np.iscomplexobj(volume) else np.float32)
    spectrum = scipy.fft.fftn(volume.astype(np.complex64), workers=-1)
    keep = []
    for n, m in zip(volume.shape, out_shape):
        # frequencies -floor(m/2) .. ceil(m/2)-1 in fftfreq order
        keep.append(np.r_[0: (m + 1) // 2, n - m // 2: n])
    cropped = spectrum[np.ix_(*keep)]
    del spectrum
    out = scipy.fft.ifftn(cropped, workers=-1) * np.float32(np.prod(out_shape) / np.prod(volume.shape))
    out = out.astype(np.complex64)
    return out if np.iscomplexobj(volume) else out.real.copy()


def add_noise(signal, sigma: float, rng: np.random.Generator):
    """Complex Gaussian noise, std `sigma` on the real and on the imaginary channel."""
    noise = rng.standard_normal(signal.shape, dtype=np.float32) + 1j * rng.standard_normal(signal.shape, dtype=np.float32)
    return (signal + np.float32(sigma) * noise).astype(np.complex64)


def laplacian_unwrap(phase_rad, voxel_size_mm=(1.0, 1.0, 1.0)):
    """Smooth unwrapped estimate of a wrapped phase (zero mean): inverse Laplacian of
    cos(phi) lap(sin phi) - sin(phi) lap(cos phi), FFT-based (periodic boundaries)."""
    k2 = _k2(phase_rad.shape, voxel_size_mm)
    lap = lambda x: scipy.fft.irfftn(-k2 * scipy.fft.rfftn(x, workers=-1), s=x.shape, workers=-1)  # noqa: E731
    sin, cos = np.sin(phase_rad), np.cos(phase_rad)
    rhs = cos * lap(sin) - sin * lap(cos)
    spectrum = scipy.fft.rfftn(rhs, workers=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        spectrum = -spectrum / k2
    spectrum[0, 0, 0] = 0
    return scipy.fft.irfftn(spectrum, s=phase_rad.shape, workers=-1).astype(np.float32)


def _k2(shape, voxel_size_mm):
    kx = np.fft.fftfreq(shape[0], d=voxel_size_mm[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1], d=voxel_size_mm[1])[None, :, None]
    kz = np.fft.rfftfreq(shape[2], d=voxel_size_mm[2])[None, None, :]
    return (4 * np.pi**2 * (kx**2 + ky**2 + kz**2)).astype(np.float32)


def estimate_local_field(echoes, te_s, b0_tesla: float, mask, voxel_size_mm=(1.0, 1.0, 1.0)):
    """Local field (ppm) from multi-echo complex images, as RC2 (module doc).

    Args:
        echoes: list of complex64 (x, y, z), one per echo (at least 2).
        te_s: echo times in seconds.
        b0_tesla: field strength.
        mask: bool (x, y, z) brain mask (the unwrapping's offset and the output support).
        voxel_size_mm: voxel size (Laplacian unwrapping).

    Returns:
        float32 (x, y, z) local field in ppm, 0 outside the mask.
    """
    first = echoes[0]
    numerator = np.zeros(first.shape, np.float32)
    denominator = np.zeros(first.shape, np.float32)
    estimate = None
    order = np.argsort(np.asarray(te_s[1:]) - te_s[0]) + 1
    for e in order:
        dte = float(te_s[e] - te_s[0])
        dphi = np.angle(echoes[e] * np.conj(first)).astype(np.float32)
        scale = np.float32(rad_per_ppm(b0_tesla, dte))
        if estimate is None:
            smooth = laplacian_unwrap(dphi, voxel_size_mm)
            dphi = dphi + np.float32(2 * np.pi) * np.round((smooth - dphi) / (2 * np.pi))
            dphi -= np.float32(2 * np.pi * np.round(dphi[mask].mean() / (2 * np.pi)))
        else:
            predicted = estimate * scale
            dphi = dphi + np.float32(2 * np.pi) * np.round((predicted - dphi) / (2 * np.pi))
        weight = np.abs(echoes[e]) ** 2
        numerator += weight * dte * dphi / scale * dte
        denominator += weight * dte**2
        estimate = numerator / np.maximum(denominator, np.float32(1e-30))
    return (estimate * mask).astype(np.float32)
