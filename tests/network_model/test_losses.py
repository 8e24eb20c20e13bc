"""Losses: NDI identities and gradient, TV of constants and ramps, L1."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.training_data.dipole import dipole_operator_tf, forward_field
from daqsm.training_data.units import rad_per_ppm
from tests import requires

pytestmark = requires.tensorflow


@pytest.fixture(autouse=True, scope="module")
def _tensorflow_imports():
    """TensorFlow and the modules that import it, imported when these tests run, not while pytest collects."""
    global tf, NDI_REFERENCE_RAD_PER_PPM, l1_loss, ndi_loss, tv_loss
    import tensorflow as tf

    from daqsm.network_model.losses import NDI_REFERENCE_RAD_PER_PPM, l1_loss, ndi_loss, tv_loss


def _vol(a):
    return tf.constant(np.asarray(a, np.float32)[None, ..., None])


def _chi(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32) * 0.05


def test_ndi_zero_for_consistent_data():
    chi = _chi()
    dipole = dipole_operator_tf(chi.shape, (1.0, 1.2, 0.9), (0.2, 0.1, 1.0))
    field = forward_field(chi, (1.0, 1.2, 0.9), (0.2, 0.1, 1.0))
    ones = np.ones_like(chi)
    loss = ndi_loss(_vol(chi), _vol(field), _vol(ones), _vol(ones), dipole, rad_per_ppm(3.0, 0.025))
    assert float(loss[0]) < 1e-7


def test_ndi_closed_form_and_wrap_invariance():
    # identity operator ("dipole" = id) isolates the phase term: 2 - 2 cos(scale (f - chi)) per voxel
    rng = np.random.default_rng(1)
    chi, field = rng.uniform(-0.2, 0.2, (2, 2, 3, 4, 5)).astype(np.float32)
    weight = rng.uniform(0, 1, (2, 3, 4, 5)).astype(np.float32)
    mask = np.ones_like(chi)
    scale = 20.0
    expected = np.mean(weight**2 * (2 - 2 * np.cos(scale * (field - chi))), axis=(1, 2, 3))
    raw = ndi_loss(chi[..., None], field[..., None], weight[..., None], mask[..., None], tf.identity, scale,
                   reference_rad_per_ppm=None)
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-5)
    got = ndi_loss(chi[..., None], field[..., None], weight[..., None], mask[..., None], tf.identity, scale)
    np.testing.assert_allclose(got.numpy(), expected * (NDI_REFERENCE_RAD_PER_PPM / scale) ** 2, rtol=1e-5)
    wrapped = field + np.float32(2 * np.pi / scale)  # a 2 pi phase wrap of the measurement
    got2 = ndi_loss(chi[..., None], wrapped[..., None], weight[..., None], mask[..., None], tf.identity, scale,
                    reference_rad_per_ppm=None)
    np.testing.assert_allclose(got2.numpy(), expected, rtol=1e-3, atol=1e-5)


def test_ndi_same_ppm_residual_same_loss_at_3t_and_7t():
    # a lambda must mean the same at every B0 and TE: small-angle residual of 0.002 ppm
    rng = np.random.default_rng(7)
    residual = rng.uniform(-0.002, 0.002, (1, 6, 6, 6)).astype(np.float32)
    weight = rng.uniform(0.3, 1, (1, 6, 6, 6)).astype(np.float32)
    zeros, ones = np.zeros_like(residual), np.ones_like(residual)
    at_3t = ndi_loss(zeros, residual, weight, ones, tf.identity, rad_per_ppm(3.0, 0.025)).numpy()
    at_7t = ndi_loss(zeros, residual, weight, ones, tf.identity, rad_per_ppm(7.0, 0.012)).numpy()
    np.testing.assert_allclose(at_3t, at_7t, rtol=2e-3)
    # and it is the original's scale: 100^2 * mean(W^2 residual^2)
    np.testing.assert_allclose(at_7t, [1e4 * np.mean(weight**2 * residual**2)], rtol=2e-3)
    raw_3t = ndi_loss(zeros, residual, weight, ones, tf.identity, rad_per_ppm(3.0, 0.025), None).numpy()
    raw_7t = ndi_loss(zeros, residual, weight, ones, tf.identity, rad_per_ppm(7.0, 0.012), None).numpy()
    assert raw_3t[0] / raw_7t[0] > 0.75  # the raw phase term does depend on B0 and TE (20.06 vs 22.47 rad/ppm)
    assert abs(raw_3t[0] / raw_7t[0] - 1) > 0.15


def test_ndi_masked_mean_counts_mask_voxels():
    chi = np.zeros((1, 4, 4, 4, 1), np.float32)
    field = np.full_like(chi, np.pi / 2 / 10.0)  # phase difference pi/2 -> 2 - 2 cos = 2
    mask = np.zeros_like(chi)
    mask[:, :2] = 1
    got = ndi_loss(chi, field, mask, mask, tf.identity, 10.0, reference_rad_per_ppm=None)
    np.testing.assert_allclose(got.numpy(), [2.0], rtol=1e-5)


def test_ndi_gradient_matches_finite_differences():
    n = 6
    chi = _chi(n, 2).astype(np.float64)
    field = forward_field(_chi(n, 3)).astype(np.float32)
    weight = np.random.default_rng(4).uniform(0.2, 1, (n, n, n)).astype(np.float32)
    ones = np.ones_like(weight)
    dipole = dipole_operator_tf((n, n, n), (1.0, 1.0, 1.5), (0.0, 0.3, 1.0))
    scale = 20.0

    def loss(c):  # c: (1, n, n, n, 1) tensor or array
        return ndi_loss(c, _vol(field), _vol(weight), _vol(ones), dipole, scale)[0]

    x = tf.Variable(_vol(chi))
    with tf.GradientTape() as tape:
        value = loss(x)
    grad = tape.gradient(value, x).numpy()[0, ..., 0]
    rng = np.random.default_rng(5)
    eps = 1e-3
    for _ in range(5):
        i = tuple(rng.integers(0, n, 3))
        plus, minus = chi.copy(), chi.copy()
        plus[i] += eps
        minus[i] -= eps
        fd = (float(loss(_vol(plus))) - float(loss(_vol(minus)))) / (2 * eps)
        np.testing.assert_allclose(grad[i], fd, rtol=2e-2, atol=2e-5)


def test_tv_constant_and_ramp():
    ones = _vol(np.ones((5, 6, 7)))
    np.testing.assert_allclose(tv_loss(_vol(np.full((5, 6, 7), 3.0)), ones).numpy(), [0.0])
    n, a = 8, 0.25
    ramp = np.broadcast_to(a * np.arange(n)[None, :, None], (4, n, 5))
    ones = _vol(np.ones(ramp.shape))
    np.testing.assert_allclose(tv_loss(_vol(ramp), ones).numpy(), [a * (n - 1) / n], rtol=1e-6)
    both = ramp + 2 * a * np.arange(5)[None, None, :]  # slopes a along y, 2a along z
    expected = a * (n - 1) / n + 2 * a * 4 / 5
    np.testing.assert_allclose(tv_loss(_vol(both), ones, label_scale=3.0).numpy(), [3.0 * expected], rtol=1e-5)


def test_tv_does_not_depend_on_the_background():
    rng = np.random.default_rng(3)
    mask = np.zeros((12, 12, 12), np.float32)
    mask[2:10, 3:9, 2:11] = 1
    chi = (rng.standard_normal(mask.shape).astype(np.float32) * 0.05 + 0.1) * mask  # zero outside, edge jump
    tv = tv_loss(_vol(chi), _vol(mask)).numpy()
    padded = tv_loss(_vol(np.pad(chi, 16)), _vol(np.pad(mask, 16))).numpy()
    np.testing.assert_allclose(padded, tv, rtol=1e-6)
    # the jump to the zeroed background is not counted: a constant inside the mask has TV 0
    np.testing.assert_allclose(tv_loss(_vol(0.3 * mask), _vol(mask)).numpy(), [0.0], atol=1e-8)
    inside = mask.astype(bool)
    expected = sum(np.abs(np.diff(chi, axis=ax))[np.logical_and(np.take(inside, range(1, 12), ax),
                                                                np.take(inside, range(11), ax))].sum()
                   for ax in range(3)) / mask.sum()
    np.testing.assert_allclose(tv, [expected], rtol=1e-5)


def test_l1_inside_mask_in_network_units():
    pred = np.zeros((2, 4, 4, 4, 1), np.float32)
    label = np.full_like(pred, 0.3)
    mask = np.zeros_like(pred)
    mask[0, :2] = 1
    mask[1] = 1
    label[0, 2:] = 100.0  # outside the mask: ignored
    np.testing.assert_allclose(l1_loss(pred, label, mask, label_scale=10.0).numpy(), [3.0, 3.0], rtol=1e-6)


def test_ndi_excess_is_a_hinge_per_sample():
    from daqsm.network_model.losses import ndi_excess, pretrain_terms_floored

    ndi = tf.constant([0.05, 0.01, 0.03])
    floor = tf.constant([0.02, 0.02, 0.03])
    np.testing.assert_allclose(ndi_excess(ndi, floor).numpy(), [0.03, 0.0, 0.0], atol=1e-7)
    with tf.GradientTape() as tape:
        tape.watch(ndi)
        total = tf.reduce_sum(ndi_excess(ndi, floor))
    np.testing.assert_array_equal(tape.gradient(total, ndi).numpy(), [1.0, 0.0, 0.0])  # below the floor: no pull
    terms = pretrain_terms_floored(1.0, 0.05, 0.03, 0.02, 2.0, lambda_ndi=20.0, lambda_tv=0.05)
    assert terms["loss"] == pytest.approx(1.0 + 20.0 * 0.03 + 0.05 * 2.0)
    assert terms["ndi"] == 0.05 and terms["ndi_floor"] == 0.02 and terms["ndi_weighted"] == pytest.approx(0.6)
