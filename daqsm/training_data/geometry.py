"""Acquisition geometry that travels with a volume: grid shape, voxel size (mm) and B0 direction.

The B0 direction is a unit vector in **voxel axes** (not scanner axes). From a NIfTI affine A
(voxel -> scanner mm), with R = A[:3, :3] / voxel sizes (column-normalised), the scanner z axis
expressed in voxel axes is b = R^T [0, 0, 1] (docs/physics.md).

A box of the grid (`extract_patch`) lives here too, below the patch file (formats/patch_h5.py) and
step 3 (patches.py) that both cut patches, so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from daqsm.errors import InputError


@dataclass(frozen=True)
class Geometry:
    """Grid shape, voxel size in mm and unit B0 direction in voxel axes."""

    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "voxel_size_mm", check_voxel_size(self.voxel_size_mm))
        object.__setattr__(self, "b0_dir", normalise_b0_dir(self.b0_dir))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"shape: expected 3 positive sizes, got {self.shape}")

    def with_(self, **changes) -> "Geometry":
        """Copy with some fields replaced (e.g. a command-line override)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def check_voxel_size(voxel_size_mm) -> tuple[float, float, float]:
    """Validate a voxel size: three positive finite numbers in mm."""
    try:
        vs = tuple(float(v) for v in np.ravel(voxel_size_mm))
    except (TypeError, ValueError):
        raise InputError(f"voxel size: expected 3 numbers in mm, got {voxel_size_mm!r}") from None
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise InputError(f"voxel size: expected 3 positive numbers in mm, got {vs}")
    return vs


def normalise_b0_dir(b0_dir) -> tuple[float, float, float]:
    """Return the B0 direction as a unit 3-vector; a zero or non-finite vector is an error."""
    try:
        b = np.asarray(b0_dir, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError(f"B0 direction: expected 3 numbers, got {b0_dir!r}") from None
    if b.size != 3 or not np.all(np.isfinite(b)):
        raise InputError(f"B0 direction: expected 3 finite numbers, got {tuple(b.tolist())}")
    norm = float(np.linalg.norm(b))
    if norm < 1e-12:
        raise InputError(f"B0 direction: expected a non-zero vector, got length {norm:g}")
    return tuple(float(v) for v in b / norm)


def int_triple(value, name: str) -> tuple[int, int, int]:
    """An int or 3 ints -> 3 ints (patch, stride, tile and overlap sizes may differ per axis)."""
    values = tuple(int(v) for v in np.ravel(value))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"{name}: expected 1 or 3 integers, got {values}")
    return values


def voxel_size_from_affine(affine) -> tuple[float, float, float]:
    """Voxel size in mm: the column norms of the affine's 3x3 block."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def b0_dir_from_affine(affine) -> tuple[float, float, float]:
    """B0 (scanner z) in voxel axes from a voxel -> scanner affine: b = R^T [0, 0, 1]."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(a, axis=0, keepdims=True)
    if not np.all(norms > 0):  # a zero column: no voxel axis to express B0 in
        raise InputError(f"B0 direction: expected an affine with three non-zero voxel axes, found column norms "
                         f"{norms.ravel().tolist()}")
    rot = a / norms
    return normalise_b0_dir(rot.T @ np.array([0.0, 0.0, 1.0]))


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
