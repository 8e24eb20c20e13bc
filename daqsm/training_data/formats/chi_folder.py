"""Step-1 NIfTI folder: synthetic maps one NIfTI pair per map, written by step 1 (genChi.py OUT/),
read by steps 2 (a folder of volumes) and 3 (`--source FOLDER`: chi_* with their mask_*).

    FOLDER/chi_IIII.nii.gz    float32 (x, y, z) susceptibility, ppm, the source's affine; chi_IIII.json sidecar
    FOLDER/mask_IIII.nii.gz   uint8 (x, y, z) brain mask 0/1; mask_IIII.json sidecar
    FOLDER/params.json        voxel_size_mm, b0_dir, units "ppm", source_files, samples (the values drawn
                              for each map, in order)
    FOLDER/genchi_config.json the resolved step-1 config (daqsm.config)
IIII: the map index, zero-padded to max(4, digits of N - 1). The writer fills a staging folder; the
caller moves it in (daqsm/training_data/synthesis.py), so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import json
import os

import numpy as np

from daqsm.training_data.volume_io import write_volume

#: the name prefixes of the map files (what a later run may replace, what step 3 pairs)
PATTERNS = ("chi_", "mask_")
PARAMS_NAME = "params.json"


def digits_for(n_maps: int) -> int:
    """Zero-padding of the map index for a folder of n_maps maps."""
    return max(4, len(str(int(n_maps) - 1)))


def write_map(folder, index: int, digits: int, chi_ppm, mask, affine, sidecar=None) -> None:
    """chi_IIII.nii.gz (float32 ppm) and mask_IIII.nii.gz (uint8) into `folder`.

    sidecar: optional callable(kind) -> provenance record ("chi" or "mask"), written beside each file.
    """
    for kind, data in (("chi", np.asarray(chi_ppm)), ("mask", np.asarray(mask).astype(np.uint8))):
        path = os.path.join(str(folder), f"{kind}_{index:0{digits}d}.nii.gz")
        write_volume(path, data, affine)
        if sidecar is not None:
            from daqsm.provenance import write_sidecar

            write_sidecar(path, sidecar(kind))


def write_params(folder, voxel_size_mm, b0_dir, source_files, samples) -> str:
    """FOLDER/params.json: the geometry, the source files and the drawn values of every map."""
    path = os.path.join(str(folder), PARAMS_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"voxel_size_mm": list(voxel_size_mm), "b0_dir": list(b0_dir), "units": "ppm",
                   "source_files": list(source_files), "samples": list(samples)}, fh)
    return path


def previous_maps(folder) -> list[str]:
    """File names of the maps an earlier run wrote into `folder` (from its params.json), that exist."""
    try:
        with open(os.path.join(str(folder), PARAMS_NAME), encoding="utf-8") as fh:
            count = len(json.load(fh).get("samples", []))
    except (OSError, ValueError, AttributeError):
        return []
    digits = digits_for(count)
    names = [f"{kind}{i:0{digits}d}{ext}" for i in range(count) for kind in PATTERNS
             for ext in (".nii.gz", ".json")]  # each map and its provenance sidecar
    return [n for n in names if os.path.isfile(os.path.join(str(folder), n))]


def mask_path_for(chi_path) -> str | None:
    """The mask_IIII file beside a chi_IIII file (None when the name is not a step-1 map's)."""
    base = os.path.basename(str(chi_path))
    if not base.startswith(PATTERNS[0]):
        return None
    return os.path.join(os.path.dirname(str(chi_path)), PATTERNS[1] + base[len(PATTERNS[0]):])
