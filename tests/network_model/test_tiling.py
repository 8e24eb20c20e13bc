"""Tiling arithmetic and blending, with numpy predictors (no TensorFlow): identities that must hold."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.network_model import tiling


def identity(field_batch, mask_batch):
    return field_batch


def box_blur(field_batch, mask_batch):
    """A local (3-voxel) operator: tiles differ from the whole volume only near tile borders."""
    import scipy.ndimage

    # zero boundary, like a 'same' convolution: tile and volume borders see zeros
    return scipy.ndimage.uniform_filter(field_batch, size=(1, 3, 3, 3, 1), mode="constant")


def test_ramp_weights_shape_floor_and_symmetry():
    w = tiling.ramp_weights(32, 8)
    assert w.shape == (32,) and w.dtype == np.float32
    assert np.allclose(w, w[::-1])
    assert w.min() >= tiling.WEIGHT_FLOOR and np.all(w[8:24] == 1)
    assert np.all(np.diff(w[:8]) > 0) and w[0] < 0.01  # smooth rise from ~0 over the overlap
    assert np.all(tiling.ramp_weights(32, 0) == 1)


@pytest.mark.parametrize("length,tile,overlap,divisor", [(64, 32, 16, 4), (100, 32, 8, 4), (32, 32, 16, 4),
                                                         (160, 96, 32, 16), (320, 96, 32, 16)])
def test_tile_starts_cover_with_overlap_on_divisor_grid(length, tile, overlap, divisor):
    starts = tiling.tile_starts(length, tile, overlap, divisor)
    assert starts[0] == 0 and starts[-1] == max(length - tile, 0)
    assert all(s % divisor == 0 for s in starts if s != length - tile) or length % divisor == 0
    covered = np.zeros(length, bool)
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # neighbours overlap at least as asked
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()


def test_identity_predictor_is_reproduced_exactly():
    rng = np.random.default_rng(0)
    field = rng.standard_normal((37, 30, 45)).astype(np.float32)
    mask = np.ones(field.shape, bool)
    mask[:3] = False
    out = tiling.predict_tiled(identity, field, mask, tile=16, overlap=8, divisor=4, batch_size=3)
    assert out.shape == field.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, field * mask, atol=1e-5)
    whole = tiling.predict_whole(identity, field, mask, divisor=8)
    np.testing.assert_allclose(whole, field * mask, atol=1e-6)


def test_local_operator_tiled_matches_whole():
    rng = np.random.default_rng(1)
    field = rng.standard_normal((40, 40, 40)).astype(np.float32)
    mask = np.ones(field.shape, bool)
    whole = tiling.predict_whole(box_blur, field, mask, divisor=4)
    tiled = tiling.predict_tiled(box_blur, field, mask, tile=16, overlap=8, divisor=4)
    # Tile borders (zeros outside the tile) only get ramp weights near the floor: small error.
    nrmse = np.linalg.norm(tiled - whole) / np.linalg.norm(whole)
    assert nrmse < 0.01
    # Without overlap the seams show: the blending is what makes it match.
    seams = tiling.predict_tiled(box_blur, field, mask, tile=16, overlap=0, divisor=4)
    assert np.linalg.norm(seams - whole) / np.linalg.norm(whole) > 5 * nrmse


def test_count_tiles_and_small_volume_shrinks_tile():
    assert tiling.count_tiles((320, 320, 320), 96, 32, 16) == 125
    assert tiling.count_tiles((10, 12, 9), 32, 16, 4) == 1
    out = tiling.predict_tiled(identity, np.ones((10, 12, 9), np.float32), np.ones((10, 12, 9)), 32, 16, 4)
    assert out.shape == (10, 12, 9)


@pytest.mark.parametrize("tile,overlap,divisor", [(30, 8, 4), (32, 32, 4), (32, -1, 4), (2, 0, 4)])
def test_bad_tiling_is_input_error(tile, overlap, divisor):
    with pytest.raises(InputError):
        tiling.check_tiling(tile, overlap, divisor)


def test_shape_mismatch_is_input_error():
    with pytest.raises(InputError, match="shape mismatch"):
        tiling.predict_tiled(identity, np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), 8, 0, 4)
