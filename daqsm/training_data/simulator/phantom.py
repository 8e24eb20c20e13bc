"""Built-in head phantom: MNI ICBM152 anatomy, RC2 labels, textured susceptibility, M0 and R2* at 7 T.

Anatomy: the MNI ICBM 152 nonlinear symmetric 2009a templates (T1, GM and WM probability maps,
brain mask) that ship inside nilearn's wheel (`nilearn.datasets.load_mni152_*`, loaded from the
package's own files: no download). Cite: Fonov VS et al., NeuroImage 2011;54:313-327 and
NeuroImage 2009;47:S102; nilearn (Abraham A et al., Front Neuroinform 2014;8:14).

Labels (RC2 convention, daqsm.training_data.simulator.tissue): inside the brain mask WM (8), GM (9) or CSF (10) by
the largest of pWM, pGM and 1 - pGM - pWM; the deep-grey nuclei (1-7) as ellipsoids at approximate
MNI positions (centres and semi-axes below are rounded, approximate atlas positions read for this
phantom, e.g. from the Harvard-Oxford subcortical atlas and standard neuroanatomy; they are not
copied from any atlas file); veins (11): the superior sagittal sinus as a 3 mm deep midline band
under the brain surface, straight sinus, vein of Galen and the paired internal cerebral veins as
tubes; an optional calcification (16, radius 2 mm) in the medial right hemisphere above the
thalamus, like the RC2 Sim2 calcification. Outside the brain: a 2 mm CSF layer, 6 mm of bone (13),
5 mm of scalp (15, muscle) and air (14). The brainstem is cut at MNI z = -62 mm.

The anatomy (labels, mask) is deterministic; the texture depends on `seed`.
Grid: MNI box x [-92, 92], y [-127, 93], z [-82, 102] mm at `resolution_mm`; axes are MNI
(x right, y anterior, z superior), so B0 along z is the third voxel axis.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from daqsm.errors import InputError
from daqsm.training_data.simulator.texture import texture_ppm as make_texture
from daqsm.training_data.simulator.tissue import CALCIFICATION, tissue_maps

FOV_MM = ((-92.0, 92.0), (-127.0, 93.0), (-82.0, 102.0))
BRAINSTEM_CUT_Z_MM = -62.0

# (label, centre mm (right hemisphere; mirrored when `bilateral`), semi-axes mm, bilateral).
# Painted in this order, later ones win where they overlap.
NUCLEI = (
    (7, (11.0, -18.0, 7.0), (7.0, 13.0, 8.0), True),      # thalamus
    (1, (12.0, 13.0, 9.0), (5.0, 8.0, 9.0), True),        # caudate head
    (1, (15.0, -6.0, 19.0), (3.5, 12.0, 5.0), True),      # caudate body
    (3, (25.0, 2.0, 1.0), (5.5, 14.0, 9.0), True),        # putamen
    (2, (19.0, -3.0, -1.0), (3.5, 7.0, 4.5), True),       # globus pallidus
    (6, (11.0, -16.0, -11.0), (3.5, 7.0, 3.0), True),     # substantia nigra
    (6, (11.0, -13.0, -4.0), (3.0, 4.0, 2.5), True),      # subthalamic nucleus
    (4, (5.0, -20.0, -8.0), (3.0, 3.5, 3.5), True),       # red nucleus
    (5, (15.0, -57.0, -35.0), (6.0, 8.0, 6.0), True),     # dentate nucleus
)
# Vein tubes: (polyline of MNI points in mm, radius mm, bilateral).
VEINS = (
    (((2.0, -5.0, 16.0), (2.0, -22.0, 14.0), (1.0, -38.0, 8.0), (0.0, -44.0, 4.0)), 1.5, True),  # ICV
    (((0.0, -44.0, 4.0), (0.0, -70.0, 0.0), (0.0, -92.0, -2.0)), 2.5, False),  # Galen + straight sinus
)
SSS_HALF_WIDTH_MM = 2.5
SSS_DEPTH_MM = 3.0
CALCIFICATION_CENTRE_MM = (8.0, -18.0, 50.0)
CALCIFICATION_RADIUS_MM = 2.0
# Shell thicknesses outside the brain mask (mm): CSF, bone, scalp.
SHELLS_MM = ((2.0, 10), (8.0, 13), (13.0, 15))


@dataclass(frozen=True)
class Phantom:
    """A head phantom on a regular grid.

    Attributes:
        chi_ppm: float32 (x, y, z) susceptibility in ppm of the brain tissue (0 outside `mask`;
            only brain tissue generates field, as in RC2).
        labels: uint8 (x, y, z) RC2 labels 1..16.
        mask: bool (x, y, z) brain mask.
        m0: float32 (x, y, z) effective proton density (spoiled GRE steady state, WM = 1).
        r2star_hz: float32 (x, y, z) R2* at 7 T in 1/s.
        texture_ppm: float32 (x, y, z) the texture part of chi_ppm (before masking).
        voxel_size_mm: (3,) voxel size in mm.
        affine: float64 (4, 4) voxel -> MNI mm.
    """

    chi_ppm: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    m0: np.ndarray
    r2star_hz: np.ndarray
    texture_ppm: np.ndarray
    voxel_size_mm: tuple
    affine: np.ndarray


def make_phantom(resolution_mm: float = 1.0, seed: int = 0, calcification: bool = True,
                 variant: str = "Sim2", texture: bool = True, gm_wm_contrast: float = 0.5) -> Phantom:
    """Build the built-in head phantom.

    Args:
        resolution_mm: isotropic voxel size in mm (0.5-4; 1 mm gives 184 x 220 x 184 voxels,
            3 mm gives 61 x 73 x 61).
        seed: texture seed (the anatomy does not depend on it).
        calcification: include the calcification (label 16, chi -3.3 ppm).
        variant: label susceptibilities, 'Sim1' or 'Sim2' (daqsm.training_data.simulator.tissue).
        texture: add the correlated texture and iron gradients (else piecewise constant).
        gm_wm_contrast: Sim1 contrast factor (daqsm.training_data.simulator.tissue).

    Returns:
        Phantom.
    """
    labels, mask, affine = phantom_anatomy(resolution_mm, calcification)
    vs = (float(resolution_mm),) * 3
    tex = make_texture(labels, vs, seed) if texture else np.zeros(labels.shape, np.float32)
    chi, m0, r2star = tissue_maps(labels, mask, tex, variant, gm_wm_contrast)
    return Phantom(chi, labels.copy(), mask.copy(), m0, r2star, tex, vs, affine.copy())


def phantom_grid(resolution_mm: float):
    """Grid shape and voxel -> MNI mm affine of the phantom at an isotropic resolution."""
    try:
        res = float(resolution_mm)
    except (TypeError, ValueError):
        raise InputError(f"resolution_mm: expected a number of mm, got {resolution_mm!r}") from None
    if not (0.3 <= res <= 8.0):
        raise InputError(f"resolution_mm: expected 0.3 to 8 mm, got {res:g}")
    shape = tuple(int(round((hi - lo) / res)) for lo, hi in FOV_MM)
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = [lo + res / 2.0 for lo, _ in FOV_MM]
    return shape, affine


@functools.lru_cache(maxsize=4)
def phantom_anatomy(resolution_mm: float = 1.0, calcification: bool = True):
    """Labels (uint8), brain mask (bool) and affine of the phantom (deterministic, cached, read-only)."""
    shape, affine = phantom_grid(resolution_mm)
    res = float(resolution_mm)
    coords = _mni_axes(shape, affine)
    mask = _resample_template("brain", shape, affine) > 0.5
    gm = _resample_template("gm", shape, affine)[mask]
    wm = _resample_template("wm", shape, affine)[mask]
    # Largest of pWM, pGM and pCSF = 1 - pGM - pWM (pGM >= pCSF <=> 2 pGM + pWM >= 1).
    tissue = np.where((wm >= gm) & (2.0 * wm + gm >= 1.0), 8, np.where(2.0 * gm + wm >= 1.0, 9, 10))
    labels = np.full(shape, 14, dtype=np.uint8)
    labels[mask] = tissue
    del gm, wm, tissue

    # Outside the mask: CSF, bone and scalp shells by distance from the brain surface.
    outside = _coarse_distance_mm(~mask, res)
    lower = 0.0
    for limit, label in SHELLS_MM:
        labels[(outside > lower) & (outside <= limit)] = label
        lower = limit
    del outside

    for label, centre, semi, bilateral in NUCLEI:
        for sign in ((1.0, -1.0) if bilateral else (1.0,)):
            c = (sign * centre[0], centre[1], centre[2])
            _paint(labels, mask, coords, c, semi, label)

    _paint_sagittal_sinus(labels, mask, coords, res)
    for points, radius, bilateral in VEINS:
        for sign in ((1.0, -1.0) if bilateral else (1.0,)):
            pts = [(sign * p[0], p[1], p[2]) for p in points]
            labels[_tube(coords, pts, max(radius, 0.75 * res)) & mask] = 11

    if calcification:
        radius = max(CALCIFICATION_RADIUS_MM, 0.75 * res)
        _paint(labels, mask, coords, CALCIFICATION_CENTRE_MM, (radius,) * 3, CALCIFICATION)
    for arr in (labels, mask, affine):
        arr.setflags(write=False)
    return labels, mask, affine


def _mni_axes(shape, affine):
    """Broadcastable MNI coordinates (mm) of the voxel centres: x (n,1,1), y (1,n,1), z (1,1,n)."""
    axes = []
    for i, n in enumerate(shape):
        c = affine[i, 3] + affine[i, i] * np.arange(n, dtype=np.float32)
        view = [1, 1, 1]
        view[i] = n
        axes.append(c.reshape(view))
    return tuple(axes)


def _box(coords, lo, hi):
    """Slices of the grid whose voxel centres lie in [lo, hi] (mm) per axis, or None if empty."""
    out = []
    for i, c in enumerate(coords):
        sel = np.nonzero((c.ravel() >= lo[i]) & (c.ravel() <= hi[i]))[0]
        if sel.size == 0:
            return None
        out.append(slice(int(sel[0]), int(sel[-1]) + 1))
    return tuple(out)


def _paint(labels, mask, coords, centre, semi, label):
    """Set `label` inside an axis-aligned ellipsoid (MNI mm) and the mask."""
    box = _box(coords, np.subtract(centre, semi), np.add(centre, semi))
    if box is None:
        return
    x, y, z = coords[0][box[0]], coords[1][:, box[1]], coords[2][:, :, box[2]]
    inside = ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + \
        ((z - centre[2]) / semi[2]) ** 2 <= 1.0
    labels[box][inside & mask[box]] = label


def _paint_sagittal_sinus(labels, mask, coords, res):
    """Superior sagittal sinus: midline band within SSS_DEPTH_MM under the surface (upper/posterior)."""
    half = max(SSS_HALF_WIDTH_MM, res / 2)
    depth_mm = max(SSS_DEPTH_MM, res)
    # The depth below the surface only needs the slab |x| <= half + depth: a zero (outside voxel)
    # closer than `depth_mm` to a band voxel lies inside that slab.
    slab = _box(coords, (-half - depth_mm - res, -1e9, -1e9), (half + depth_mm + res, 1e9, 1e9))
    depth = ndi.distance_transform_edt(mask[slab], sampling=res)
    x = coords[0][slab[0]]
    y, z = coords[1], coords[2]
    band = mask[slab] & (np.abs(x) <= half) & (depth <= depth_mm)
    band &= (z >= 10.0) | ((y <= -75.0) & (z >= -5.0))
    labels[slab][band] = 11


def _coarse_distance_mm(region, res):
    """Euclidean distance (mm) to the nearest False voxel, computed on a grid of about 2 mm.

    The shells it serves only shape the magnitude outside the brain, so ~1 mm accuracy is plenty
    and a subsampled transform is 8-27x cheaper.
    """
    step = max(1, int(2.0 // res))
    if step == 1:
        return ndi.distance_transform_edt(region, sampling=res).astype(np.float32)
    coarse = ndi.distance_transform_edt(region[::step, ::step, ::step], sampling=res * step).astype(np.float32)
    for axis in range(3):
        coarse = np.repeat(coarse, step, axis=axis)
    return coarse[: region.shape[0], : region.shape[1], : region.shape[2]]


def _tube(coords, points, radius):
    """Voxels within `radius` mm of a polyline (MNI mm); bounded to the polyline's box for speed."""
    x, y, z = coords
    out = np.zeros((x.shape[0], y.shape[1], z.shape[2]), dtype=bool)
    for a, b in zip(points[:-1], points[1:]):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        box = _box(coords, np.minimum(a, b) - radius, np.maximum(a, b) + radius)
        if box is None:
            continue
        sx, sy, sz = box
        px, py, pz = x[sx], y[:, sy], z[:, :, sz]
        ab = b - a
        t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
        t = np.clip(t, 0.0, 1.0)
        d2 = (px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2
        out[sx, sy, sz] |= d2 <= radius**2
    return out


def _resample_template(name: str, shape, affine) -> np.ndarray:
    """An MNI template (1 mm, from nilearn's package files) linearly resampled onto the grid."""
    src, src_affine = _brain_template() if name == "brain" else _load_template(name)
    res = affine[0, 0]
    if res > 1.2:  # anti-alias before sub-sampling a 1 mm template onto a coarse grid
        src = ndi.gaussian_filter(src, sigma=0.4 * res)
    out = src
    for axis in range(3):
        # Template voxel coordinate of each grid voxel centre along this axis.
        pos = (affine[axis, 3] + res * np.arange(shape[axis]) - src_affine[axis, 3]) / src_affine[axis, axis]
        out = _lerp_axis(out, pos, axis)
    return out


def _lerp_axis(data, pos, axis):
    """Linear interpolation of `data` at fractional indices `pos` along `axis`; zero outside."""
    n = data.shape[axis]
    i0 = np.floor(pos).astype(np.int64)
    w = (pos - i0).astype(np.float32)
    valid0 = (i0 >= 0) & (i0 < n)
    valid1 = (i0 + 1 >= 0) & (i0 + 1 < n)
    w0 = np.where(valid0, 1.0 - w, 0.0).astype(np.float32)
    w1 = np.where(valid1, w, 0.0).astype(np.float32)
    view = [1, 1, 1]
    view[axis] = pos.size
    a = np.take(data, np.clip(i0, 0, n - 1), axis=axis)
    a *= w0.reshape(view)
    b = np.take(data, np.clip(i0 + 1, 0, n - 1), axis=axis)
    b *= w1.reshape(view)
    a += b
    return a


@functools.lru_cache(maxsize=4)
def _load_template(name: str):
    """float32 1 mm MNI template `name` in ('t1', 'gm', 'wm', 'mask') and its affine."""
    import warnings

    from nilearn import datasets

    loader = {"t1": datasets.load_mni152_template, "gm": datasets.load_mni152_gm_template,
              "wm": datasets.load_mni152_wm_template, "mask": datasets.load_mni152_brain_mask}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = loader(resolution=1)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise InputError(f"MNI template {name}: expected a 1 mm RAS diagonal affine, got {affine[:3, :3].tolist()}")
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data.setflags(write=False)
    return data, affine


@functools.lru_cache(maxsize=1)
def _brain_template():
    """1 mm brain mask (float32 0/1): nilearn's mask, holes filled, brainstem cut at z = -62 mm."""
    data, affine = _load_template("mask")
    z = affine[2, 3] + np.arange(data.shape[2]) * affine[2, 2]
    mask = (data > 0.5) & (z >= BRAINSTEM_CUT_Z_MM)[None, None, :]
    data = ndi.binary_fill_holes(mask).astype(np.float32)
    data.setflags(write=False)
    return data, affine
