"""Augmentations that turn one susceptibility map into many (step 1, genChi.py).

Recipe (docs/physics.md, "Synthetic training data from a COSMOS map"): elastic deformation plus a
small random affine, a contrast change among linear / gamma / log / sigmoid maps (or none), and in
a third of the samples a few high-susceptibility sources (haemorrhage-, calcification- or
vein-like). The mask follows the deformation (largest connected component, optional erosion) and
the map is zero outside it.

Units: chi in ppm; lengths in voxels unless the name says mm. Arrays are float32 (x, y, z).

Speed (the target is <= 1.5 s per 160^3 map on 2 cores): the smooth displacement is drawn on a
coarse grid and upsampled by separable linear interpolation (three small matrix products) instead
of Gaussian-filtering full-resolution noise; the warp (`scipy.ndimage.map_coordinates`) only visits
the output box that can receive brain, warps the mask there by nearest neighbour, interpolates chi
(order 1) only inside the warped mask, and runs in slabs on threads (map_coordinates releases the
GIL). Strong sources live in daqsm/training_data/strong_sources.py.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from daqsm.config import option_name, param
from daqsm.errors import InputError
from daqsm.training_data.strong_sources import add_sources, random_rotation, source_footprint  # noqa: F401 (re-export)
from daqsm.validate import check_config

CONTRAST_FAMILIES = ("none", "linear", "gamma", "log", "sigmoid")
SOURCE_SHAPES = ("sphere", "ellipsoid", "cylinder")
#: The recipe's sources (haemorrhage- and calcification-like solids); cylinders only on request.
DEFAULT_SOURCE_SHAPES = ("sphere", "ellipsoid")


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of the augmentations; every one is a genChi option (`--elastic-alpha 2.0`)."""

    elastic: bool = param(True, "smooth random displacement")
    elastic_alpha: float = param(2.0, "displacement amplitude as a multiple of N (largest axis, voxels), Simard "
                                 "convention", check="non_negative")
    elastic_sigma: float = param(0.08, "displacement smoothness (Gaussian sigma) as a multiple of N",
                                 check="non_negative")
    affine: bool = param(True, "small random rotation, scaling and shift")
    rotation_deg: float = param(5.0, "max rotation about each axis, degrees", check="non_negative")
    scale_range: float = param(0.05, "isotropic scale drawn in 1 +- this", check=(0.0, 0.5, False, True))
    shift_vox: float = param(3.0, "max shift along each axis, voxels", check="non_negative")
    contrast: bool = param(True, "random contrast change of tissue values")
    contrast_families: tuple = param(CONTRAST_FAMILIES, "families drawn from with equal probability",
                                     choices=CONTRAST_FAMILIES)
    contrast_factor_sd: float = param(0.1, "sd of the overall factor ~ N(1, sd), clipped to [0.5, 1.5]",
                                      check="non_negative")
    gamma_range: tuple = param((0.7, 1.4), "exponent range of the gamma family", nargs=2, type=float,
                               check="range>0")
    log_strength_range: tuple = param((1.0, 10.0), "k of sign(x) log(1+k|x|)/log(1+k)", nargs=2, type=float,
                                      check="range>0")
    sigmoid_strength_range: tuple = param((0.5, 3.0), "k of tanh(kx)/tanh(k)", nargs=2, type=float,
                                          check="range>0")
    sources: bool = param(True, "add high-susceptibility sources")
    sources_probability: float = param(1.0 / 3.0, "fraction of samples with sources", check=(0.0, 1.0))
    sources_count: tuple = param((1, 5), "min and max number of sources", nargs=2, type=int, check="range>=0")
    sources_shapes: tuple = param(DEFAULT_SOURCE_SHAPES, "shapes drawn from; 'cylinder' (vein-like) is never "
                                  "negative", choices=SOURCE_SHAPES)
    sources_semi_axes_vox: tuple = param((1.0, 5.0), "semi-axis (radius) range, voxels", nargs=2, type=float,
                                         check="range>0")
    sources_cylinder_half_length_vox: tuple = param((4.0, 12.0), "half-length range of cylinders (vein-like), "
                                                    "voxels", nargs=2, type=float, check="range>0")
    sources_value_ppm: float = param(2.0, "mean |chi| of a source, ppm")
    sources_value_sd_ppm: float = param(0.1, "sd of a source's chi, ppm", check="non_negative")
    sources_negative_fraction: float = param(0.5, "fraction of negative (calcification-like) spheres/ellipsoids; "
                                             "cylinders are positive", check=(0.0, 1.0))
    largest_component: bool = param(True, "keep the mask's largest component")
    erode_vox: int = param(1, "mask erosion after the warp, voxels", check="int>=0")

    def __post_init__(self):
        # the number rules are the fields' own (`check`), the config layer's: here for a config built directly
        check_config(self, spell=option_name)
        if not self.contrast_families:
            raise InputError("--contrast-families: expected at least one family, got none")
        if not self.sources_shapes:
            raise InputError("--sources-shapes: expected at least one shape, got none")


