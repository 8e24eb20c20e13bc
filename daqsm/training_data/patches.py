"""Step 3 as a library: its parameters (PatchConfig), patch cutting (cut_patches, write_patches).

The command is genRDFPatchesSyn.py; the patch file is read by daqsm/network_model/data.py.

Grid (mode "patches"): along each axis of length n, patches of size p start at 0, s, 2s, ... while
they fit; when the last one stops short of the end, one more patch flush with the end (start n - p)
is added so every voxel is covered. Patches per axis: ceil((n - p) / s) + 1; per volume the product
over the axes, before the brain-fraction filter (keep a patch when mean(mask) >= threshold).
Crop (mode "crop"): one crop of the given size per volume, centred on the mask's bounding box,
zero-padded where it leaves the volume (volumes smaller than the crop are padded).

Target crops ("bbox", step 3's default): one crop per target volume centred on its mask's bounding
box, the same size for every target: the largest bounding box plus a margin, rounded up to a
multiple of 16 (`bbox_crop_size`). Data consistency needs the sources of the field: the true chi's
NDI inside a 32^3 patch is several times its whole-volume value (benchmarks/results_ndi_floor.md).

Targets may come from several acquisition protocols (voxel size, B0 direction, field strength, TE):
each crop records its own (format 3) and step 4 gives it its own dipole kernel and phase scale.
Sources share one geometry.

HDF5 layout: daqsm/training_data/formats/patch_h5.py (contract 2).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from daqsm.config import config_to_dict, option_name, param
from daqsm.errors import InputError
from daqsm.training_data.formats.patch_h5 import (  # noqa: F401  (the patch file's home; names kept here for callers)
    FORMAT_VERSION,
    GROUP_DATASETS,
    INPUT_CONTRACT,
    PatchFileWriter,
    Protocol,
    read_patch_file_info,
    same_value,
)
from daqsm.training_data.geometry import extract_patch, int_triple  # noqa: F401  (extract_patch: kept here for callers)
from daqsm.training_data.units import FIELD_UNITS
from daqsm.training_data.volume_io import atomic_path
from daqsm.validate import check_config

#: Target crop sizes are rounded up to this (2**depth for networks up to 4 poolings).
CROP_MULTIPLE = 16
#: the step's name in the patch file's attrs and in messages (the command that wrote it)
STEP = "genRDFPatchesSyn"
MODES = ("patches", "crop")


def axis_starts(n: int, p: int, stride: int) -> list[int]:
    """Patch starts along one axis (see the module doc); raises InputError when p > n or stride <= 0."""
    if stride <= 0:
        raise InputError(f"stride: expected a positive number of voxels, got {stride}")
    if p <= 0:
        raise InputError(f"patch size: expected a positive number of voxels, got {p}")
    if p > n:
        raise InputError(f"patch size {p} is larger than the volume ({n} voxels along an axis); "
                         "use a smaller --patch-size or --mode crop (pads)")
    starts = list(range(0, n - p + 1, stride))
    if starts[-1] + p < n:
        starts.append(n - p)
    return starts


def patch_count(shape, patch_size, stride) -> int:
    """Number of grid patches of a volume: prod over axes of ceil((n - p) / s) + 1."""
    return int(np.prod([math.ceil((n - p) / s) + 1 for n, p, s in zip(shape, patch_size, stride)]))


def grid_origins(shape, patch_size, stride) -> np.ndarray:
    """All grid patch origins, int (k, 3), in C order."""
    starts = [axis_starts(int(n), int(p), int(s)) for n, p, s in zip(shape, patch_size, stride)]
    mesh = np.meshgrid(*starts, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1).astype(np.int64)


def assemble_patches(patches, origins, shape) -> np.ndarray:
    """Put patches back into a volume (mean where they overlap, 0 where none lands); float32."""
    total = np.zeros(tuple(shape), dtype=np.float64)
    count = np.zeros(tuple(shape), dtype=np.float64)
    for patch, origin in zip(patches, origins):
        box = tuple(slice(int(o), int(o) + s) for o, s in zip(origin, np.shape(patch)))
        total[box] += patch
        count[box] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def brain_fraction(mask, origin, size) -> float:
    """Fraction of the patch at `origin` inside the mask."""
    return float(extract_patch(mask, origin, size).mean())


def bbox_crop_origin(mask, crop_size) -> np.ndarray:
    """Origin of a crop of `crop_size` centred on the mask's bounding box (may be < 0: padding)."""
    idx = np.argwhere(np.asarray(mask) > 0)
    if idx.size == 0:
        raise InputError("crop mode: the mask is empty")
    centre2 = idx.min(0) + idx.max(0)  # twice the bbox centre, kept integer
    return (centre2 + 1) // 2 - np.asarray(crop_size) // 2


