"""The provenance sidecar file: `OUT.json` beside a written volume (keys: daqsm/provenance.py).

The record is built by the infrastructure (daqsm.provenance.build_record, no file access); writing it
is a file of the pipeline like the others here, atomically through volume_io.atomic_path.
"""
from __future__ import annotations

import json

from daqsm.provenance import json_value, sidecar_path
from daqsm.training_data.volume_io import atomic_path


def write_sidecar(volume_path, record: dict, merge: dict | None = None) -> str:
    """Write `record` (plus `merge`, a step's own keys) as the sidecar of `volume_path`, atomically."""
    content = dict(record)
    content.update(json_value(merge or {}))
    path = sidecar_path(volume_path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(content, fh, indent=2)
        fh.write("\n")
    return path
