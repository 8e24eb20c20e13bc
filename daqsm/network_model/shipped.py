"""The pre-trained target model the package installs (daqsm/models/), pinned by a manifest.

    daqsm/models/daqsm_builtin_1mm.keras            the target model (contract 3), a few MB
    daqsm/models/daqsm_builtin_1mm.keras.json       its training geometry (model_info sidecar)
    daqsm/models/daqsm_builtin_1mm.manifest.json    SHA-256, size, training command and data,
                                                     package version, known limits

`python benchmarks/train_shipped_model.py ... --install` wrote these three files into daqsm/models/
(or into $DAQSM_MODEL_DIR when set), and setup.cfg package_data installs them with the package.
Every load of the installed file checks its size and SHA-256 against the manifest first: a changed
or truncated file is one clear error, never a silently different network. `daqsm-finetune` and
`daqsm-infer` use it when `--model` is not given; with none installed ($DAQSM_MODEL_DIR naming an
empty folder), a `--model` left empty is one line saying to give `--model FILE.keras`.

How it is made: benchmarks/train_shipped_model.py (its docstring has the command); what it is good
for and how accurate it is: docs/model-card.md.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from daqsm.errors import InputError
from daqsm.provenance import file_sha256

MODEL_DIR = Path(__file__).resolve().parents[1] / "models"
MODEL_DIR_ENV = "DAQSM_MODEL_DIR"  # another folder for the installed model (tests, a user's own install)
MODEL_NAME = "daqsm_builtin_1mm.keras"
MANIFEST_FORMAT = "daqsm-model-manifest"
MANIFEST_VERSION = 1

KNOWN_LIMITS = [
    "trained on simulations of one built-in head phantom (MNI ICBM 152 anatomy), not on in-vivo data; "
    "on the 2016 in-vivo challenge data (3 T) it is worse than TKD and L2, pre-trained and fine-tuned "
    "(docs/model-card.md)",
    "target domain: {domain}; other voxel sizes and B0 "
    "directions run (the fine-tuning loss uses the input's own geometry) but the pre-trained map is biased "
    "(daqsm-infer warns)",
    "a CPU-sized network (U-Net depth 4, 8 base filters) pre-trained for {steps} steps (recipe.pretrain_steps) "
    "on 2 CPU cores: without fine-tuning (--fast) its map is less accurate than TKD on the built-in 1 mm cases; "
    "fine-tune per dataset (the default); retrain longer with the same command where a GPU is available",
    "input: a background-removed local field in ppm, 0 outside the brain mask",
]


def model_dir() -> Path:
    """Where the shipped model is looked up and installed: $DAQSM_MODEL_DIR when set, else daqsm/models/."""
    return Path(os.environ.get(MODEL_DIR_ENV) or MODEL_DIR)


def model_path() -> Path:
    return model_dir() / MODEL_NAME


def manifest_path(path=None) -> Path:
    path = Path(path or model_path())
    return path.with_name(path.name[: -len(".keras")] + ".manifest.json")


def read_manifest(path=None) -> dict:
    """The manifest of the shipped model (or of `path`), checked for its keys."""
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise InputError(f"shipped model: manifest {mpath} not found; reinstall daqsm or give --model FILE.keras")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"shipped model: manifest {mpath}: expected JSON, cannot parse ({err})".splitlines()[0]) \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "sha256" not in manifest:
        raise InputError(f"shipped model: manifest {mpath}: expected format {MANIFEST_FORMAT!r} with a sha256")
    return manifest


def verify(path=None) -> str:
    """Check the model file against its manifest (size, SHA-256); returns the path. InputError if not."""
    path = Path(path or model_path())
    manifest = read_manifest(path)
    if not path.is_file():
        raise InputError(f"shipped model {path}: file not found; reinstall daqsm or give --model FILE.keras")
    size = path.stat().st_size
    digest = file_sha256(path)
    if size != manifest.get("size_bytes", size) or digest != manifest["sha256"]:
        raise InputError(f"shipped model {path}: expected SHA-256 {manifest['sha256']} ({manifest.get('size_bytes')} "
                         f"bytes) from its manifest, found {digest} ({size} bytes): the file was changed; reinstall "
                         "daqsm or give your own --model FILE.keras")
    return str(path)


def default_model_path() -> str:
    """The verified shipped model, for a `--model` left empty; prints the manifest's `warning` (one line)."""
    import sys

    if not model_path().is_file():
        raise InputError("--model: no model given and no shipped model is installed; give --model FILE.keras "
                         "(e.g. the demo's demo_out/step4_pretrain/target_model.keras) or train one with "
                         "benchmarks/train_shipped_model.py")
    path = verify()
    warning = read_manifest().get("warning")
    if warning:  # e.g. an under-trained placeholder: users should know before they trust a --fast map
        print(f"daqsm: note: shipped model: {warning}", file=sys.stderr)
    return path


