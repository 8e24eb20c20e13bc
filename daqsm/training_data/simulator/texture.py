"""Intra-region susceptibility texture: smooth correlated random fields and deep-grey-matter iron gradients.

A piecewise-constant chi map favours TV-type inversions unfairly (docs/physics.md), so every
tissue gets texture:

1. A stationary Gaussian random field g, unit variance, made by filtering white noise in k-space
   with a sum of two Gaussians (correlation scales `scales_mm`, default 1.5 and 5 mm, equal
   variance each): fine granularity plus slow drifts. Per label the texture is
   std_label * g, std from `tissue.TEXTURE_STD_PPB` (5-15 ppb).
2. Iron gradients in the deep-grey nuclei: a linear ramp along array axis 1 (anterior-posterior in
   both the RC2 and the MNI orientation), zero mean over each structure, reaching
   +-`IRON_GRADIENT[label]` x chiref at the structure's ends (caudate richer anteriorly, putamen and
   globus pallidus richer posteriorly: design choices after the commonly reported trends).

Same seed -> same texture; the field is generated on the whole grid at once so the result does not
depend on how labels are arranged.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from daqsm.training_data.simulator.tissue import CHIREF_PPM, TEXTURE_STD_PPB

#: Iron-gradient amplitude (fraction of chiref at the ends of the structure) per label.
IRON_GRADIENT = {1: 0.25, 2: -0.15, 3: -0.25}


def correlated_field(shape, voxel_size_mm, rng: np.random.Generator,
                     scales_mm=(1.5, 5.0)) -> np.ndarray:
    """Unit-variance smooth Gaussian random field.

    Args:
        shape: (nx, ny, nz) grid.
        voxel_size_mm: voxel size (mm), so the correlation scales are physical.
        rng: numpy Generator (the only source of randomness).
        scales_mm: standard deviations (mm) of the Gaussian smoothing kernels; each scale
            contributes equal variance.

    Returns:
        float32 (nx, ny, nz), mean ~0, std exactly 1 over the grid.
    """
    shape = tuple(int(n) for n in shape)
    noise = rng.standard_normal(shape, dtype=np.float32)
    spectrum = scipy.fft.rfftn(noise, workers=-1)
    del noise
    k2 = _k_squared(shape, voxel_size_mm)
    transfer = np.zeros(k2.shape, dtype=np.float32)
    for sigma in scales_mm:
        gauss = np.exp(-2.0 * np.pi**2 * sigma**2 * k2).astype(np.float32)
        # Equal variance per scale: divide by the filter's own energy.
        transfer += gauss / np.float32(np.sqrt(np.mean(gauss**2)))
    spectrum *= transfer
    field = scipy.fft.irfftn(spectrum, s=shape, workers=-1).astype(np.float32, copy=False)
    field -= field.mean(dtype=np.float64)
    field /= np.float32(field.std(dtype=np.float64))
    return field


def _k_squared(shape, voxel_size_mm) -> np.ndarray:
    """|k|^2 (cycles/mm)^2 on the rfft half-spectrum grid, float32, broadcast-built."""
    kx = np.fft.fftfreq(shape[0], d=voxel_size_mm[0]).astype(np.float32)[:, None, None]
    ky = np.fft.fftfreq(shape[1], d=voxel_size_mm[1]).astype(np.float32)[None, :, None]
    kz = np.fft.rfftfreq(shape[2], d=voxel_size_mm[2]).astype(np.float32)[None, None, :]
    return kx**2 + ky**2 + kz**2


def iron_gradient_ppm(labels: np.ndarray) -> np.ndarray:
    """Linear iron ramps along axis 1 inside the nuclei listed in `IRON_GRADIENT` (ppm)."""
    out = np.zeros(labels.shape, dtype=np.float32)
    for label, amplitude in IRON_GRADIENT.items():
        idx = np.nonzero(labels == label)
        if idx[0].size == 0:
            continue
        y = idx[1].astype(np.float32)
        half = max(float(y.max() - y.min()) / 2.0, 1.0)
        ramp = (y - y.mean()) / half
        out[idx] = amplitude * CHIREF_PPM[label] * ramp
    return out


def texture_ppm(labels: np.ndarray, voxel_size_mm, seed: int, scales_mm=(1.5, 5.0),
                iron_gradients: bool = True) -> np.ndarray:
    """Texture (ppm) to add to the per-label susceptibility.

    Args:
        labels: int (x, y, z) RC2 labels.
        voxel_size_mm: voxel size in mm.
        seed: random seed (same seed -> same texture).
        scales_mm: correlation scales of the random field (mm).
        iron_gradients: add the deep-grey-matter ramps.

    Returns:
        float32 (x, y, z) texture in ppm, zero in labels without texture (bone, air, ...).
    """
    rng = np.random.default_rng([int(seed), 0x7E27])
    field = correlated_field(labels.shape, voxel_size_mm, rng, scales_mm)
    std = np.zeros(17, dtype=np.float32)
    for label, value in TEXTURE_STD_PPB.items():
        std[label] = value * 1e-3
    field *= std[labels]
    if iron_gradients:
        field += iron_gradient_ppm(labels)
    return field