# --- geometry: affine and smooth displacement --------------------------------------------------


def rotation_matrix(angles_rad) -> np.ndarray:
    """Rotation about x, then y, then z (angles in radians), 3x3 float64."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, params: AugmentParams, voxel_size_mm=(1.0, 1.0, 1.0)):
    """Draw the output -> input voxel map q = M p' + t (p' = p - centre); rotation in mm space.

    Returns:
        (M 3x3 float64, shift 3 float64 in voxels, dict of the drawn values).
    """
    if not params.affine:
        return np.eye(3), np.zeros(3), {"rotation_deg": [0.0] * 3, "scale": 1.0, "shift_vox": [0.0] * 3}
    angles = rng.uniform(-params.rotation_deg, params.rotation_deg, 3)
    scale = 1.0 + rng.uniform(-params.scale_range, params.scale_range)
    shift = rng.uniform(-params.shift_vox, params.shift_vox, 3)
    vs = np.asarray(voxel_size_mm, dtype=np.float64)
    # Rotate physical positions (mm), not voxel indices, so anisotropic voxels do not shear.
    matrix = np.diag(1.0 / vs) @ rotation_matrix(np.deg2rad(angles)) @ np.diag(vs) / scale
    return matrix, shift, {"rotation_deg": angles.tolist(), "scale": float(scale), "shift_vox": shift.tolist()}


def _linear_upsample_matrix(n_fine: int, n_coarse: int, spacing: float) -> np.ndarray:
    """(n_fine, n_coarse) matrix of linear interpolation from a grid of `spacing` fine voxels."""
    pos = np.arange(n_fine) / spacing
    lo = np.minimum(np.floor(pos).astype(int), n_coarse - 2)
    frac = pos - lo
    mat = np.zeros((n_fine, n_coarse), dtype=np.float32)
    mat[np.arange(n_fine), lo] = 1.0 - frac
    mat[np.arange(n_fine), lo + 1] = frac
    return mat


def smooth_displacement(rng: np.random.Generator, shape, alpha_vox: float, sigma_vox: float) -> np.ndarray:
    """Random smooth displacement field, float32 (3, x, y, z) in voxels.

    Statistically it matches the Simard et al. (ICDAR 2003) recipe alpha * gaussian_filter(U(-1, 1),
    sigma), whose per-component RMS is alpha * sqrt(1/3) * (2 sqrt(pi) sigma)^(-3/2); here the noise
    is drawn on a grid of spacing sigma/2, smoothed there (sigma = 2 coarse voxels), scaled to that
    RMS and upsampled linearly — about 100x cheaper than filtering full-resolution noise.
    """
    shape = tuple(int(n) for n in shape)
    rms = alpha_vox * math.sqrt(1.0 / 3.0) * (2.0 * math.sqrt(math.pi) * max(sigma_vox, 1e-6)) ** -1.5
    spacing = max(sigma_vox / 2.0, 1.0)
    sigma_coarse = sigma_vox / spacing
    coarse_shape = tuple(int(math.ceil((n - 1) / spacing)) + 2 for n in shape)
    noise = rng.standard_normal((3,) + coarse_shape)
    smooth = ndi.gaussian_filter(noise, (0, sigma_coarse, sigma_coarse, sigma_coarse), mode="wrap")
    # Unit-variance white noise filtered by a normalised Gaussian has variance (2 sqrt(pi) s)^-3.
    smooth *= rms / (2.0 * math.sqrt(math.pi) * max(sigma_coarse, 1e-6)) ** -1.5
    mats = [_linear_upsample_matrix(n, m, spacing) for n, m in zip(shape, coarse_shape)]
    out = np.einsum("xa,dabe->dxbe", mats[0], smooth.astype(np.float32), optimize=True)
    out = np.einsum("yb,dxbe->dxye", mats[1], out, optimize=True)
    out = np.einsum("ze,dxye->dxyz", mats[2], out, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def _bbox(mask) -> tuple[np.ndarray, np.ndarray]:
    idx = [np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return np.array([i[0] for i in idx]), np.array([i[-1] for i in idx])


def warp(chi, mask, matrix=None, shift=None, displacement=None, workers: int | None = None):
    """Resample chi (linear) and mask (nearest) at q(p) = M (p - c) + c + shift + d(p).

    Args:
        chi: float32 (x, y, z), ppm, zero outside the mask.
        mask: bool (x, y, z).
        matrix: 3x3 output -> input map about the grid centre c (identity if None).
        shift: 3 voxels (zero if None).
        displacement: float32 (3, x, y, z) voxels, or None.
        workers: threads (slabs along x); default os.cpu_count(). The result does not depend on it.

    Returns:
        (chi float32, mask bool), both (x, y, z); chi is interpolated only inside the warped mask
        and is zero elsewhere (and wherever q falls outside the input).
    """
    shape = np.array(chi.shape)
    matrix = np.eye(3) if matrix is None else np.asarray(matrix, dtype=np.float64)
    shift = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64)
    centre = (shape - 1) / 2.0
    # Output box that can receive brain: invert the affine on the corners of the input mask box,
    # widened by the largest displacement (+1 voxel for the linear interpolation's support).
    lo, hi = _bbox(mask)
    dmax = float(np.abs(displacement).max()) if displacement is not None else 0.0
    lo_in, hi_in = lo - 1 - dmax, hi + 1 + dmax
    corners = np.array([[a, b, c] for a in (lo_in[0], hi_in[0]) for b in (lo_in[1], hi_in[1])
                        for c in (lo_in[2], hi_in[2])])
    out_pts = (np.linalg.inv(matrix) @ (corners - centre - shift).T).T + centre
    o_lo = np.clip(np.floor(out_pts.min(0)).astype(int), 0, shape - 1)
    o_hi = np.clip(np.ceil(out_pts.max(0)).astype(int), 0, shape - 1)
    chi = np.asarray(chi, dtype=np.float32)
    mask_u8 = np.asarray(mask, dtype=np.uint8)
    chi_out = np.zeros(chi.shape, dtype=np.float32)
    mask_out = np.zeros(chi.shape, dtype=np.uint8)

    def slab(x_lo: int, x_hi: int) -> None:
        # One slab of output planes: coordinates built here keep the peak memory per thread small;
        # map_coordinates releases the GIL, so slabs run in parallel on threads.
        axes = [np.arange(x_lo, x_hi + 1, dtype=np.float64) - centre[0]] + [
            np.arange(a, b + 1, dtype=np.float64) - c for a, b, c in zip(o_lo[1:], o_hi[1:], centre[1:])]
        box = (slice(x_lo, x_hi + 1), slice(o_lo[1], o_hi[1] + 1), slice(o_lo[2], o_hi[2] + 1))
        coords = np.empty((3,) + tuple(len(a) for a in axes), dtype=np.float64)
        for i in range(3):
            coords[i] = (matrix[i, 0] * axes[0][:, None, None] + matrix[i, 1] * axes[1][None, :, None]
                         + matrix[i, 2] * axes[2][None, None, :]) + (centre[i] + shift[i])
            if displacement is not None:
                coords[i] += displacement[(i,) + box]
        mask_box = ndi.map_coordinates(mask_u8, coords, order=0, mode="constant", cval=0,
                                       prefilter=False, output=np.uint8)
        mask_out[box] = mask_box
        # chi is needed only inside the warped mask (the map is zero outside it): interpolating
        # there alone skips ~2/3 of the box.
        inside = mask_box.astype(bool)
        chi_box = np.zeros(mask_box.shape, dtype=np.float32)
        chi_box[inside] = ndi.map_coordinates(chi, coords[:, inside], order=1, mode="constant", cval=0.0,
                                              prefilter=False, output=np.float32)
        chi_out[box] = chi_box

    workers = max(1, int(workers or os.cpu_count() or 1))
    edges = np.linspace(o_lo[0], o_hi[0] + 1, min(workers, o_hi[0] - o_lo[0] + 1) + 1).astype(int)
    jobs = [(a, b - 1) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    if len(jobs) == 1:
        slab(*jobs[0])
    else:
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda job: slab(*job), jobs))
    return chi_out, mask_out.astype(bool)


def clean_mask(mask, largest_component: bool = True, erode_vox: int = 0) -> np.ndarray:
    """Largest 6-connected component (optional), then erosion by `erode_vox` voxels; bool."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    # Work on the mask's bounding box plus a one-voxel rim: same result, a fraction of the cost.
    lo, hi = _bbox(mask)
    box = tuple(slice(max(a - 1, 0), b + 2) for a, b in zip(lo, hi))
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = _clean_box(mask[box], largest_component, erode_vox)
    return out


