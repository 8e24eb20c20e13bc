"""Facts about an exported target model (contract 3) that inference needs beyond its weights.

A network is trained for one voxel size and one B0 direction (the dipole kernel of its losses);
applied to data of another geometry it still runs but its output is biased. A `.keras` file has no
place for such facts, so they travel in a small JSON sidecar beside it, `MODEL.keras.json`:

    {"format": "daqsm-model-info", "format_version": 1,
     "voxel_size_mm": [1.0, 1.0, 1.0], "b0_dir": [0.0, 0.0, 1.0], "divisor": 16}

`voxel_size_mm` and `b0_dir` (unit vector, voxel axes) are the training geometry, `divisor` the
2**depth the spatial sizes must be divisible by; every key is optional and extra keys are kept. A model
pre-trained on targets of several protocols has `training_protocols` (a list of {voxel_size_mm,
b0_dir, b0_tesla, te_s}) instead of the two geometry keys, and an input like any one of them is not warned about.
Training scripts write it with `write_model_info`; inference reads it with `read_model_info` and
warns (one line) through `geometry_warning` when the input's geometry differs. Without a sidecar,
`spatial_divisor` derives the divisor from the model's pooling / strided layers.
Saving: `save_model_atomic` (temp .keras, then rename), shared by steps 4 and 5.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from daqsm.errors import InputError
from daqsm.training_data.geometry import check_voxel_size, normalise_b0_dir
from daqsm.training_data.volume_io import atomic_path

INFO_FORMAT = "daqsm-model-info"
INFO_VERSION = 1
#: Relative voxel-size difference (any axis) above which inference warns.
VOXEL_REL_TOL = 0.10
#: Angle in degrees between training and input B0 directions above which inference warns.
B0_ANGLE_TOL_DEG = 5.0


def info_path(model_path) -> str:
    """Sidecar path of a model file: MODEL.keras -> MODEL.keras.json (the rule: daqsm.outputs)."""
    from daqsm.outputs import model_info_path

    return model_info_path(model_path)


def write_model_info(model_path, voxel_size_mm=None, b0_dir=None, divisor: int | None = None, **extra) -> str:
    """Write the sidecar of `model_path` atomically; returns its path.

    Args:
        model_path: the exported `.keras` file.
        voxel_size_mm: 3 floats, training voxel size in mm.
        b0_dir: 3 floats, training B0 direction in voxel axes (normalised on write).
        divisor: 2**depth of the network.
        **extra: further JSON-serialisable facts (e.g. b0_tesla, source data).
    """
    info = {"format": INFO_FORMAT, "format_version": INFO_VERSION}
    if voxel_size_mm is not None:
        info["voxel_size_mm"] = list(check_voxel_size(voxel_size_mm))
    if b0_dir is not None:
        info["b0_dir"] = list(normalise_b0_dir(b0_dir))
    if divisor is not None:
        info["divisor"] = int(divisor)
    info.update(extra)
    path = info_path(model_path)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(info, fh, indent=2)
    return path


def read_model_info(model_path) -> dict:
    """The sidecar of `model_path` as a dict with validated values; {} when there is none."""
    path = info_path(model_path)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as fh:
            info = json.load(fh)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: expected a JSON model-info sidecar, cannot parse it ({err})".splitlines()[0]) from None
    if not isinstance(info, dict) or info.get("format", INFO_FORMAT) != INFO_FORMAT:
        raise InputError(f"{path}: expected a JSON object with format {INFO_FORMAT!r}")
    if "voxel_size_mm" in info:
        info["voxel_size_mm"] = check_voxel_size(info["voxel_size_mm"])
    if "b0_dir" in info:
        info["b0_dir"] = normalise_b0_dir(info["b0_dir"])
    if "divisor" in info:
        div = info["divisor"]
        if not isinstance(div, int) or div < 1:
            raise InputError(f"{path}: divisor: expected a positive integer, found {div!r}")
    return info


def geometry_warning(info: dict, voxel_size_mm, b0_dir) -> str | None:
    """One line describing how the input geometry differs from the training one, or None.

    Args:
        info: model info (read_model_info).
        voxel_size_mm: 3 floats, input voxel size in mm (None: unknown, not compared).
        b0_dir: 3 floats, input B0 direction in voxel axes (None: unknown, not compared).
    """
    protocols = info.get("training_protocols")
    if isinstance(protocols, list) and protocols and "voxel_size_mm" not in info and "b0_dir" not in info:
        # a model trained on several protocols: an input like any one of them is in its domain
        lines = [geometry_warning({k: p.get(k) for k in ("voxel_size_mm", "b0_dir")}, voxel_size_mm, b0_dir)
                 for p in protocols if isinstance(p, dict)]
        if not lines or any(line is None for line in lines):
            return None
        return lines[0].replace("training geometry", f"training geometries (the first of {len(lines)})")
    problems = []
    if info.get("voxel_size_mm") is not None and voxel_size_mm is not None:
        trained = np.asarray(info["voxel_size_mm"], dtype=float)
        given = np.asarray(check_voxel_size(voxel_size_mm), dtype=float)
        if np.max(np.abs(given - trained) / trained) > VOXEL_REL_TOL:
            problems.append(f"voxel size {_fmt(given)} mm vs trained {_fmt(trained)} mm")
    if info.get("b0_dir") is not None and b0_dir is not None:
        cosine = float(np.dot(normalise_b0_dir(info["b0_dir"]), normalise_b0_dir(b0_dir)))
        # B0 and -B0 give the same dipole kernel (it depends on (k.b)^2).
        angle = math.degrees(math.acos(min(1.0, abs(cosine))))
        if angle > B0_ANGLE_TOL_DEG:
            problems.append(f"B0 direction {_fmt(b0_dir)} is {angle:.1f} deg from trained {_fmt(info['b0_dir'])}")
    if not problems:
        return None
    return "input geometry differs from the model's training geometry: " + "; ".join(problems) + \
        " (the output may be biased; resample/reorient the input or fine-tune on it)"


def spatial_divisor(model) -> int:
    """2**depth of a model: the product of its pooling sizes / strides (largest over the axes).

    Walks all nested layers; counts pooling layers (not global) and strided convolutions, which
    is exact for encoder-decoder U-Nets whose decoder upsamples by layers of other types.
    """
    factor = np.ones(3, dtype=np.int64)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        name = type(layer).__name__
        step = None
        if "Pooling" in name and "Global" not in name:
            step = getattr(layer, "strides", None) or getattr(layer, "pool_size", None)
        elif name.startswith("Conv") and "Transpose" not in name:
            step = getattr(layer, "strides", None)
        if step is not None:
            step = np.resize(np.asarray(step, dtype=np.int64).ravel(), 3)
            factor *= np.maximum(step, 1)
    return int(factor.max())


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def resolve_model_path(path) -> str:
    """A run folder (steps 4-5 output) stands for its target_model.keras."""
    path = str(path)
    return os.path.join(path, "target_model.keras") if os.path.isdir(path) else path


def load_model_file(path) -> "keras.Model":  # noqa: F821
    """Load a `.keras` model (or a run folder's target_model.keras) that follows contract 3.

    Any model with two 5-D single-channel inputs [field_ppm, mask] and one 5-D single-channel
    output is accepted (inference of a user's own network); fine-tuning additionally checks that it
    is this package's target model (`unet.describe_target_model`).

    Raises:
        InputError: missing file, not a Keras archive, or inputs/outputs of another shape.
    """
    if not path:
        raise InputError("--model: expected a .keras model file")
    path = resolve_model_path(path)
    if not os.path.isfile(path):
        raise InputError(f"model {path}: file not found")
    if not path.endswith(".keras"):
        raise InputError(f"model {path}: expected a Keras 3 model file ending in .keras")
    import zipfile

    from daqsm.network_model.shipped import is_shipped, verify

    if is_shipped(path):  # the shipped file loads only as its manifest pins it (SHA-256)
        verify(path)
    if not zipfile.is_zipfile(path):  # Keras would report a foreign file as "File not found"
        raise InputError(f"model {path}: cannot load as a Keras model: not a Keras archive (a .keras file is a zip)")
    from daqsm.tf_env import import_tensorflow

    import_tensorflow()
    import keras

    import daqsm.network_model.dsbn  # noqa: F401  (registers the package's custom layers)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # not a zip / not a Keras archive / unknown layers
        msg = f"model {path}: cannot load as a Keras model ({type(err).__name__}: {err})".splitlines()[0]
        raise InputError(msg[:300]) from None
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 2:
        raise InputError(f"model {path}: expected a model with 2 inputs [field_ppm, mask], found {len(inputs)}")
    for name, tensor in zip(("field_ppm", "mask"), inputs):
        shape = tuple(tensor.shape)
        if len(shape) != 5 or shape[-1] != 1:
            raise InputError(f"model {path}: input {name}: expected shape (batch, x, y, z, 1), found {shape}")
    out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else ()
    if len(out_shape) != 5 or out_shape[-1] != 1:
        raise InputError(f"model {path}: expected output chi (batch, x, y, z, 1), found {out_shape}")
    return model


def save_model_atomic(model, path: str) -> str:
    """model.save to a temp .keras beside `path`, then rename (a killed run leaves no half file)."""
    from daqsm.training_data.volume_io import atomic_path

    with atomic_path(path) as tmp:
        os.remove(tmp)  # Keras refuses to overwrite silently only when asked; start clean
        model.save(tmp)
    return path
