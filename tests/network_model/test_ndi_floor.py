"""Data consistency needs the field's sources: the true chi's NDI on a crop falls as the crop grows."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.training_data.dipole import dipole_operator_tf, forward_field
from daqsm.training_data.patches import extract_patch, grid_origins
from tests import requires
from tests.network_model.synthetic import ball_mask, smooth_chi

pytestmark = requires.tensorflow


@pytest.fixture(autouse=True, scope="module")
def _tensorflow_imports():
    """TensorFlow and the modules that import it, imported when these tests run, not while pytest collects."""
    global tf, ndi_loss
    import tensorflow as tf

    from daqsm.network_model.losses import ndi_loss


def true_chi_ndi(chi, field, mask, crop: int, pad: str = "none") -> float:
    """Mean over the grid crops (>= half brain) of the true chi's normalised NDI on the crop."""
    n = chi.shape[0]
    dipole = dipole_operator_tf((crop,) * 3, pad=pad)
    values = []
    for origin in grid_origins(chi.shape, (crop,) * 3, (max(crop // 2, 1),) * 3):
        m = extract_patch(mask, origin, (crop,) * 3)
        if m.mean() < 0.5 and crop < n:
            continue
        c, f = (extract_patch(a, origin, (crop,) * 3) for a in (chi, field))
        as5 = [tf.constant(a[None, ..., None]) for a in (c, f, m)]
        values.append(float(ndi_loss(as5[0], as5[1], as5[2], as5[2], dipole, 22.47)[0]))
    return float(np.mean(values))


def test_true_chi_ndi_floor_falls_with_crop_size():
    n = 48
    mask = ball_mask(n, 0.45)
    chi = smooth_chi(n, 0, amplitude_ppm=0.1)
    chi[30:33, 20:23, 24:27] = 1.0  # a strong source: its field reaches far beyond it
    chi *= mask
    field = forward_field(chi, pad="auto") * mask  # the measured local field: sources everywhere in the brain
    floors = [true_chi_ndi(chi, field, mask, c) for c in (12, 24, 48)]
    assert floors[0] > 1.5 * floors[1] > 0
    assert floors[1] > 1.5 * floors[2]
    # the whole (padded) volume holds every source: the truth is consistent up to float rounding
    assert true_chi_ndi(chi, field, mask, 48, pad="auto") < 1e-3 * floors[0]