def _clean_box(mask, largest_component: bool, erode_vox: int) -> np.ndarray:
    if largest_component:
        labels, count = ndi.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
    if erode_vox > 0:
        mask = ndi.binary_erosion(mask, iterations=int(erode_vox))
    return mask


# --- contrast ---------------------------------------------------------------------------------


def contrast_curve(x, family: str, strength: float = 1.0) -> np.ndarray:
    """Odd, strictly increasing map of normalised values x (x = chi / scale); f(0) = 0, f(1) = 1."""
    x = np.asarray(x, dtype=np.float32)
    k = np.float32(strength)
    if family in ("none", "linear"):
        return x
    if family == "gamma":
        return np.sign(x) * np.abs(x) ** k
    if family == "log":
        return np.sign(x) * np.log1p(k * np.abs(x)) / np.float32(math.log1p(strength))
    if family == "sigmoid":
        return np.tanh(k * x) / np.float32(math.tanh(strength))
    raise InputError(f"contrast family: unknown {family!r}; expected one of {', '.join(CONTRAST_FAMILIES)}")


def draw_contrast(rng: np.random.Generator, params: AugmentParams) -> dict:
    """Draw a family, its strength and the overall factor."""
    if not params.contrast:
        return {"family": "none", "factor": 1.0, "strength": 1.0}
    family = str(params.contrast_families[rng.integers(len(params.contrast_families))])
    ranges = {"gamma": params.gamma_range, "log": params.log_strength_range,
              "sigmoid": params.sigmoid_strength_range}
    strength = float(rng.uniform(*ranges[family])) if family in ranges else 1.0
    factor = 1.0 if family == "none" else float(np.clip(rng.normal(1.0, params.contrast_factor_sd), 0.5, 1.5))
    return {"family": family, "factor": factor, "strength": strength}


