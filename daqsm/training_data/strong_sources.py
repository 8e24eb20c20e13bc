"""Strong susceptibility sources added to synthetic maps (step 1): haemorrhage- and calcification-like
solids (spheres, ellipsoids; the recipe's default) of random size, orientation and sign, and on
request vein-like thin cylinders, always positive (venous blood is paramagnetic: no negative veins).

Parameters come from daqsm.training_data.augment.AugmentParams (the `sources_*` fields). Sizes in voxels,
values in ppm. A source replaces the tissue value inside its solid and is kept inside the mask and
apart from the other sources (so each is exactly one 6-connected component).
"""
from __future__ import annotations

import math

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random rotation (from a random unit quaternion), 3x3."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def source_footprint(shape_name: str, semi_axes, rotation, half_length: float = 0.0):
    """Voxel offsets (k, 3) int of a solid centred at 0: ellipsoid/sphere or cylinder along local z."""
    a = np.asarray(semi_axes, dtype=np.float64)
    extent = int(math.ceil(max(a.max(), math.hypot(a[0], half_length)) + 1))
    grid = np.stack(np.meshgrid(*[np.arange(-extent, extent + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    local = grid @ np.asarray(rotation)  # rows: R^T v, coordinates in the solid's frame
    if shape_name == "cylinder":
        inside = ((local[:, 0] / a[0]) ** 2 + (local[:, 1] / a[0]) ** 2 <= 1.0) & (np.abs(local[:, 2]) <= half_length)
    else:
        inside = np.sum((local / a) ** 2, axis=1) <= 1.0
    return grid[inside]


def add_sources(chi, mask, rng: np.random.Generator, params, count: int | None = None,
                max_tries: int = 50):
    """Set a few solids inside the mask to a strong susceptibility (replacing the tissue value).

    Sources are kept apart (not touching) so each is one connected component; a source whose voxels
    would leave the mask or touch another is redrawn (up to `max_tries` times, then skipped).

    Returns:
        (float32 chi with sources, list of dicts: shape, centre, semi_axes_vox, half_length_vox,
        value_ppm, voxels).
    """
    chi = np.array(chi, dtype=np.float32, copy=True)
    mask = np.asarray(mask, dtype=bool)
    if count is None:
        count = int(rng.integers(params.sources_count[0], params.sources_count[1] + 1))
    inside = np.argwhere(mask)
    taken = np.zeros(mask.shape, dtype=bool)
    drawn = []
    for _ in range(count):
        for _ in range(max_tries):
            shape_name = str(params.sources_shapes[rng.integers(len(params.sources_shapes))])
            lo, hi = params.sources_semi_axes_vox
            if shape_name == "sphere":
                semi = np.full(3, rng.uniform(lo, hi))
            elif shape_name == "ellipsoid":
                semi = rng.uniform(lo, hi, 3)
            else:
                semi = np.full(3, rng.uniform(lo, min(hi, max(lo, 2.0))))  # veins are thin
            half = float(rng.uniform(*params.sources_cylinder_half_length_vox)) if shape_name == "cylinder" else 0.0
            rot = random_rotation(rng)
            if shape_name == "sphere":
                rot = np.eye(3)  # a digital sphere's voxel set depends on its rotation; keep it canonical
            sign = -1.0 if rng.uniform() < params.sources_negative_fraction else 1.0
            if shape_name == "cylinder":
                sign = 1.0  # veins are paramagnetic
            value = sign * abs(rng.normal(params.sources_value_ppm, params.sources_value_sd_ppm))
            centre = inside[rng.integers(len(inside))]
            vox = source_footprint(shape_name, semi, rot, half) + centre
            if np.any(vox < 0) or np.any(vox >= np.array(mask.shape)):
                continue
            idx = tuple(vox.T)
            if not mask[idx].all() or taken[idx].any():
                continue
            chi[idx] = np.float32(value)
            # Mark the source and a one-voxel rim so the next one cannot touch it.
            ring = (vox[:, None, :] + np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0],
                                                 [0, 0, 1], [0, 0, -1]])[None]).reshape(-1, 3)
            ring = np.clip(ring, 0, np.array(mask.shape) - 1)
            taken[tuple(ring.T)] = True
            drawn.append({"shape": shape_name, "centre": centre.tolist(), "semi_axes_vox": semi.tolist(),
                          "half_length_vox": half, "value_ppm": float(np.float32(value)), "voxels": len(vox)})
            break
    return chi, drawn