def is_shipped(path) -> bool:
    """True when `path` is the shipped model file (so its loads are verified)."""
    try:
        return model_path().is_file() and os.path.samefile(path, model_path())
    except OSError:
        return False


#: the target domain of the four built-in 7 T cases (what the model was trained on before --extra-targets)
BUILTIN_TARGETS = ("daqsm-simulate --source builtin --resolution {res:g} --seed 0: the four RC2-like cases "
                   "Sim{{1,2}}Snr{{1,2}} (7 T, B0 along the third axis)")
BUILTIN_DOMAIN = "{res:g} mm isotropic voxels, B0 along the third voxel axis, 7 T"


def install_model(src, command: str, steps: int, resolution_mm: float, n_maps: int, target_crop: int = 128,
                  warning: str | None = None, ndi_floor: str | None = None, target_domain: str | None = None,
                  domain: str | None = None) -> str:
    """Copy a trained target model (and its model-info sidecar) into model_dir() and write its manifest.

    target_domain: how the target cases were made (default: the four built-in 7 T cases); domain: the
    protocols they cover, one phrase for the known limits (default: the built-in cases'). The training
    geometry comes from the model's sidecar: several `training_protocols` are listed as such.
    """
    import keras
    import tensorflow as tf

    from daqsm import __version__
    from daqsm.outputs import model_info_path as info_path

    model_dir().mkdir(parents=True, exist_ok=True)
    dest = model_path()
    shutil.copyfile(src, dest)
    if os.path.isfile(info_path(src)):
        shutil.copyfile(info_path(src), info_path(dest))
    protocols = None
    if os.path.isfile(info_path(dest)):  # read here, not through model_info (which imports this module)
        with open(info_path(dest), encoding="utf-8") as fh:
            protocols = json.load(fh).get("training_protocols")
    geometry = {"voxel_size_mm": [resolution_mm] * 3, "b0_dir": [0.0, 0.0, 1.0]}
    if protocols:
        geometry = {"voxel_size_mm": [resolution_mm] * 3,
                    "protocols": [{k: p[k] for k in ("b0_dir", "b0_tesla", "te_s")} for p in protocols]}
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "file": MODEL_NAME,
        "sha256": file_sha256(dest), "size_bytes": dest.stat().st_size,
        "daqsm_version": __version__, "keras_version": keras.__version__, "tensorflow_version": tf.__version__,
        "training_command": command,
        "training_data": {
            "source_domain": f"built-in phantom (MNI ICBM 152 2009a anatomy in nilearn's wheel; texture seed 1000, "
                             f"no calcification) at {resolution_mm:g} mm -> {n_maps} synthetic maps (step 1) and "
                             "their fields (step 2)",
            "target_domain": target_domain or BUILTIN_TARGETS.format(res=resolution_mm),
            "not_used": "the 2016 QSM challenge data and the RC2 segmentation (not redistributable)"},
        "recipe": {"pretrain_steps": steps, "depth": 4, "base_filters": 8, "source_patch": 64, "target_crop": target_crop,
                   "batch": [2, 1], "optimizer": "Adam 1e-3, cosine", "ndi_floor": ndi_floor},
        "training_geometry": geometry,
        "known_limits": [limit.format(steps=steps, domain=domain or BUILTIN_DOMAIN.format(res=resolution_mm))
                         for limit in KNOWN_LIMITS],
        "model_card": "docs/model-card.md",
    }
    if warning:
        manifest["warning"] = warning
    with open(manifest_path(dest), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    return str(dest)
