"""Step 1 as a library: synthetic susceptibility maps (ppm) from source maps (e.g. COSMOS) + masks.

The command is training_data/genChi.py (parse -> load_sources -> write_maps_*); this module holds
the parameters (GenChiConfig), the source maps (SourceMap, load_sources), the per-sample synthesis
(synthesize) and the two writers: the step-1 HDF5 through daqsm/training_data/formats/chi_h5.py's
ChiH5Writer, and the NIfTI folder (chi_IIII.nii.gz, mask_IIII.nii.gz, params.json, each map with
its provenance sidecar).

Each sample is one source map (sample i uses source i mod the number of sources) put through the
augmentations of daqsm/training_data/augment.py: elastic deformation + small affine, a contrast change,
and (in a third of the samples) strong sources. Sample i draws from a generator seeded by (seed, i)
only, so a map does not depend on N, on the chunking or on other samples. Maps are written one at a
time (chunked): memory stays at a few volumes whatever N is; outputs are written under temporary
names and renamed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np

from daqsm.config import config_to_dict, param, write_config
from daqsm.errors import InputError, shape_mismatch
from daqsm.outputs import config_companion, temp_path
from daqsm.provenance import build_record
from daqsm.training_data.augment import AugmentParams, augment_sample
from daqsm.training_data.formats import chi_folder
from daqsm.training_data.volume_io import atomic_path, check_mask, read_volume

PROG = "genChi"  # the progress bar's label and the step name recorded in the HDF5 (formats/chi_h5.py)
COMPRESSIONS = ("gzip", "lzf", "none")


@dataclass(frozen=True)
class GenChiConfig(AugmentParams):
    """Step 1 parameters: the augmentations (AugmentParams) plus the run's own settings."""

    n_maps: int = param(500, "number of synthetic maps (also -n)", check="int>=1")
    seed: int = field(default=0, metadata={"help": "random seed; sample i uses (seed, i)"})
    voxel_size_mm: tuple | None = field(default=None, metadata={
        "type": float, "nargs": 3, "help": "override the source's voxel size, mm"})
    b0_dir: tuple | None = field(default=None, metadata={
        "type": float, "nargs": 3, "help": "override the B0 direction (voxel axes)"})
    compression: str = field(default="gzip", metadata={"choices": COMPRESSIONS,
                                                       "help": "HDF5 compression (gzip level 1 reads in MATLAB)"})
    workers: int = param(0, "threads for the warp (0: all cores)", check="int>=0")


@dataclass(frozen=True)
class GenChiCommandConfig(GenChiConfig):
    """The command's parameters: step 1's (GenChiConfig) plus its inputs and output, so that a config
    file can hold every one (`source`, `mask`, `output` included); the positional SOURCE... and
    `--mask`, `-o` are the same keys."""

    source: tuple = param((), "source chi map(s) in ppm: NIfTI, .mat (FILE.mat:VAR) or .h5 (FILE.h5:DATASET); "
                          "also given as SOURCE...", type=str, aliases=("source_paths",))
    mask: tuple = param((), "brain mask(s) 0/1 on the source grid: one for all sources or one per source", type=str)
    output: str = param("", "output .h5/.hdf5 file, or a folder (ending with '/') for NIfTI files", flags=("-o",))
    overwrite: bool = param(False, "replace an existing output")
    quiet: bool = param(False, "no progress bar")


#: the inputs argparse used to demand, now checked after the config file is read, and their spelling
INPUT_KEYS = ("source", "mask", "output")
INPUT_SPELLING = {"source": "SOURCE", "mask": "--mask", "output": "-o/--output"}


@dataclass
class SourceMap:
    """A source susceptibility map (ppm, zero outside the mask) with its mask and geometry."""

    chi: np.ndarray
    mask: np.ndarray
    voxel_size_mm: tuple
    b0_dir: tuple
    affine: np.ndarray
    path: str
    mask_path: str


