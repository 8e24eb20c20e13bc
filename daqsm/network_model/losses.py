"""Losses of the method: L1 on the source domain, NDI data consistency and anisotropic TV on the target.

Pre-training: L = L1 + lambda_ndi * NDI + lambda_tv * TV. Fine-tuning: L = NDI + lambda_tv * TV.
Both compositions live here (`pretrain_terms`, `finetune_terms`); the step scripts only call them.

Every loss returns one value per sample, shape (batch,): the caller averages over the batch (and
divides by the number of replicas under a distribution strategy), so a mirrored run and a
single-device run give the same number.

Units:
    chi and field tensors are in ppm. `l1_loss` and `tv_loss` are reported in **network units**
    (chi * label_scale), as in the original method, so its weights L1 : TV = 1 : 0.05 carry over.
    `ndi_loss` needs **radians**: exp(i phi) of a field in ppm is meaningless, so the measured field
    and the simulated field D * chi are multiplied by `phase_rad_per_ppm` = 2 pi gamma_bar B0 TE
    (daqsm.training_data.units.rad_per_ppm; 3 T, TE 25 ms: 20.06 rad/ppm).

Balance of the terms (why NDI is normalised):
    The original weights (L1 : TV : NDI = 1 : 0.05 : 20 in pre-training, NDI : TV = 1 : 0.002 in
    fine-tuning) belong to an NDI whose argument was 100 * ppm. With the true phase s * ppm the
    small-residual term scales by (s / 100)^2 (0.05 at 7 T, TE 12 ms), so the data term would lose its
    weight and a lambda would mean something else at every B0 and TE. `ndi_loss` therefore multiplies
    the phase term by (NDI_REFERENCE_RAD_PER_PPM / s)^2: for small residuals it equals
    100^2 * mean(W^2 (f - D chi)^2) whatever B0 and TE are, the original weights keep their meaning,
    and the cosine still sees the true phase (wraps behave as in the data).

Normalisation (every term is a mean over the mask):
    L1 and NDI average over the mask voxels; TV sums the forward differences whose two voxels are
    both inside the mask and divides by the mask voxel count, so zero-padding a map (more
    background) does not change it, and the jump from the brain to the zeroed background (which
    measures the edge value, not its variation) is not penalised.
"""

from __future__ import annotations

import tensorflow as tf

#: Phase scale (rad per ppm) of the original method's NDI argument (100 * ppm): the normalisation
#: reference that keeps its loss weights (daqsm.training_data.units.rad_per_ppm gives the true scale).
NDI_REFERENCE_RAD_PER_PPM = 100.0


def _squeeze_channel(x):
    """(batch, x, y, z, 1) -> (batch, x, y, z) float32; a 4-D tensor is returned unchanged.

    Reduced-precision network outputs are cast: the dipole FFT and the loss sums run in float32.
    """
    if isinstance(x, (tf.Tensor, tf.Variable)) and x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    x = tf.convert_to_tensor(x, tf.float32)
    return x[..., 0] if len(x.shape) == 5 else x


def masked_mean(values, mask):
    """Mean of `values` over the mask voxels of each sample -> (batch,). Empty masks give 0."""
    values, mask = _squeeze_channel(values), _squeeze_channel(mask)
    total = tf.reduce_sum(values * mask, axis=[1, 2, 3])
    return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=[1, 2, 3]))


def l1_loss(chi_ppm, chi_label_ppm, mask, label_scale: float = 1.0):
    """Mean absolute error inside the mask, in network units.

    Args:
        chi_ppm: float32 (batch, x, y, z, 1), prediction in ppm.
        chi_label_ppm: float32 (batch, x, y, z, 1), label in ppm.
        mask: float32 (batch, x, y, z, 1), 0/1.
        label_scale: network units per ppm.

    Returns:
        float32 (batch,).
    """
    diff = tf.abs(_squeeze_channel(chi_ppm) - _squeeze_channel(chi_label_ppm))
    return masked_mean(diff, mask) * label_scale


def ndi_loss(chi_ppm, field_ppm, weight, mask, dipole, phase_rad_per_ppm,
             reference_rad_per_ppm: float | None = NDI_REFERENCE_RAD_PER_PPM):
    """Nonlinear data consistency, mean over the mask of W^2 |exp(i y) - exp(i D*chi)|^2, normalised.

    With a = s * field and b = s * (D * chi) (radians, s = phase_rad_per_ppm),
    |e^{ia} - e^{ib}|^2 = 2 - 2 cos(a - b), so the loss is insensitive to 2 pi wraps of the measured
    phase and its gradient w.r.t. b is -2 W^2 sin(a - b) (per voxel, before the mean). The mean is
    multiplied by (reference_rad_per_ppm / s)^2 (module docstring): for small residuals the loss is
    reference^2 * mean(W^2 (f - D chi)^2), the same at 3 T / TE 25 ms and 7 T / TE 12 ms.

    Args:
        chi_ppm: float32 (batch, x, y, z, 1), network output in ppm.
        field_ppm: float32 (batch, x, y, z, 1), measured local field in ppm.
        weight: float32 (batch, x, y, z, 1), data weight W in [0, 1] (zero outside the mask).
        mask: float32 (batch, x, y, z, 1), normalises the mean (voxels counted).
        dipole: callable (batch, x, y, z) ppm -> (batch, x, y, z) ppm, e.g.
            daqsm.training_data.dipole.dipole_operator_tf(shape, voxel_size_mm, b0_dir, pad).
        phase_rad_per_ppm: float or float32 (batch,) radians per ppm.
        reference_rad_per_ppm: normalisation reference (default 100, the original's argument scale);
            None gives the raw phase-domain mean.

    Returns:
        float32 (batch,).
    """
    scale = tf.convert_to_tensor(phase_rad_per_ppm, tf.float32)
    per_sample = scale
    if scale.shape.rank == 1:
        scale = scale[:, None, None, None]
    simulated = dipole(_squeeze_channel(chi_ppm))
    delta = scale * (_squeeze_channel(field_ppm) - simulated)
    w = _squeeze_channel(weight)
    raw = masked_mean(tf.square(w) * (2.0 - 2.0 * tf.cos(delta)), mask)
    if reference_rad_per_ppm is None:
        return raw
    return raw * tf.square(float(reference_rad_per_ppm) / per_sample)


