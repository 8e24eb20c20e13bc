"""Mixed precision (`precision` key of steps 4, 5 and inference) on the CPU.

bfloat16 runs on the CPU; float16 does not (TensorFlow has no float16 MaxPool3D CPU kernel), so its
loss scaling is tested on a float32 model (a power-of-two scale is undone exactly) and the option
itself must refuse a GPU-less machine with one line.

Tolerances (depth-2 / 4-filter U-Net, 16^3 batches):
- the pre-training loss of one step (same weights, same batch), bfloat16 against float32: relative
  differences 1.8e-4 .. 5.3e-4 over the terms in two seeds on a CPU that emulates bf16, 1.2 % on one
  with native bf16 (AVX512_BF16) -> STEP_RTOL 2.5e-2;
- the loss after one Adam update: 2.6e-4 .. 1.3e-2 (Adam's first step is about lr * sign(gradient),
  so tiny gradients that change sign move it) -> UPDATE_RTOL 5e-2.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.errors import InputError  # noqa: E402
from daqsm.network_model.precision import PRECISIONS, check_precision, precision_policy, with_precision  # noqa: E402
from tests.network_model.synthetic import ball_mask, make_patch_file, smooth_chi  # noqa: E402

# bfloat16 keeps 8 significant bits (rounding 2**-8 = 0.39 % per operation). A CPU with native bf16
# (AVX512_BF16) rounds inside oneDNN's kernels where others emulate it; measured on such a CPU: the
# loss 1.2 % from float32, a 16^3 map 3-6 % of its maximum voxel-wise. The bounds sit ~2x above that.
STEP_RTOL = 2.5e-2
UPDATE_RTOL = 5e-2
MAP_ATOL_OF_MAX = 0.12
N = 16


def _batch():
    import tensorflow as tf

    from daqsm.training_data.dipole import forward_field

    mask = np.stack([ball_mask(N)] * 2)[..., None]
    chi = np.stack([smooth_chi(N, 1), smooth_chi(N, 2)])[..., None]
    field = forward_field(chi[..., 0])[..., None] * mask
    return tuple(tuple(tf.constant(a, tf.float32) for a in part)
                 for part in ((field, mask, chi), (field[::-1] * 1.5, mask, mask)))


def _one_step(precision: str, weights=None, loss_scale: bool = False):
    """Loss terms of one pre-training step and the loss after it; the weights used."""
    import tensorflow as tf

    from daqsm.network_model.train_model.train import PretrainConfig, build_loss_fn
    from daqsm.network_model.training_loop import make_optimizer, make_train_step
    from daqsm.network_model.unet import DomainAdaptiveUNet
    from daqsm.training_data.dipole import dipole_operator_tf

    with precision_policy(precision):
        model = DomainAdaptiveUNet(2, 4).build_for()
        optimizer = make_optimizer(1e-3, loss_scale=loss_scale)
        optimizer.build(model.trainable_variables)
    if weights is None:
        weights = model.get_weights()
    model.set_weights(weights)
    loss_fn = build_loss_fn(model, dipole_operator_tf((N, N, N)), 20.0, PretrainConfig(depth=2, base_filters=4))
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer, loss_fn)
    batch = _batch()
    terms = {k: float(v) for k, v in step(batch).items()}
    return terms, float(step(batch)["loss"]), weights, model


def test_bfloat16_step_matches_float32():
    import keras

    keras.utils.set_random_seed(5)
    ref, ref_after, weights, _ = _one_step("float32")
    low, low_after, _, model = _one_step("mixed_bfloat16", weights)
    assert model.get_layer("enc0_conv0").compute_dtype == "bfloat16"
    assert model.get_layer("enc0_conv0").kernel.dtype == "float32"  # weights stay float32
    for key in ("loss", "l1", "ndi", "tv"):
        np.testing.assert_allclose(low[key], ref[key], rtol=STEP_RTOL, err_msg=key)
    np.testing.assert_allclose(low_after, ref_after, rtol=UPDATE_RTOL)
    assert low != ref  # it did run in reduced precision


def test_loss_scaling_gives_the_unscaled_update():
    import keras

    keras.utils.set_random_seed(6)
    plain, plain_after, weights, _ = _one_step("float32")
    scaled, scaled_after, _, _ = _one_step("float32", weights, loss_scale=True)
    assert scaled == plain
    np.testing.assert_allclose(scaled_after, plain_after, rtol=1e-6)


def test_pretrain_bfloat16_exports_a_float32_model(tmp_path):
    import keras

    from daqsm.network_model.train_model import train

    patches = make_patch_file(tmp_path / "p.h5", count=4, n=8)
    run = tmp_path / "run"
    assert train.main(["--datasets_path", patches, "--run_dir", str(run), "--depth", "1", "--base_filters", "4",
                       "--max_steps", "2", "--val_fraction", "0", "--progress", "false",
                       "--precision", "mixed_bfloat16"]) == 0
    model = keras.saving.load_model(run / "target_model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8, 1)).astype(np.float32) * 0.05
    out = model([x, np.ones_like(x)])
    assert out.dtype == "float32" and np.all(np.isfinite(np.asarray(out)))

    # the same weights in bfloat16 (inference / fine-tuning): float32 output, close to float32
    low = with_precision(model, "mixed_bfloat16")
    assert low.get_layer("enc0_conv0").compute_dtype == "bfloat16"
    out_low = low([x, np.ones_like(x)])
    assert out_low.dtype == "float32"
    np.testing.assert_allclose(np.asarray(out_low), np.asarray(out), atol=MAP_ATOL_OF_MAX * float(np.abs(out).max()))
    back = with_precision(low, "float32")  # back to float32: bit-identical to the original
    np.testing.assert_array_equal(np.asarray(back([x, np.ones_like(x)])), np.asarray(out))


def test_precision_names():
    assert [check_precision(p) for p in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(InputError, match="did you mean 'mixed_bfloat16'"):
        check_precision("mixed_bfloat")


def test_float16_without_gpu_is_one_line(tmp_path, capsys):
    import tensorflow as tf

    from daqsm.network_model.train_model import train

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: float16 runs there")
    patches = make_patch_file(tmp_path / "p.h5", count=2, n=8)
    assert train.main(["--datasets_path", patches, "--run_dir", str(tmp_path / "r"), "--depth", "1",
                       "--precision", "mixed_float16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a GPU" in err and len(err.splitlines()) == 1


def test_finetune_and_infer_in_bfloat16(tmp_path):
    import keras

    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.unet import build_target_model
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import read_volume, write_volume

    mask = ball_mask(N).astype(np.uint8)
    field = (forward_field(smooth_chi(N, 4), pad="auto") * mask).astype(np.float32)
    write_volume(tmp_path / "field.nii.gz", field, np.eye(4))
    write_volume(tmp_path / "mask.nii.gz", mask, np.eye(4))
    keras.utils.set_random_seed(3)
    build_target_model(depth=2, base_filters=4).save(tmp_path / "pre.keras")
    inputs = ["--field", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz")]
    assert finetune.main(["--model", str(tmp_path / "pre.keras"), *inputs, "-o", str(tmp_path / "qsm.nii.gz"),
                          "--b0", "3", "--te", "0.02", "--iterations", "3", "--progress", "false",
                          "--precision", "mixed_bfloat16"]) == 0
    tuned = keras.saving.load_model(tmp_path / "qsm_model.keras")
    assert {layer.dtype_policy.name for layer in tuned.layers} == {"float32"}  # saved in float32
    assert np.all(np.isfinite(read_volume(tmp_path / "qsm.nii.gz").data))

    maps = {}
    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / f"infer_{precision}.nii.gz"
        assert infer.main(["--model", str(tmp_path / "qsm_model.keras"), *inputs, "--whole", "-o", str(out),
                           "--precision", precision]) == 0
        maps[precision] = read_volume(out).data
    assert maps["mixed_bfloat16"].dtype == np.float32
    scale = float(np.abs(maps["float32"]).max())
    np.testing.assert_allclose(maps["mixed_bfloat16"], maps["float32"], atol=MAP_ATOL_OF_MAX * scale)
