"""Patch cutting and the patch HDF5 layout (step 3, genRDFPatchesSyn.py; read by network_model/data.py).

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

HDF5 layout: training_data/formats/patch_h5.py (contract 2).
"""
from __future__ import annotations

import math

import numpy as np

from daqsm.errors import InputError
from training_data.formats.patch_h5 import (  # noqa: F401  (the patch file's home; names kept here for callers)
    FORMAT_VERSION,
    GROUP_DATASETS,
    INPUT_CONTRACT,
    PatchFileWriter,
    read_patch_file_info,
)

#: Target crop sizes are rounded up to this (2**depth for networks up to 4 poolings).
CROP_MULTIPLE = 16


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


def extract_patch(volume, origin, size) -> np.ndarray:
    """volume[origin : origin + size] as float32, zero-padded where the box leaves the volume."""
    volume = np.asarray(volume)
    origin = np.asarray(origin, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    out = np.zeros(tuple(size), dtype=np.float32)
    src_lo = np.maximum(origin, 0)
    src_hi = np.minimum(origin + size, volume.shape[:3])
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - origin
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = volume[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


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
