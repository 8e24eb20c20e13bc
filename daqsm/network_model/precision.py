"""Mixed precision for steps 4-5 and inference: `precision: float32 | mixed_float16 | mixed_bfloat16`.

What runs in reduced precision: the convolutions and what sits between them (batch norm output,
ReLU, pooling, upsampling, skip concatenation), which is where the time goes. What stays float32:
the weights (Keras' mixed policies keep variables in float32), the batch-norm moments (DSBN and
Keras' BatchNormalization compute them in float32), the network's input scaling and its output
(the last convolution's result is cast to float32 before the label scale and the mask), and
everything in daqsm/network_model/losses.py: the dipole FFT, NDI, TV and the loss sums (losses cast their
inputs to float32). float16 needs loss scaling (its small gradients underflow):
`make_optimizer(..., loss_scale=True)` wraps Adam in `keras.optimizers.LossScaleOptimizer` and the
training step scales the loss before the gradient. bfloat16 has float32's exponent range and needs
none.

Exported models (target_model.keras, the fine-tuned OUT_model.keras) are always float32, so they
load and predict in float32 anywhere; `with_precision` rebuilds a loaded model in another policy
(same weights) for fine-tuning or inference in reduced precision.
"""
from __future__ import annotations

import contextlib

from daqsm.errors import InputError, choices_message

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

#: Layer classes of the target model that run in the reduced compute dtype (the rest stays float32).
REDUCED_LAYERS = ("Conv3D", "BatchNormalization", "ReLU", "MaxPooling3D", "UpSampling3D", "Concatenate")


def check_precision(name: str) -> str:
    """The canonical precision name; InputError listing the valid ones otherwise."""
    key = str(name).strip().lower()
    if key not in PRECISIONS:
        raise choices_message("precision", name, PRECISIONS)
    return key


def check_device(name: str) -> str:
    """`check_precision`, and refuse float16 without a GPU (InputError).

    TensorFlow 2.21 registers no float16 MaxPool3D kernel on the CPU (bfloat16 and float32 only), so
    a float16 U-Net cannot run there; bfloat16 can.
    """
    name = check_precision(name)
    if name == "mixed_float16":
        from daqsm.tf_env import import_tensorflow

        if not import_tensorflow().config.list_physical_devices("GPU"):
            raise InputError("precision mixed_float16: needs a GPU (TensorFlow has no float16 MaxPool3D "
                             "kernel on the CPU); found none, use mixed_bfloat16 or float32")
    return name


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras' global dtype policy set to `name` while building layers; the previous one restored after.

    Layers keep the policy they were created with, so only construction needs to be inside.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(check_precision(name))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def needs_loss_scale(name: str) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 need none."""
    return check_precision(name) == "mixed_float16"


def with_precision(model, name: str):
    """The same functional model (same weights) with its compute layers in another precision.

    Args:
        model: a functional keras.Model, e.g. an exported target model (daqsm.network_model.unet).
        name: one of PRECISIONS; 'float32' gives a plain float32 copy (for export).

    Returns:
        a new keras.Model with the same name, inputs and weights; its output stays float32.
    """
    import keras

    name = check_precision(name)
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            continue
        layer["config"]["dtype"] = name if layer["class_name"] in REDUCED_LAYERS else "float32"
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
