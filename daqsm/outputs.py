"""The output contract: one home for how every command names, refuses, stages and commits its outputs.

- `refuse_existing(option, paths, overwrite)`: "exists -> refuse unless --overwrite", one message.
- `temp_path(path)` / `atomic_path(path)`: the one temp-name rule and the one atomic writer (temp
  beside the output, renamed onto it only on success).
- `is_temp_of(name, path)` / `remove_stale_temps(path)`: a killed run's temps are found by an exact
  parse of their names, never by a prefix glob.
- Companion names, one rule each, keyed on the output's stem whatever its suffix (`stem_of`):
  `config_companion(output, command, folder)` the resolved config of every command that writes one,
  `sidecar_companion(path)` the provenance sidecar, `model_info_path(model)` a model's geometry, and
  `qsm_set(output)` every file of a susceptibility map (steps 5, infer, baselines), built from them.
- `did_you_mean(value, valid)`: the one "did you mean" hint (defined in daqsm/errors.py).

Temp names are `.NAME.tmp-RANDOM[.SUFFIX]` beside NAME (RANDOM: 8 characters of [a-z0-9_]). The
hyphen before RANDOM and the fixed RANDOM length make the parse exact: the temps of `maps` never
match those of `maps-val` or of `maps.tmp-x`, so a run's clean-up cannot remove a concurrent run's
staging files (issue 23).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from typing import Iterable

from daqsm.errors import InputError, did_you_mean  # noqa: F401 (the one hint, re-exported)

_RANDOM = "abcdefghijklmnopqrstuvwxyz0123456789_"
_SUFFIXES = (".nii.gz", ".nii", ".npy", ".mat", ".h5", ".hdf5", ".json", ".keras", ".csv", ".onnx", ".png",
             ".md", ".tex", ".txt")
NIFTI = (".nii.gz", ".nii")


def suffix_of(path) -> str:
    """The format suffix of a path ('.nii.gz' counts as one), lower case; '' when none is known."""
    text = str(path).lower()
    return next((s for s in _SUFFIXES if text.endswith(s)), os.path.splitext(text)[1])


def refuse_existing(option: str, paths: Iterable, overwrite: bool) -> None:
    """Refuse, before any work, when one of `paths` exists and --overwrite was not given."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(str(path)):
            raise InputError(f"{option} {path}: output exists; use --overwrite to replace it")


def _base(path) -> str:
    return os.path.basename(os.path.abspath(str(path)).rstrip(os.sep))


def temp_path(path, suffix: str | None = None, folder: bool = False, where=None) -> str:
    """Create (exclusively) and return a new temp file or folder for the output `path`.

    Args:
        path: the output it will become (its name is part of the temp's).
        suffix: the temp's suffix (default: the output's, so writers that go by the suffix work).
        folder: make a folder instead of a file.
        where: the folder to create it in (default: the output's own folder).
    """
    where = where or os.path.dirname(os.path.abspath(str(path)).rstrip(os.sep))
    suffix = suffix_of(path) if suffix is None else suffix
    umask = os.umask(0)
    os.umask(umask)
    for _ in range(100):
        tmp = os.path.join(where, f".{_base(path)}.tmp-{''.join(secrets.choice(_RANDOM) for _ in range(8))}{suffix}")
        try:
            if folder:
                os.mkdir(tmp, 0o777 & ~umask)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~umask))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{where}: no free temp name for {_base(path)}")


def is_temp_of(name: str, path) -> bool:
    """True when the file name `name` is a temp of the output `path` (exact parse, not a prefix)."""
    pattern = rf"\.{re.escape(_base(path))}\.tmp-[a-z0-9_]{{8}}(?:\.[A-Za-z0-9]+)*"
    return re.fullmatch(pattern, name) is not None


def is_any_temp(name: str) -> bool:
    """True for a temp of any output (used inside a folder this command owns)."""
    return re.fullmatch(r"\..+\.tmp-[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)*", name) is not None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def remove_stale_temps(path) -> list[str]:
    """Remove the temps a killed run left for `path` (call while holding the output's lock)."""
    folder = os.path.dirname(os.path.abspath(str(path)).rstrip(os.sep))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = [os.path.join(folder, n) for n in names if is_temp_of(n, path)]
    for stale in removed:
        _remove(stale)
    return removed