def bbox_crop_size(masks, margin_vox: int = 8, multiple: int = CROP_MULTIPLE) -> tuple:
    """Size of a crop holding every mask's bounding box plus `margin_vox` per side, per axis rounded
    up to a multiple of `multiple` (raises InputError on an empty mask)."""
    size = np.zeros(3, dtype=np.int64)
    for mask in masks:
        idx = np.argwhere(np.asarray(mask) > 0)
        if idx.size == 0:
            raise InputError("target crop: a mask is empty")
        size = np.maximum(size, idx.max(0) - idx.min(0) + 1 + 2 * int(margin_vox))
    return tuple(int(-(-n // multiple) * multiple) for n in size)


def select_origins(mask, patch_size, stride, brain_threshold: float = 0.0, random_crops: int = 0,
                   rng: np.random.Generator | None = None, grid: bool = True, max_tries: int = 20) -> np.ndarray:
    """Patch origins of one volume: grid patches and random crops with enough brain; int (k, 3).

    Args:
        mask: (x, y, z) brain mask.
        patch_size, stride: 3 ints each.
        brain_threshold: keep patches with mean(mask) >= this (0 keeps all).
        random_crops: number of extra uniformly placed patches (each redrawn up to `max_tries`
            times until it passes the threshold, then dropped).
        rng: generator for the random crops.
        grid: include the grid patches.
    """
    shape = np.shape(mask)[:3]
    mask = np.asarray(mask, dtype=np.float32)
    out = []
    if grid:
        for origin in grid_origins(shape, patch_size, stride):
            if brain_fraction(mask, origin, patch_size) >= brain_threshold:
                out.append(origin)
    if random_crops:
        for n, p in zip(shape, patch_size):
            axis_starts(int(n), int(p), 1)  # same size checks as the grid
        rng = rng if rng is not None else np.random.default_rng(0)
        high = np.asarray(shape) - np.asarray(patch_size) + 1
        for _ in range(int(random_crops)):
            for _ in range(max_tries):
                origin = rng.integers(0, high)
                if brain_fraction(mask, origin, patch_size) >= brain_threshold:
                    out.append(origin)
                    break
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


@dataclass(frozen=True)
class PatchConfig:
    """Step 3 parameters (config file keys = option names with '_')."""

    patch_size: tuple = field(default=(64, 64, 64), metadata={
        "type": int, "help": "patch (or crop) size, voxels: 1 or 3 numbers", "check": "int>=1"})
    stride: tuple | None = field(default=None, metadata={
        "type": int, "nargs": "+", "help": "grid step, voxels: 1 or 3 numbers; default the patch size",
        "check": "int>=1"})
    mode: str = field(default="patches", metadata={"choices": MODES,
                                                   "help": "grid patches, or one crop per volume around the mask"})
    target_patch_size: tuple | None = field(default=None, metadata={
        "type": int, "nargs": "+", "check": "int>=1",
        "help": "target patch size, voxels (1 or 3 numbers); default: one whole-brain crop per target"})
    target_margin: int = field(default=8, metadata={"help": "voxels around the brain in whole-brain target crops",
                                                    "check": "int>=0"})
    brain_threshold: float = field(default=0.2, metadata={"help": "keep patches with this brain fraction or more",
                                                          "check": (0.0, 1.0)})
    grid: bool = field(default=True, metadata={"help": "cut the grid patches (patches mode)"})
    random_crops: int = field(default=0, metadata={"help": "extra randomly placed patches per volume",
                                                   "check": "int>=0"})
    seed: int = field(default=0, metadata={"help": "seed of the random crops"})
    compression: str = field(default="lzf", metadata={"choices": ("lzf", "gzip", "none"),
                                                      "help": "HDF5 compression of the patches"})
    field_units: str = field(default="ppm", metadata={"choices": FIELD_UNITS,
                                                      "help": "units of NIfTI/MAT source field files"})
    b0_tesla: float | None = field(default=None, metadata={"type": float, "help": "B0 in tesla for hz/rad fields",
                                                           "aliases": ("b0",)})
    te_s: float | None = field(default=None, metadata={"type": float, "help": "TE in seconds for rad fields",
                                                       "aliases": ("te",)})
    target_field_units: str = field(default="ppm", metadata={"choices": FIELD_UNITS,
                                                             "help": "units of --target-field files"})
    target_b0_tesla: float | None = field(default=None, metadata={"type": float, "help": "B0 of --target-field files"})
    target_te_s: float | None = field(default=None, metadata={"type": float,
                                                              "help": "TE of --target-field files (and of the weight)"})
    weight_echo: int = field(default=2, metadata={"help": "echo (1-based) of a 4-D magnitude used as weight",
                                                  "check": "int>=1"})
    voxel_size_mm: tuple | None = field(default=None, metadata={"type": float, "nargs": 3,
                                                                "help": "override the source voxel size, mm"})
    b0_dir: tuple | None = field(default=None, metadata={"type": float, "nargs": 3,
                                                         "help": "override the source B0 direction"})

    def __post_init__(self):
        size = int_triple(self.patch_size, "--patch-size")
        object.__setattr__(self, "patch_size", size)
        stride = size if self.stride is None else int_triple(self.stride, "--stride")
        object.__setattr__(self, "stride", stride)
        if self.target_patch_size is not None:
            object.__setattr__(self, "target_patch_size", int_triple(self.target_patch_size, "--target-patch-size"))
        check_config(self, spell=option_name)  # the declared number rules (daqsm/validate.py), the API's too
        if self.mode == "patches" and not self.grid and not self.random_crops:
            raise InputError("--no-grid needs --random-crops > 0 (no patch would be cut)")


@dataclass(frozen=True)
class PatchCommandConfig(PatchConfig):
    """Step 3's command: PatchConfig plus the inputs and output, so a config file can hold every one."""

    source: tuple = param((), "genChi output (.h5 with /chi,/mask[,/field], or its NIfTI folder), or chi files",
                          type=str)
    source_fields: tuple = param((), "field maps of the sources: .h5 with /field (step 2), a folder, or files "
                                 "(e.g. MATLAB)", type=str)
    source_masks: tuple = param((), "masks for chi files (1 or one per file)", type=str)
    target: tuple = param((), "target case folder(s) (contract 1)", type=str)
    target_field: tuple = param((), "target local field file(s)", type=str)
    target_mask: tuple = param((), "their brain mask(s)", type=str)
    target_weight: tuple = param((), "their magnitude (4-D: --weight-echo is used) or weight files", type=str)
    output: str = param("", "output patch file (.h5/.hdf5)", flags=("-o",))
    overwrite: bool = param(False, "replace an existing output")
    quiet: bool = param(False, "no progress bars")


def write_patches(out, sources, targets, config: PatchConfig, quiet: bool = False) -> dict:
    """Cut and write all patches to `out` (temp file + rename). Returns counts and timing.

    sources, targets: as cut_patches (daqsm.training_data.patch_inputs.SourceInputs, TargetInputs).
    """
    import h5py

    t0 = time.perf_counter()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        counts = cut_patches(h5, sources, targets, config, quiet)
    return {**counts, "seconds": time.perf_counter() - t0}


def cut_patches(h5, sources, targets, config: PatchConfig, quiet: bool = True) -> dict:
    """Cut the patches of every source and target volume into an open h5py.File (contract 2).

    Args:
        h5: an h5py.File open for writing (a file on disk, or in memory with driver="core").
        sources, targets: objects with len() and load(k) -> PatchVolume (patch_inputs.SourceInputs,
            TargetInputs or ArrayInputs) and `files` (names recorded in the group attrs).
        config: PatchConfig.

    Returns:
        {'source': N, 'target': M} patch counts.
    """
    from tqdm import tqdm

    crop = config.mode == "crop"
    stride = (-1, -1, -1) if crop else config.stride
    extra = {"brain_threshold": float(config.brain_threshold), "seed": int(config.seed),
             "config": json.dumps(config_to_dict(config)), "step": STEP}
    counts = {}
    target_bbox = config.target_patch_size is None
    target_size = config.target_patch_size
    if target_bbox and len(targets):
        target_size = bbox_crop_size((targets.load(k).mask for k in range(len(targets))), config.target_margin)
    writer = PatchFileWriter(h5, config.patch_size, stride, config.mode, config.compression, extra,
                             target_patch_size=target_size, target_mode="bbox" if target_bbox else "patches")
    for group_id, (group, inputs) in enumerate((("source", sources), ("target", targets))):
        first = None
        third = "chi" if group == "source" else "weight"
        bar = tqdm(range(len(inputs)), desc=f"{STEP} {group}", unit="vol", disable=quiet, file=sys.stderr)
        for k in bar:
            vol = inputs.load(k)
            if first is None:
                first = vol
            # targets may mix protocols (each crop keeps its own, format 3); the sources' field maps
            # feed only the L1 term and share the one geometry step 2 recorded
            for attr, name in (("voxel_size_mm", "voxel size"), ("b0_dir", "B0 direction"),
                               ("b0_tesla", "B0"), ("te_s", "TE")) if group == "source" else ():
                if not same_value(getattr(vol, attr), getattr(first, attr)):
                    raise InputError(f"{group} {vol.label}: {name} {getattr(vol, attr)} differs from "
                                     f"{first.label} {getattr(first, attr)}; write separate patch files")
            protocol = None
            if group == "target":
                protocol = Protocol(vol.voxel_size_mm, vol.b0_dir, vol.b0_tesla, vol.te_s)
            size = writer.sizes[group]
            if crop or (group == "target" and target_bbox):
                origins = bbox_crop_origin(vol.mask, size)[None]
            else:
                stride_g = config.stride if group == "source" else size
                rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(group_id, k)))
                origins = select_origins(vol.mask, size, stride_g, config.brain_threshold,
                                         config.random_crops, rng, config.grid)
            writer.append(group, k, origins, protocol, field=vol.field_ppm, mask=vol.mask, **{third: vol.third})
        counts[group] = writer.count(group)
        if counts[group] == 0 and len(inputs) and not quiet:
            print(f"{STEP}: warning: --{group}: no patch cut from {len(inputs)} volume(s)", file=sys.stderr)
        vs = first.voxel_size_mm if first else None
        b0 = first.b0_dir if first else None
        writer.set_group_attrs(group, vs, b0, inputs.files, getattr(first, "b0_tesla", None),
                               getattr(first, "te_s", None))
    if not sum(counts.values()):  # an empty patch file would only fail later, in step 4
        raise InputError(f"--source/--target: expected at least one patch, cut none (brains smaller than "
                         f"the patch size or --brain-threshold {config.brain_threshold:g} too high?)")
    return counts