def apply_contrast(chi, mask, family: str, factor: float = 1.0, strength: float = 1.0, scale=None):
    """chi' = factor * scale * f(chi / scale) inside the mask, 0 outside (sign-preserving).

    Args:
        chi: float32 (x, y, z) ppm.
        mask: bool (x, y, z).
        family, strength: see `contrast_curve`.
        factor: overall positive factor.
        scale: ppm value mapped to itself by f; default the 99th percentile of |chi| in the mask.

    Returns:
        (float32 (x, y, z) ppm, scale used).
    """
    mask = np.asarray(mask, dtype=bool)
    if scale is None:
        values = np.abs(chi[mask])
        scale = float(np.percentile(values, 99)) if values.size else 1.0
    scale = scale if scale > 0 else 1.0
    out = np.zeros_like(chi, dtype=np.float32)
    out[mask] = np.float32(factor * scale) * contrast_curve(chi[mask] / np.float32(scale), family, strength)
    return out, scale


# --- the whole recipe --------------------------------------------------------------------------


def augment_sample(chi, mask, rng: np.random.Generator, params: AugmentParams, voxel_size_mm=(1.0, 1.0, 1.0),
                   workers: int | None = None):
    """One synthetic map: warp -> mask clean-up -> contrast -> sources; zero outside the mask.

    Args:
        chi: float32 (x, y, z) source map in ppm.
        mask: bool (x, y, z) brain mask of the source.
        rng: the sample's generator (genChi derives it from (seed, index)).
        params: AugmentParams.
        voxel_size_mm: for the rotation (done in mm).
        workers: threads for the warp (see `warp`).

    Returns:
        (chi float32 (x, y, z) ppm, mask bool (x, y, z), dict of the drawn parameters).
    """
    mask = np.asarray(mask, dtype=bool)
    chi = np.where(mask, chi, 0).astype(np.float32)
    n_max = max(chi.shape)
    drawn: dict = {}
    # Always draw every random number, even for switched-off steps, so one switch does not change
    # what the other steps draw for the same seed.
    matrix, shift, drawn["affine"] = random_affine(rng, params, voxel_size_mm)
    alpha, sigma = params.elastic_alpha * n_max, params.elastic_sigma * n_max
    disp_rng = np.random.default_rng(rng.integers(2**63))
    displacement = None
    if params.elastic and alpha > 0:
        displacement = smooth_displacement(disp_rng, chi.shape, alpha, sigma)
    drawn["elastic"] = {"alpha_vox": alpha if params.elastic else 0.0, "sigma_vox": sigma,
                        "max_displacement_vox": float(np.abs(displacement).max()) if displacement is not None else 0.0}
    if params.affine or displacement is not None:
        chi, mask = warp(chi, mask, matrix, shift, displacement, workers)
    mask = clean_mask(mask, params.largest_component, params.erode_vox)
    if not mask.any():
        raise InputError("augmented mask is empty: lower erode_vox or the deformation amplitude")
    contrast = draw_contrast(rng, params)
    if contrast["family"] != "none":  # skipping keeps "none" bit-exact (no x * s / s rounding)
        chi, contrast["scale_ppm"] = apply_contrast(chi, mask, contrast["family"], contrast["factor"],
                                                    contrast["strength"])
    drawn["contrast"] = contrast
    src_rng = np.random.default_rng(rng.integers(2**63))
    with_sources = bool(rng.uniform() < params.sources_probability) and params.sources
    drawn["sources"] = []
    if with_sources:
        chi, drawn["sources"] = add_sources(chi, mask, src_rng, params)
    chi[~mask] = 0.0
    return chi, mask, drawn