def load_sources(source_paths, mask_paths, voxel_size_mm=None, b0_dir=None) -> list[SourceMap]:
    """Read source maps and masks; one mask for all sources or one per source.

    Raises InputError for shape mismatches, empty/non-binary masks, or sources on different grids.
    """
    source_paths, mask_paths = list(source_paths), list(mask_paths or [])
    if not mask_paths:
        raise InputError("--mask: a brain mask is needed for each source map (or one for all)")
    if len(mask_paths) not in (1, len(source_paths)):
        raise InputError(f"--mask: expected 1 or {len(source_paths)} masks (one per SOURCE), got {len(mask_paths)}")
    if len(mask_paths) == 1:
        mask_paths = mask_paths * len(source_paths)
    sources = []
    for path, mask_path in zip(source_paths, mask_paths):
        vol = read_volume(path)
        mask_vol = read_volume(mask_path, dtype=None)
        if mask_vol.data.shape != vol.data.shape:
            raise shape_mismatch(f"mask {mask_path}", mask_vol.data.shape, f"source {path}", vol.data.shape)
        mask = check_mask(mask_vol, str(mask_path), vol, f"source {path}")
        geom = vol.geometry(voxel_size_mm, b0_dir)
        affine = vol.affine if voxel_size_mm is None else np.diag(list(geom.voxel_size_mm) + [1.0])
        chi = np.where(mask, vol.data, 0).astype(np.float32)
        sources.append(SourceMap(chi, mask, geom.voxel_size_mm, geom.b0_dir, affine, str(path), str(mask_path)))
    first = sources[0]
    for other in sources[1:]:
        if other.chi.shape != first.chi.shape:
            raise shape_mismatch(f"source {other.path}", other.chi.shape, f"source {first.path}", first.chi.shape)
        if not np.allclose(other.voxel_size_mm, first.voxel_size_mm, rtol=1e-3):
            raise InputError(f"source {other.path}: voxel size {other.voxel_size_mm} differs from "
                             f"{first.path} {first.voxel_size_mm}; resample or give --voxel-size-mm")
    return sources


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index`: a function of (seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def synthesize(sources: list[SourceMap], config: GenChiConfig, index: int):
    """Sample `index`: (chi float32 (x, y, z) ppm, mask bool (x, y, z), drawn-parameter dict)."""
    which = index % len(sources)
    src = sources[which]
    chi, mask, drawn = augment_sample(src.chi, src.mask, sample_rng(config.seed, index), config,
                                      src.voxel_size_mm, workers=config.workers or None)
    drawn.update(index=int(index), source_index=int(which), seed=int(config.seed))
    return chi, mask, drawn


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=PROG, unit="map", disable=quiet, file=sys.stderr)


def write_maps_hdf5(path, sources: list[SourceMap], config: GenChiConfig, quiet: bool = False) -> str:
    """Generate config.n_maps maps into one step-1 HDF5 file (daqsm/training_data/formats/chi_h5.py), atomically."""
    import h5py

    from daqsm.training_data.formats.chi_h5 import ChiH5Writer

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = ChiH5Writer(h5, config.n_maps, sources[0].chi.shape, config.compression, _root_attrs(sources, config))
        with _progress(config.n_maps, quiet) as bar:
            for i in range(config.n_maps):
                chi, mask, drawn = synthesize(sources, config, i)
                writer.write(i, chi, mask, drawn, drawn["source_index"])
                bar.update(1)
    return str(path)


def _root_attrs(sources, config) -> dict:
    return {
        "step": "genChi",
        "voxel_size_mm": np.asarray(sources[0].voxel_size_mm, dtype=np.float64),
        "b0_dir": np.asarray(sources[0].b0_dir, dtype=np.float64),
        "affine": np.asarray(sources[0].affine, dtype=np.float64),
        "source_files": [os.path.basename(s.path) for s in sources],
        "mask_files": [os.path.basename(s.mask_path) for s in sources],
        "seed": int(config.seed),
        "n_maps": int(config.n_maps),
        "config": json.dumps(config_to_dict(config)),
    }


NIFTI_PATTERNS = chi_folder.PATTERNS


def write_maps_nifti(folder, sources: list[SourceMap], config: GenChiConfig, overwrite: bool = False,
                     quiet: bool = False) -> str:
    """Generate maps as the step-1 NIfTI folder (daqsm/training_data/formats/chi_folder.py).

    Files are written into a temporary folder beside OUT and moved in at the end.
    """
    folder = os.path.abspath(str(folder).rstrip("/\\") or "/")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmpdir = temp_path(folder, suffix="", folder=True)
    digits = chi_folder.digits_for(config.n_maps)
    what = {"chi": ("synthetic susceptibility map (step 1)", "ppm"), "mask": ("brain mask", None)}
    try:
        params = []
        with _progress(config.n_maps, quiet) as bar:
            for i in range(config.n_maps):
                chi, mask, drawn = synthesize(sources, config, i)
                src = sources[drawn["source_index"]]

                def sidecar(kind, src=src, drawn=drawn):
                    return build_record(what[kind][0], what[kind][1], sources=[src.path], b0_dir=src.b0_dir,
                                        voxel_size_mm=src.voxel_size_mm, d0=None, config=config_to_dict(config),
                                        Sample=drawn)

                chi_folder.write_map(tmpdir, i, digits, chi, mask, src.affine, sidecar)
                params.append(drawn)
                bar.update(1)
        chi_folder.write_params(tmpdir, sources[0].voxel_size_mm, sources[0].b0_dir, [s.path for s in sources],
                                params)
        write_config(config, config_companion(tmpdir, "genchi", folder=True))
        if os.path.isdir(folder) and overwrite:
            for name in chi_folder.previous_maps(folder):  # only what an earlier run of this command wrote
                if name not in os.listdir(tmpdir):
                    os.remove(os.path.join(folder, name))
        os.makedirs(folder, exist_ok=True)
        for name in sorted(os.listdir(tmpdir)):
            os.replace(os.path.join(tmpdir, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return folder


def previous_maps(folder) -> list[str]:
    """File names of the maps an earlier run wrote into `folder` (formats/chi_folder.previous_maps)."""
    return chi_folder.previous_maps(folder)
