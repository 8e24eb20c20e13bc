"""Import TensorFlow quietly (its C++ start-up chatter hides the messages users need)."""
from __future__ import annotations

import os


def import_tensorflow():
    """Return the tensorflow module, with C++ info logs off unless the user set TF_CPP_MIN_LOG_LEVEL."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def device_name() -> str:
    """'GPU' when TensorFlow sees one, else 'CPU'."""
    tf = import_tensorflow()
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
