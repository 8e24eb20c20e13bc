"""TensorFlow start-up in one place: quiet C++ logs, op determinism, and the seeds of steps 4-5.

Every step that runs TensorFlow (pre-training, fine-tuning, inference, field maps) gets the module
from `import_tensorflow()`, so the settings below hold for all of them.

Determinism: with the same seed, the same machine and the same package versions, steps 1-5 and
inference write bit-identical files (tests/test_determinism.py runs the tiny demo twice and
compares every array). Two things are needed and both are set here:

- seeds: `seed_everything(seed)` = `keras.utils.set_random_seed` (Python, NumPy's global generator,
  TensorFlow); steps 1-3 draw from explicitly seeded `numpy.random.default_rng` generators;
- op determinism: `tf.config.experimental.enable_op_determinism()`, on by default. On the CPU it
  changes no bit of the demo's outputs and costs nothing measurable (numbers in
  docs/steps-4-5-training-and-fine-tuning.md, "Reproducibility"): the bits are already fixed
  there. It is the guard for GPUs, where cuDNN would otherwise pick nondeterministic algorithms.
  Set `DAQSM_OP_DETERMINISM=0` to turn it off.

oneDNN: `import daqsm` sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set (daqsm/__init__.py; TensorFlow
leaves oneDNN off on some x86 CPUs, 6.3x slower training there). Its kernels are deterministic for a
given thread count (tests/test_determinism.py runs with it).

Not covered, by design: TensorFlow's intra-op thread count, which defaults to the number of cores.
A different count changes the float summation order of the convolutions, so a run with
`TF_NUM_INTRAOP_THREADS=1` differs from one with 2 threads in the last bits, and training amplifies
that (tests/test_golden.py states by how much). Pin `TF_NUM_INTRAOP_THREADS` to get the same bits on
machines with different core counts; pinning it here would make every run slower on larger machines.
"""
from __future__ import annotations

import os

OP_DETERMINISM_ENV = "DAQSM_OP_DETERMINISM"
_OFF = ("0", "false", "no", "off")


def op_determinism_requested() -> bool:
    """True unless $DAQSM_OP_DETERMINISM is 0 / false / no / off."""
    return os.environ.get(OP_DETERMINISM_ENV, "1").strip().lower() not in _OFF


def import_tensorflow():
    """Return the tensorflow module: C++ info logs off (unless TF_CPP_MIN_LOG_LEVEL is set) and op
    determinism on (unless $DAQSM_OP_DETERMINISM is 0)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if op_determinism_requested():
        tf.config.experimental.enable_op_determinism()  # a flag: cheap and idempotent
    return tf


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and TensorFlow (keras.utils.set_random_seed).

    Steps 4 and 5 call it right before building or loading their model, so the weight
    initialisation, the data split and the shuffling depend on `seed` alone.
    """
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(int(seed))


def device_name() -> str:
    """'GPU' when TensorFlow sees one, else 'CPU'."""
    tf = import_tensorflow()
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
