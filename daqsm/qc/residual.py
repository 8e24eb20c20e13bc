"""QC: the weighted data-consistency residual map of a reconstruction, in ppm, and its one-line summary.

The NDI data term of fine-tuning (daqsm.network_model.losses.ndi_loss) is mean W^2 |e^{i s f} - e^{i s D*chi}|^2
with s = phase_rad_per_ppm. Its per-voxel root, divided by s, is a field-equivalent residual in ppm:

    r = W |e^{i s f} - e^{i s D*chi}| / s = W * 2 |sin(s (f - D*chi) / 2)| / s   (~ W |f - D*chi| when small)

so mean(r^2) * s^2 over the mask is the un-normalised NDI term, and where s is unknown (inference
without B0/TE) r is the small-angle form W |f - D*chi| itself. D*chi is the project's one forward model
(daqsm.training_data.dipole.forward_field, same kernel and padding as the loss). Zero outside the mask.

Summary: the residual's RMS over the mask against the noise estimate of the field
(daqsm.qc.noise.estimate_noise_ppm, std of W x field noise): a ratio near 1 means the map explains
the field to the noise level; >> 1, structure the reconstruction does not explain (look at the map).
"""
from __future__ import annotations

import numpy as np

from daqsm.errors import shape_mismatch
from daqsm.qc.noise import estimate_noise_ppm
from daqsm.training_data.dipole import forward_field


def residual_map_ppm(chi_ppm, field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0),
                     b0_dir=(0.0, 0.0, 1.0), pad="auto", phase_rad_per_ppm: float | None = None) -> np.ndarray:
    """Weighted data-consistency residual (module docstring).

    Args:
        chi_ppm: float (x, y, z) reconstruction in ppm.
        field_ppm: float (x, y, z) measured local field in ppm.
        mask: (x, y, z) 0/1 brain mask.
        weight: (x, y, z) data weight W in [0, 1], or None (the mask).
        voxel_size_mm, b0_dir, pad: the dipole model's geometry and padding (daqsm.training_data.dipole).
        phase_rad_per_ppm: s; None gives the small-angle form W |f - D*chi|.

    Returns:
        float32 (x, y, z) residual in ppm, 0 outside the mask.
    """
    chi = np.asarray(chi_ppm, np.float32)
    field = np.asarray(field_ppm, np.float32)
    inside = np.asarray(mask).astype(bool)
    for name, a in (("field", field), ("mask", inside)):
        if a.shape != chi.shape:
            raise shape_mismatch(name, a.shape, "reconstruction", chi.shape)
    w = inside.astype(np.float32) if weight is None else np.asarray(weight, np.float32)
    if w.shape != chi.shape:
        raise shape_mismatch("weight", w.shape, "reconstruction", chi.shape)
    delta = field.astype(np.float64) - forward_field(chi * inside, voxel_size_mm, b0_dir, pad)
    if phase_rad_per_ppm:
        s = float(phase_rad_per_ppm)
        magnitude = 2.0 * np.abs(np.sin(s * delta / 2.0)) / s
    else:
        magnitude = np.abs(delta)
    return (w * magnitude * inside).astype(np.float32)


def residual_summary(residual_ppm, field_ppm, mask, weight=None, noise_ppm: float | None = None) -> dict:
    """RMS of the residual over the mask vs the field's noise estimate; includes a one-line `Summary`."""
    inside = np.asarray(mask).astype(bool)
    rms = float(np.sqrt(np.mean(np.square(np.asarray(residual_ppm, np.float64)[inside]))))
    sigma = float(noise_ppm) if noise_ppm is not None else estimate_noise_ppm(field_ppm, inside, weight)
    ratio = rms / sigma if sigma > 0 else None
    line = f"weighted residual RMS {rms:.4g} ppm" + (
        f" = {ratio:.3g} x the noise estimate {sigma:.4g} ppm" if ratio is not None else " (noise estimate 0)")
    return {"ResidualRmsPpm": rms, "NoisePpm": sigma, "ResidualOverNoise": ratio,
            "NoiseEstimated": noise_ppm is None, "Summary": line}


def residual_in_box(chi_ppm, field_ppm, mask, weight, voxel_size_mm, b0_dir, pad, phase_rad_per_ppm, box,
                    noise_ppm: float | None = None):
    """`residual_map_ppm` computed on `box` (slices holding the mask) and returned on the full grid, with its
    `residual_summary`.

    W is 0 outside the mask and chi is 0 outside the box, so only the box's padded FFT is needed: peak
    memory is set by the brain, not the grid (benchmarks/bench_qc.py). The box needs a margin of a few
    voxels (the noise estimate's 2x2x2 neighbourhoods stay inside it).
    """
    weight_b = None if weight is None else np.asarray(weight)[box]
    mask_b = np.asarray(mask)[box]
    residual_b = residual_map_ppm(np.asarray(chi_ppm)[box], np.asarray(field_ppm)[box], mask_b, weight_b,
                                  voxel_size_mm, b0_dir, pad, phase_rad_per_ppm)
    summary = residual_summary(residual_b, np.asarray(field_ppm)[box], mask_b, weight_b, noise_ppm)
    residual = np.zeros(np.shape(chi_ppm), np.float32)
    residual[box] = residual_b
    return residual, summary