def remove_temps_inside(folder) -> list[str]:
    """Remove every temp inside an output folder this command owns, TensorFlow's `ckpt-N_temp/` included."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        for name in list(dirnames) + filenames:
            if is_any_temp(name) or (name in dirnames and re.fullmatch(r"ckpt-\d+_temp", name)):
                removed.append(os.path.join(dirpath, name))
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in removed]
    for stale in removed:
        _remove(stale)
    return removed


@contextlib.contextmanager
def atomic_path(path, folder: bool = False):
    """Yield a temp path beside `path` (same suffix); rename it onto `path` only when the block succeeds."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path, folder=folder)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_text_atomic(path, text: str) -> str:
    """Write `text` (UTF-8) to `path` through a temp file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return str(path)


def sidecar_companion(path) -> str:
    """The provenance sidecar of an output file: OUT.nii.gz / OUT.nii / OUT.h5 / M.onnx -> OUT.json, M.json."""
    return stem_of(path) + ".json"


#: name of the resolved config beside a file output (OUT + this) and, after COMMAND_, inside a folder output
CONFIG_SUFFIX = ".config.json"
FOLDER_CONFIG_SUFFIX = "_config.json"
#: names earlier versions gave the resolved config, per command: still read (a resumed step-4 run) and
#: replaced with the set they belong to; (folder output?, the name inside the folder or after the file's stem)
LEGACY_CONFIG_NAMES = {"train": (True, "config.json"), "finetune": (False, "_config.json")}


def config_companion(output, command: str, folder: bool) -> str:
    """The one rule for where a command writes its resolved config (README "config layer").

    Args:
        output: the command's output, a file (OUT.SUFFIX) or a folder it owns.
        command: the command's short name (`genchi`, `fieldmap`, `patches`, `simulate`, `train`,
            `finetune`, `demo`), the daqsm-COMMAND console script.
        folder: whether `output` is a folder.

    Returns:
        OUT.config.json beside a file (its format suffix removed: fields.h5 -> fields.config.json,
        q.nii.gz -> q.config.json); FOLDER/COMMAND_config.json inside a folder, named after the
        command because one folder may hold several commands' outputs (the demo's holds every step's).
    """
    if folder:
        return os.path.join(str(output), command + FOLDER_CONFIG_SUFFIX)
    return stem_of(output) + CONFIG_SUFFIX


def legacy_config_companions(output, command: str, folder: bool) -> list[str]:
    """The names earlier versions gave `command`'s resolved config (LEGACY_CONFIG_NAMES), oldest last."""
    if command not in LEGACY_CONFIG_NAMES or LEGACY_CONFIG_NAMES[command][0] != folder:
        return []
    name = LEGACY_CONFIG_NAMES[command][1]
    return [os.path.join(str(output), name) if folder else stem_of(output) + name]


def find_config_companion(output, command: str, folder: bool) -> str | None:
    """The resolved config a run of `command` left for `output`: the rule's name, else an older name
    (a run folder of an earlier version), else None."""
    for path in [config_companion(output, command, folder), *legacy_config_companions(output, command, folder)]:
        if os.path.lexists(path):
            return path
    return None


def model_info_path(model_path) -> str:
    """Companion of a saved model holding its training geometry: MODEL.keras -> MODEL.keras.json."""
    return f"{model_path}.json"


def stem_of(output) -> str:
    """OUT.nii.gz / OUT.nii / OUT.npy -> OUT: the key of a susceptibility map's set of files."""
    text = str(output)
    suffix = suffix_of(text)
    return text[: -len(suffix)] if suffix and text.lower().endswith(suffix) else text


def qsm_set(output) -> dict:
    """Every file a command writing the susceptibility map `output` may write or replace.

    One set for steps 5, infer and the baselines: they are locked, refused and replaced together, so
    `-o x.nii` cannot replace the companions of `x.nii.gz` and no command leaves another's old files
    beside its own. 'qsm' is written last (it marks the set complete); 'other_qsm' is the same map
    under the other NIfTI suffix; 'legacy_config' the config under the name earlier versions wrote.
    """
    text = str(output)
    stem = stem_of(text)
    other = stem + (".nii" if text.lower().endswith(".nii.gz") else ".nii.gz")
    model = stem + "_model.keras"
    residual = stem + "_residual.nii.gz"
    paths = {"qsm": text, "other_qsm": other, "sidecar": sidecar_companion(text), "model": model,
             "model_info": model_info_path(model), "log": stem + "_loss.csv",
             "config": config_companion(text, "finetune", folder=False),
             "residual": residual, "residual_sidecar": sidecar_companion(residual)}
    # step 5's config under its older name: refused, locked and removed with the set, never left beside it
    paths.update({"legacy_config": p for p in legacy_config_companions(text, "finetune", folder=False)})
    return paths


def refuse_inputs_as_outputs(option: str, outputs: Iterable, inputs: Iterable) -> None:
    """Refuse an output (a sidecar included) that is one of the command's inputs, even with --overwrite."""
    real = {}
    for path in inputs:
        if path:
            real[os.path.realpath(str(path))] = str(path)
    for out in outputs:
        hit = real.get(os.path.realpath(str(out)))
        if hit is not None:
            raise InputError(f"{option}: writing {out} would replace the input {hit}; choose another output name")


def storable_text(value):
    """Text (or a list of texts) that HDF5 and JSON can store: a file name's undecodable bytes
    (Python's surrogate escapes) become \\xNN instead of failing the write half-way."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
        return [storable_text(v) for v in value]
    return value