def tv_loss(chi_ppm, mask, label_scale: float = 1.0):
    """Anisotropic total variation inside the mask, per mask voxel, network units.

    TV = sum over axes of sum |G chi| over the forward differences whose two voxels are inside the
    mask, divided by the number of mask voxels, times label_scale (module docstring: why inside the
    mask). With an all-ones mask: a constant gives 0; a ramp a*i along one axis of n voxels gives
    a * (n - 1) / n * label_scale. Zero-padding chi and mask leaves the value unchanged.

    Args:
        chi_ppm: float32 (batch, x, y, z, 1) in ppm.
        mask: float32 (batch, x, y, z, 1), 0/1.
        label_scale: network units per ppm.

    Returns:
        float32 (batch,); 0 for an empty mask.
    """
    x, m = _squeeze_channel(chi_ppm), _squeeze_channel(mask)
    total = (tf.reduce_sum(tf.abs(x[:, 1:] - x[:, :-1]) * m[:, 1:] * m[:, :-1], axis=[1, 2, 3])
             + tf.reduce_sum(tf.abs(x[:, :, 1:] - x[:, :, :-1]) * m[:, :, 1:] * m[:, :, :-1], axis=[1, 2, 3])
             + tf.reduce_sum(tf.abs(x[:, :, :, 1:] - x[:, :, :, :-1]) * m[:, :, :, 1:] * m[:, :, :, :-1],
                             axis=[1, 2, 3]))
    return tf.math.divide_no_nan(total, tf.reduce_sum(m, axis=[1, 2, 3])) * label_scale


# --- compositions of the two training steps (daqsm/network_model/train_model, model_finetune) ----------


def pretrain_loss(l1, ndi, tv, lambda_ndi: float, lambda_tv: float):
    """Step 4's objective: L = L1(source) + lambda_ndi * NDI(target) + lambda_tv * TV(target).

    Args:
        l1, ndi, tv: the batch-mean terms (scalars, tensors or numpy), as `l1_loss`, `ndi_loss`,
            `tv_loss` return them averaged.
        lambda_ndi, lambda_tv: the weights (original 20 and 0.05, see the module doc).
    """
    return l1 + lambda_ndi * ndi + lambda_tv * tv


def pretrain_terms(l1, ndi, tv, lambda_ndi: float, lambda_tv: float) -> dict:
    """Step 4's logged terms: loss, l1, ndi, tv and the weighted ndi_weighted, tv_weighted."""
    return {"loss": pretrain_loss(l1, ndi, tv, lambda_ndi, lambda_tv), "l1": l1, "ndi": ndi, "tv": tv,
            "ndi_weighted": lambda_ndi * ndi, "tv_weighted": lambda_tv * tv}


def finetune_loss(ndi, tv, lambda_tv: float):
    """Step 5's objective: L = NDI(target) + lambda_tv * TV (original 0.002 at SNR1, 0.001 at SNR2)."""
    return ndi + lambda_tv * tv


def finetune_terms(ndi, tv, lambda_tv: float) -> dict:
    """Step 5's logged terms: loss, ndi, tv and tv_weighted."""
    return {"loss": finetune_loss(ndi, tv, lambda_tv), "ndi": ndi, "tv": tv, "tv_weighted": lambda_tv * tv}


def ndi_excess(ndi_per_sample, floor_per_sample):
    """The data term that cannot over-fit: max(NDI - floor, 0) per sample (a discrepancy hinge).

    Why: the true chi does not bring NDI to 0 on a measured field (noise, model error such as
    intra-voxel dephasing, sources outside a crop); pushing NDI below the level the truth reaches
    fits those instead of susceptibility. Above the floor the gradient is NDI's; below it, zero.

    Args:
        ndi_per_sample: float32 (batch,), `ndi_loss`.
        floor_per_sample: float32 (batch,) or scalar, the level the truth is expected to reach.
    """
    return tf.nn.relu(ndi_per_sample - tf.cast(floor_per_sample, tf.float32))


def pretrain_terms_floored(l1, ndi, excess, floor, tv, lambda_ndi: float, lambda_tv: float) -> dict:
    """Step 4's logged terms with a floored data term: L = L1 + lambda_ndi * excess + lambda_tv * TV.

    `ndi` (the raw batch-mean NDI) and `ndi_floor` (the batch-mean floor) are logged side by side;
    `ndi_weighted` = lambda_ndi * excess is what the loss holds.
    """
    terms = pretrain_terms(l1, excess, tv, lambda_ndi, lambda_tv)
    return {**terms, "ndi": ndi, "ndi_floor": floor, "ndi_excess": excess}
