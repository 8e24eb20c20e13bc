"""DomainSpecificBatchNormalization: per-domain statistics, inference mode, serialisation."""
from __future__ import annotations

import numpy as np
import pytest

from tests import requires

pytestmark = requires.tensorflow


@pytest.fixture(autouse=True, scope="module")
def _tensorflow_imports():
    """TensorFlow and the modules that import it, imported when these tests run, not while pytest collects."""
    global keras, tf, DomainSpecificBatchNormalization
    import keras
    import tensorflow as tf

    from daqsm.network_model.dsbn import DomainSpecificBatchNormalization


def _data(mean, seed, shape=(4, 4, 4, 4, 3)):
    return (np.random.default_rng(seed).standard_normal(shape) * 2.0 + mean).astype(np.float32)


def test_weights_per_domain():
    layer = DomainSpecificBatchNormalization(num_domains=3)
    layer.build((None, 4, 4, 4, 5))
    assert len(layer.trainable_weights) == 6      # gamma, beta per domain
    assert len(layer.non_trainable_weights) == 6  # moving mean, variance per domain
    assert sum(int(np.prod(w.shape)) for w in layer.weights) == 3 * 4 * 5


def test_each_domain_tracks_its_own_statistics():
    layer = DomainSpecificBatchNormalization(num_domains=2, momentum=0.9)
    steps = 5
    for k in range(steps):
        layer(_data(5.0, k), domain=0, training=True)
        layer(_data(-3.0, 100 + k), domain=1, training=True)
    mean0, mean1 = (np.asarray(v) for v in layer.moving_means)
    # moving = m^k * 0 + (1 - m^k) * batch mean  (batch means ~ 5 and -3 within sampling noise)
    expected = 1 - 0.9**steps
    np.testing.assert_allclose(mean0, 5.0 * expected, atol=0.15)
    np.testing.assert_allclose(mean1, -3.0 * expected, atol=0.15)
    var0 = np.asarray(layer.moving_variances[0])
    np.testing.assert_allclose(var0, 0.9**steps + 4.0 * expected, atol=0.4)
    # domain 0 calls never touch domain 1 and vice versa: one more domain-0 call leaves domain 1 as is
    layer(_data(5.0, 50), domain=0, training=True)
    np.testing.assert_array_equal(np.asarray(layer.moving_means[1]), mean1)


def test_inference_uses_the_chosen_domain():
    layer = DomainSpecificBatchNormalization(num_domains=2, momentum=0.0, epsilon=1e-6)
    x0, x1 = _data(5.0, 1), _data(-3.0, 2)
    layer(x0, domain=0, training=True)
    layer(x1, domain=1, training=True)  # momentum 0: moving stats = these batch stats
    out = np.asarray(layer(x1, domain=1, training=False))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2, 3)), 1.0, atol=1e-3)
    wrong = np.asarray(layer(x1, domain=0, training=False))
    assert np.all(wrong.mean(axis=(0, 1, 2, 3)) < -3.0)  # domain 0 stats put mean -3 data at ~ -4 sd
    layer.trainable = False  # Keras rule: a frozen BN runs in inference mode even with training=True
    np.testing.assert_allclose(np.asarray(layer(x1, domain=1, training=True)), out, atol=1e-6)


def test_tf_function_traces_each_domain():
    layer = DomainSpecificBatchNormalization(num_domains=2)
    x = tf.constant(_data(1.0, 3))

    @tf.function
    def both(x):
        return layer(x, domain=0, training=True), layer(x, domain=1, training=False)

    a, b = both(x)
    assert a.shape == b.shape == x.shape
    assert not np.allclose(np.asarray(layer.moving_means[0]), 0.0)
    np.testing.assert_array_equal(np.asarray(layer.moving_means[1]), 0.0)


def test_bad_domain():
    layer = DomainSpecificBatchNormalization(num_domains=2)
    with pytest.raises(ValueError, match="domain"):
        layer(_data(0.0, 0), domain=2)


def test_save_load_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 4, 3))
    layer = DomainSpecificBatchNormalization(num_domains=2, momentum=0.5, name="dsbn")
    model = keras.Model(inputs, layer(inputs, domain=1))
    layer(_data(5.0, 4), domain=0, training=True)
    layer(_data(-3.0, 5), domain=1, training=True)
    layer.gammas[1].assign(np.array([0.5, 2.0, 3.0], np.float32))
    path = tmp_path / "dsbn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _data(-2.0, 6)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    cfg = loaded.get_layer("dsbn").get_config()
    assert cfg["num_domains"] == 2 and cfg["momentum"] == 0.5


def _masked_reference(x, mask):
    """numpy: per-channel mean / (biased) variance over the voxels where mask > 0, all samples."""
    inside = np.broadcast_to(mask > 0, x.shape)
    chans = x.shape[-1]
    values = x[inside].reshape(-1, chans)
    return values.mean(axis=0), values.var(axis=0)


def _half_mask(shape=(4, 4, 4, 4, 1), seed=0):
    mask = (np.random.default_rng(seed).random(shape) < 0.4).astype(np.float32)
    mask[0, 0, 0, 0, 0] = 1.0
    return mask


def test_training_moments_over_the_mask_only():
    # background far from the brain's values: unmasked moments would be pulled to it
    x = _data(5.0, 7)
    mask = _half_mask()
    x = np.where(mask > 0, x, -40.0).astype(np.float32)
    layer = DomainSpecificBatchNormalization(num_domains=2, momentum=0.0, epsilon=1e-6)
    out = np.asarray(layer(x, domain=1, training=True, mask=mask))
    mean, var = _masked_reference(x, mask)
    # momentum 0: the moving statistics are this batch's masked moments
    np.testing.assert_allclose(np.asarray(layer.moving_means[1]), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variances[1]), var, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(layer.moving_means[0]), 0.0)  # the other domain untouched
    # no mask: all voxels, as keras' BatchNormalization
    plain = DomainSpecificBatchNormalization(num_domains=2, momentum=0.0)
    plain(x, domain=1, training=True)
    np.testing.assert_allclose(np.asarray(plain.moving_means[1]), x.mean(axis=(0, 1, 2, 3)), rtol=1e-5)


def test_masked_moments_ignore_the_background_fraction():
    # the same brain voxels with more zero background (a larger crop) give the same statistics
    x = _data(2.0, 9, shape=(1, 4, 4, 4, 2))
    mask = np.ones((1, 4, 4, 4, 1), np.float32)
    big_x = np.zeros((1, 8, 8, 8, 2), np.float32)
    big_m = np.zeros((1, 8, 8, 8, 1), np.float32)
    big_x[:, 2:6, 2:6, 2:6], big_m[:, 2:6, 2:6, 2:6] = x, mask
    small, big = (DomainSpecificBatchNormalization(momentum=0.0) for _ in range(2))
    small(x, domain=0, training=True, mask=mask)
    big(big_x, domain=0, training=True, mask=big_m)
    for a, b in ((small.moving_means[0], big.moving_means[0]), (small.moving_variances[0], big.moving_variances[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

