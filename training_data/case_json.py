"""Reader of a case folder's `case.json` (contract 1 metadata), shared by steps 3 and 5 and inference.

Keys (all optional): b0_tesla (number, T), te_s (list of echo times in s; one number is read as a
one-echo list), voxel_size_mm (3 numbers), b0_dir (3 numbers), and the simulator's provenance
keys. An unknown key is refused with a "did you mean" (a misspelt `b0_tesla` would otherwise
become "no phase scale" much later); invalid JSON or a wrong type is one line naming the file.
"""
from __future__ import annotations

import difflib
import json
import math
import os

from training_data.errors import InputError

# the geometry/acquisition keys the pipeline uses, and the provenance keys simulate.py writes
KEYS = ("b0_tesla", "te_s", "voxel_size_mm", "b0_dir", "peak_snr", "noise_sigma", "seed", "source", "variant",
        "resolution_mm")


def read_case_json(folder) -> dict:
    """The checked contents of FOLDER/case.json ({} when the file is absent)."""
    path = os.path.join(str(folder), "case.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: expected a JSON object, cannot parse ({str(err).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object of keys, found a {type(meta).__name__}")
    for key in meta:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"{path}: unknown key {key!r}{hint}; known: {', '.join(KEYS)}")
    if meta.get("b0_tesla") is not None:
        meta["b0_tesla"] = _positive(path, "b0_tesla", meta["b0_tesla"])
    if meta.get("te_s") is not None:
        te = meta["te_s"]
        te = [te] if isinstance(te, (int, float)) and not isinstance(te, bool) else te
        if not isinstance(te, list) or not te:
            raise InputError(f"{path}: te_s: expected a list of echo times in seconds, found {meta['te_s']!r}")
        meta["te_s"] = [_positive(path, "te_s", t) for t in te]
    for key in ("voxel_size_mm", "b0_dir"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != 3:
            raise InputError(f"{path}: {key}: expected 3 numbers, found {value!r}")
        meta[key] = [_positive(path, key, v) if key == "voxel_size_mm" else _number(path, key, v) for v in value]
    return meta


def _number(path, key, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{path}: {key}: expected a finite number, found {value!r}")
    return float(value)


def _positive(path, key, value) -> float:
    if _number(path, key, value) <= 0:
        raise InputError(f"{path}: {key}: expected a positive number, found {value!r}")
    return float(value)
