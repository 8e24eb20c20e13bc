"""3-D U-Net with DSBN: architecture, shared weights across domains, target-model export."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.training_data.dipole import forward_field
from tests import requires
from tests.network_model.synthetic import ball_mask, smooth_chi

pytestmark = requires.tensorflow


@pytest.fixture(autouse=True, scope="module")
def _tensorflow_imports():
    """TensorFlow and the modules that import it, imported when these tests run, not while pytest collects."""
    global keras, DomainAdaptiveUNet, build_target_model, describe_target_model, export_target_model
    import keras

    from daqsm.network_model.unet import DomainAdaptiveUNet, build_target_model, describe_target_model, export_target_model


def _conv_params(cin, cout, k=3):
    return k**3 * cin * cout + cout


def _expected_params(depth, f):
    """Conv weights of the U-Net plus BN (gamma, beta, mean, var per channel per domain)."""
    convs, bn_channels, cin = 0, 0, 2
    for lvl in range(depth + 1):  # encoder levels and bottleneck
        cout = f * 2**lvl
        convs += _conv_params(cin, cout) + _conv_params(cout, cout)
        bn_channels += 2 * cout
        cin = cout
    for lvl in reversed(range(depth)):
        cout = f * 2**lvl
        convs += _conv_params(cin + cout, cout) + _conv_params(cout, cout)
        bn_channels += 2 * cout
        cin = cout
    return convs + _conv_params(cin, 1, k=1), bn_channels


@pytest.mark.parametrize("depth,filters", [(4, 16), (2, 4)])
def test_parameter_count(depth, filters):
    model = DomainAdaptiveUNet(depth, filters).build_for()
    conv, bn = _expected_params(depth, filters)
    assert model.count_params() == conv + 2 * 4 * bn  # two domains
    target = build_target_model(depth, filters)
    assert target.count_params() == conv + 4 * bn


def _inputs(n=16, seed=0):
    chi = smooth_chi(n, seed)
    mask = ball_mask(n)
    return forward_field(chi)[None, ..., None], mask[None, ..., None]


def test_domains_share_convolutions_only():
    model = DomainAdaptiveUNet(2, 4).build_for()
    field, mask = _inputs()
    a = np.asarray(model([field, mask], domain=0, training=False))
    b = np.asarray(model([field, mask], domain=1, training=False))
    np.testing.assert_array_equal(a, b)  # fresh BN: both domains identical
    model.norms["enc0_conv0"].betas[1].assign(np.full(4, 0.5, np.float32))
    b = np.asarray(model([field, mask], domain=1, training=False))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(np.asarray(model([field, mask], domain=0, training=False)), a)
    assert np.all(b[mask == 0] == 0)  # output masked


def test_shape_must_divide():
    model = DomainAdaptiveUNet(2, 4)
    x = np.zeros((1, 10, 16, 16, 1), np.float32)
    with pytest.raises(ValueError, match="divisible"):
        model([x, x], domain=0)


def test_export_reproduces_target_output(tmp_path):
    model = DomainAdaptiveUNet(2, 4, input_scale=50.0, label_scale=10.0).build_for()
    field, mask = _inputs()
    for seed in range(3):  # move the BN statistics of both domains apart
        f, m = _inputs(seed=seed + 1)
        model([f * (seed + 1), m], domain=1, training=True)
        model([-f, m], domain=0, training=True)
    expected = np.asarray(model([field, mask], domain=1, training=False))
    target = export_target_model(model, domain=1)
    np.testing.assert_allclose(np.asarray(target([field, mask])), expected, rtol=1e-5, atol=1e-7)
    path = tmp_path / "target.keras"
    target.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded([field, mask])), expected, rtol=1e-5, atol=1e-7)
    # fully convolutional: another valid size runs
    assert loaded([np.zeros((1, 8, 12, 16, 1), np.float32)] * 2).shape == (1, 8, 12, 16, 1)
    assert describe_target_model(loaded) == {"depth": 2, "input_scale": 50.0, "label_scale": 10.0}
    source = np.asarray(export_target_model(model, domain=0)([field, mask]))
    assert not np.allclose(source, expected)


def test_training_model_round_trip(tmp_path):
    model = DomainAdaptiveUNet(2, 4).build_for()
    field, mask = _inputs()
    model([field, mask], domain=1, training=True)
    path = tmp_path / "da.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for d in (0, 1):
        np.testing.assert_array_equal(np.asarray(loaded([field, mask], domain=d)),
                                      np.asarray(model([field, mask], domain=d)))


@pytest.mark.parametrize("masked", [True, False])
def test_dsbn_moments_follow_the_brain_mask(masked):
    # the first DSBN normalises conv(field x mask, mask); with momentum 0 its moving mean is the
    # training batch's mean over the mask (masked_bn) or over every voxel (before issue 22)
    model = DomainAdaptiveUNet(2, 4, momentum=0.0, masked_bn=masked).build_for()
    field, mask = _inputs()
    model([field, mask], domain=1, training=True)
    x = np.concatenate([field * mask * model.input_scale, mask], axis=-1)
    conv = np.asarray(model.convs["enc0_conv0"](x))
    inside = np.broadcast_to(mask > 0, conv.shape) if masked else np.ones(conv.shape, bool)
    expected = conv[inside].reshape(-1, conv.shape[-1]).mean(axis=0)
    moving = np.asarray(model.norms["enc0_conv0"].moving_means[1])
    np.testing.assert_allclose(moving, expected, rtol=1e-4, atol=1e-5)
    assert model.get_config()["masked_bn"] is masked
