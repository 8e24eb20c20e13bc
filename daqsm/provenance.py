"""Provenance sidecars: one JSON beside every volume the package writes (BIDS-derivative style).

`OUT.nii.gz` gets `OUT.json` (`sidecar_path`), written atomically by `write_sidecar` (through
daqsm.outputs' one atomic writer), the one writer every command uses (steps 2 and 5, inference,
baselines, the simulator). Keys (BIDS names where BIDS has one: Description, Units, Sources,
MagneticFieldStrength, GeneratedBy):
    Description, Units ("ppm", or "arbitrary" / null for magnitudes and masks), Sources (input files),
    GeneratedBy [{Name: daqsm, Version, Step, CommandLine}], MagneticFieldStrength (T, when known),
    B0Direction (unit vector in voxel axes), VoxelSize (mm), DipoleKernel {Definition, D0, Padding},
    Config (the resolved settings), Model {Path, SHA256} (network outputs), and per step extras
    (FineTuning: iterations and stop reason; QC: the residual summary of daqsm.qc.residual).
Content is deterministic: no timestamps, no host names (tests/test_determinism.py compares reruns;
it ignores only the model's SHA256, since a `.keras` file stores its save date).

BIDS naming for susceptibility maps (`bids_chimap_path`): `-o sub-01_ses-1` or `sub-01.nii.gz` with
the option on becomes `sub-01_ses-1_Chimap.nii.gz` (suffix Chimap, unit ppm, as BIDS qMRI maps).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import sys

#: how the one kernel (daqsm.training_data.dipole) is defined, for the sidecar
KERNEL_DEFINITION = "D(k) = 1/3 - (k.b)^2/|k|^2, continuous k-space, k = fftfreq/voxel size, not fft-shifted"
CHIMAP_SUFFIX = "_Chimap"

_command = {"step": None, "argv": None}


@contextlib.contextmanager
def command(step: str, argv=None):
    """While a command's main runs, sidecars record it (argv None: sys.argv[1:]); API calls record none."""
    saved = dict(_command)
    _command["step"] = step
    _command["argv"] = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        yield
    finally:
        _command.update(saved)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("daqsm")
    except PackageNotFoundError:
        return "unknown"


def sidecar_path(volume_path) -> str:
    """OUT.nii.gz / OUT.nii / OUT.npy -> OUT.json: the one companion rule, daqsm.outputs.sidecar_companion."""
    from daqsm.outputs import sidecar_companion

    return sidecar_companion(volume_path)


def bids_chimap_path(output) -> str:
    """Output path with the BIDS susceptibility suffix: DIR/sub-01[.nii.gz] -> DIR/sub-01_Chimap.nii.gz."""
    text = str(output)
    for suffix in (".nii.gz", ".nii"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
            break
    if not text.endswith(CHIMAP_SUFFIX):
        text += CHIMAP_SUFFIX
    return text + ".nii.gz"


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file (a `.keras` model, a step-4 run folder's target_model.keras)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_value(value):
    """JSON-ready copy: tuples -> lists, numpy scalars -> floats/ints, dataclasses -> dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def model_entry(model_path) -> dict:
    """{Path, SHA256} of a model file (a folder: its target_model.keras)."""
    path = str(model_path)
    file = os.path.join(path, "target_model.keras") if os.path.isdir(path) else path
    return {"Path": file, "SHA256": file_sha256(file) if os.path.isfile(file) else None}


def build_record(description: str, units: str | None, *, sources=(), b0_tesla=None, b0_dir=None,
                 voxel_size_mm=None, dipole_pad=None, d0: float | None = 0.0, config=None, model=None,
                 **extra) -> dict:
    """The sidecar content for one volume (module docstring for the keys).

    Args:
        description: what the volume is.
        units: "ppm" for chi and fields, None where there is no physical unit.
        sources: input files the volume was made from.
        b0_tesla: main field (T) or None; b0_dir: unit vector (voxel axes); voxel_size_mm: 3 floats.
        dipole_pad, d0: the dipole-kernel convention used (daqsm.training_data.dipole); d0 None: no kernel used.
        config: the resolved settings (dataclass or mapping).
        model: path of the network model used, or None.
        **extra: further top-level keys (FineTuning, QC, ...), BIDS-style CamelCase names.
    """
    step = {"Name": "daqsm", "Version": package_version()}
    if _command["step"]:
        step["Step"] = _command["step"]
        step["CommandLine"] = shlex.join([_command["step"]] + _command["argv"])
    record = {"Description": description, "Units": units, "Sources": [str(s) for s in sources if s],
              "GeneratedBy": [step]}
    if b0_tesla is not None:
        record["MagneticFieldStrength"] = float(b0_tesla)
    if b0_dir is not None:
        record["B0Direction"] = [float(v) for v in b0_dir]
    if voxel_size_mm is not None:
        record["VoxelSize"] = [float(v) for v in voxel_size_mm]
    if d0 is not None:
        record["DipoleKernel"] = {"Definition": KERNEL_DEFINITION, "D0": float(d0),
                                  "Padding": "none" if dipole_pad in (None, 0) else str(dipole_pad)}
    if config is not None:
        record["Config"] = json_value(config)
    if model is not None:
        record["Model"] = model_entry(model)
    record.update(json_value(extra))
    return record


def write_sidecar(volume_path, record: dict, merge: dict | None = None) -> str:
    """Write `record` (plus `merge`, a step's own keys) as the sidecar of `volume_path`, atomically; returns its path."""
    from daqsm.outputs import atomic_path as contract_atomic_path

    content = dict(record)
    content.update(json_value(merge or {}))
    path = sidecar_path(volume_path)
    with contract_atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(content, fh, indent=2)
        fh.write("\n")
    return path
