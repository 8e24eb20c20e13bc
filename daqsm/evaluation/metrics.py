"""QSM Challenge 2.0 (RC2) metrics, HFEN, XSIM, correlation and 2016-challenge metrics (numpy/scipy).

Definitions follow the QSM Challenge 2.0 paper (Marques et al., MRM 2021;86:526), each spelled out in its
function's docstring (row names below are the table's row names).
`x` is the reconstruction, `y` the ground truth, both in ppm on the same grid; `mask` is the brain
(evaluation) mask; `seg` holds the RC2 labels (1-6 deep grey matter, 7 thalamus, 8 WM, 9 GM,
11 veins, 16 calcification). All arithmetic is float64 so that metrics do not depend on the
input dtype. This module imports no TensorFlow.

A metric whose labels are absent from the segmentation is NaN and a note says why; the other
metrics are still computed (`MetricResult.notes`). Bad inputs (shape mismatch, NaN/Inf in the
reconstruction or truth, empty mask) raise `InputError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi

from daqsm.errors import InputError, shape_mismatch

RC2_ROWS = ("rmse", "rmse_detrend", "rmse_detrend_Tissue", "rmse_detrend_Blood", "rmse_detrend_DGM",
            "DeviationFromLinearSlope", "CalcStreak", "DeviationFromCalcMoment")
EXTRA_ROWS = ("HFEN", "XSIM", "correlation")

DGM_LABELS = (1, 2, 3, 4, 5, 6)
TISSUE_LABELS = (7, 8, 9)
VEIN_LABEL = 11
CALC_LABEL = 16
#: 2016 challenge `evaluation_mask` labels (data/README.md).
ROI_2016 = {1: "caudate", 2: "putamen", 3: "globus_pallidus", 4: "thalamus", 5: "substantia_nigra",
            6: "red_nucleus", 7: "wm1", 8: "wm2", 9: "wm3", 10: "wm4", 11: "wm5"}

_CUBE = np.ones((3, 3, 3), dtype=bool)
# Calcification threshold scan t = 0, -0.01, ..., -1.5 ppm (rounded so that t is exact in decimal).
CALC_THRESHOLDS_PPM = np.round(-0.01 * np.arange(151), 2)
_FLAT_SLOPE = 1e-6  # |p1| below this: detrending is undefined, report the plain NRMSE


@dataclass
class MetricResult:
    """Metric values (row -> float, NaN when undefined) and the notes explaining each NaN."""

    values: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


# --- input checks ----------------------------------------------------------------------------


def check_pair(recon, truth, mask=None, seg=None) -> tuple:
    """Validate and convert inputs: float64 volumes, bool mask, int segmentation.

    Args:
        recon: (x, y, z) reconstruction in ppm.
        truth: (x, y, z) ground truth in ppm.
        mask: optional (x, y, z) 0/1 evaluation mask.
        seg: optional (x, y, z) integer labels.

    Returns:
        (recon, truth, mask, seg) converted; mask/seg stay None when not given.
    """
    x = np.asarray(recon, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.ndim != 3:
        raise InputError(f"reconstruction: expected a 3-D volume, found shape {x.shape}")
    if x.shape != y.shape:
        raise shape_mismatch("reconstruction", x.shape, "ground truth", y.shape)
    for name, arr in (("reconstruction", x), ("ground truth", y)):
        if not np.all(np.isfinite(arr)):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"{name}: expected finite values, found {bad} NaN/Inf voxels")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != x.shape:
            raise shape_mismatch("mask", mask.shape, "reconstruction", x.shape)
        mask = mask.astype(bool) if mask.dtype == bool else mask > 0.5
        if not mask.any():
            raise InputError("mask: the mask is empty (no voxel is 1)")
    if seg is not None:
        seg = np.asarray(seg)
        if seg.shape != x.shape:
            raise shape_mismatch("segmentation", seg.shape, "reconstruction", x.shape)
        if seg.dtype.kind == "f":
            if not np.all(np.isfinite(seg)) or np.any(seg != np.round(seg)):
                raise InputError("segmentation: expected integer labels, found non-integer values")
        seg = seg.astype(np.int64)
    return x, y, mask, seg


# --- building block --------------------------------------------------------------------------


def nrmse_pair(x, y, region) -> tuple[float, float]:
    """Demeaned NRMSE and detrended NRMSE (percent) over a boolean region (module doc).

    Args:
        x: (x, y, z) reconstruction, ppm.
        y: (x, y, z) ground truth, ppm.
        region: (x, y, z) bool, the voxels compared.

    Returns:
        (nrmse, nrmse_detrend); NaN when the region is empty or the truth is constant on it.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return float("nan"), float("nan")
    xr = np.asarray(x, dtype=np.float64)[region]
    yr = np.asarray(y, dtype=np.float64)[region]
    xr = xr - xr.mean()
    yr = yr - yr.mean()
    norm_y = np.linalg.norm(yr)
    if norm_y == 0.0:
        return float("nan"), float("nan")
    plain = 100.0 * np.linalg.norm(xr - yr) / norm_y
    if yr.size < 2:
        return float(plain), float(plain)
    p1, p0 = np.polyfit(yr, xr, 1)
    if abs(p1) < _FLAT_SLOPE:
        return float(plain), float(plain)
    xc = (xr - p0) / p1
    return float(plain), float(100.0 * np.linalg.norm(xc - yr) / norm_y)


def label_region(seg, labels, mask=None) -> np.ndarray:
    """Voxels whose label is in `labels` (and inside `mask` when given)."""
    region = np.isin(seg, labels)
    return region & mask if mask is not None else region


def tissue_region(mask, seg) -> np.ndarray:
    """M ∩ seg ∈ {7, 8, 9}, eroded by one voxel (3x3x3)."""
    return ndi.binary_erosion(label_region(seg, TISSUE_LABELS, mask), structure=_CUBE)


def blood_region(mask, seg) -> np.ndarray:
    """M ∩ seg == 11, dilated by one voxel (3x3x3)."""
    return ndi.binary_dilation(label_region(seg, (VEIN_LABEL,), mask), structure=_CUBE)


def dgm_region(mask, seg) -> np.ndarray:
    """M ∩ seg ∈ {1..6}, eroded by one voxel (3x3x3)."""
    return ndi.binary_erosion(label_region(seg, DGM_LABELS, mask), structure=_CUBE)


def deviation_from_linear_slope(x, y, mask, seg) -> tuple[float, str | None]:
    """abs(1 - s) of the line mean_x ≈ s·mean_y + c over the deep-grey-matter labels 1..6 present.

    The label means are taken inside the evaluation mask. Fewer than two labels: NaN and a note.
    """
    mean_x, mean_y = [], []
    for label in DGM_LABELS:
        region = (seg == label) & mask
        if region.any():
            mean_x.append(x[region].mean())
            mean_y.append(y[region].mean())
    if len(mean_x) < 2:
        return float("nan"), f"DeviationFromLinearSlope: needs >= 2 of the labels 1-6, found {len(mean_x)}"
    if np.ptp(mean_y) == 0.0:
        return float("nan"), "DeviationFromLinearSlope: the true label means are all equal"
    slope, _ = np.polyfit(np.array(mean_y), np.array(mean_x), 1)
    return float(abs(1.0 - slope)), None


# --- calcification ---------------------------------------------------------------------------


@dataclass
class CalcGeometry:
    """Boxes around the calcification (bool volumes) and the true calcification C."""

    calc: np.ndarray
    cube: np.ndarray
    rim: np.ndarray
    no_cube: np.ndarray


def _box(bounds, grow, shape) -> np.ndarray:
    box = np.zeros(shape, dtype=bool)
    box[tuple(slice(max(lo - grow, 0), min(hi + grow, n)) for (lo, hi), n in zip(bounds, shape))] = True
    return box


def calc_geometry(seg) -> CalcGeometry | None:
    """Cube (bbox of C + 3), rim (cube + 4 more, minus cube), no-cube (rim box + 4 more, minus cube).

    Boxes are clipped to the volume. Returns None when label 16 is absent.
    """
    calc = np.asarray(seg) == CALC_LABEL
    if not calc.any():
        return None
    idx = np.nonzero(calc)
    bounds = [(int(i.min()), int(i.max()) + 1) for i in idx]
    cube = _box(bounds, 3, calc.shape)
    rim_box = _box(bounds, 3 + 4, calc.shape)
    outer = _box(bounds, 3 + 4 + 4, calc.shape)
    return CalcGeometry(calc, cube, rim_box & ~cube, outer & ~cube)


def calc_threshold(x, no_cube) -> float:
    """First t in 0, -0.01, ..., -1.5 ppm with no no-cube voxel of x below t (-1.5 if none)."""
    values = np.asarray(x, dtype=np.float64)[no_cube]
    lowest = values.min() if values.size else np.inf
    for t in CALC_THRESHOLDS_PPM:
        if not lowest < t:
            return float(t)
    return float(CALC_THRESHOLDS_PPM[-1])


def calcification_metrics(x, y, seg) -> tuple[float, float, list]:
    """CalcStreak and DeviationFromCalcMoment (module doc), NaN with notes when undefined.

    Returns:
        (calc_streak, deviation_from_calc_moment, notes). Moments are in ppm·voxel.
    """
    geom = calc_geometry(seg)
    if geom is None:
        note = "no calcification (label 16) in the segmentation"
        return float("nan"), float("nan"), [f"CalcStreak: {note}", f"DeviationFromCalcMoment: {note}"]
    notes = []
    t = calc_threshold(x, geom.no_cube)
    segmented = geom.cube & (x < t)
    n_seg = int(segmented.sum())
    moment_recon = n_seg * x[segmented].mean() if n_seg else 0.0
    moment_true = int(geom.calc.sum()) * y[geom.calc].mean()
    deviation = float(abs(moment_true - moment_recon))
    streak = float("nan")
    if n_seg == 0:
        notes.append(f"CalcStreak: no cube voxel below the threshold {t:g} ppm")
    elif geom.rim.sum() < 3 or np.ptp(y[geom.rim]) == 0.0:
        notes.append("CalcStreak: the rim has too few voxels or a constant truth to fit x ≈ a·y + b")
    else:
        a, b = np.polyfit(y[geom.rim], x[geom.rim], 1)
        residual = x[geom.rim] - (a * y[geom.rim] + b)
        streak = float(np.std(residual, ddof=1) / abs(x[segmented].mean()))
    return streak, deviation, notes


# --- the eight RC2 rows ----------------------------------------------------------------------


def rc2_metrics(recon, truth, seg, mask) -> MetricResult:
    """The eight RC2 rows for one reconstruction.

    Args:
        recon: float (x, y, z) reconstruction, ppm.
        truth: float (x, y, z) ground truth, ppm.
        seg: int (x, y, z) RC2 labels, or None (label-based rows become NaN with notes).
        mask: (x, y, z) 0/1 evaluation mask.

    Returns:
        MetricResult with the keys of RC2_ROWS in order.
    """
    x, y, m, s = check_pair(recon, truth, mask, seg)
    if m is None:
        raise InputError("mask: the evaluation mask is required")
    out = MetricResult()
    out.values["rmse"], out.values["rmse_detrend"] = nrmse_pair(x, y, m)
    if s is None:
        for row in RC2_ROWS[2:]:
            out.values[row] = float("nan")
            out.notes.append(f"{row}: no segmentation given")
        return out
    regions = (("rmse_detrend_Tissue", tissue_region, "labels 7-9 (eroded)"),
               ("rmse_detrend_Blood", blood_region, "label 11"),
               ("rmse_detrend_DGM", dgm_region, "labels 1-6 (eroded)"))
    for row, build, what in regions:
        region = build(m, s)
        value = nrmse_pair(x, y, region)[1]
        if not region.any():
            out.notes.append(f"{row}: no voxels of {what} inside the mask")
        elif np.isnan(value):
            out.notes.append(f"{row}: the truth is constant over {what}")
        out.values[row] = value
    out.values["DeviationFromLinearSlope"], note = deviation_from_linear_slope(x, y, m, s)
    if note:
        out.notes.append(note)
    streak, moment, notes = calcification_metrics(x, y, s)
    out.values["CalcStreak"], out.values["DeviationFromCalcMoment"] = streak, moment
    out.notes.extend(notes)
    return out


# --- image-similarity metrics ----------------------------------------------------------------


def hfen(recon, truth, mask, sigma_vox: float = 1.5) -> float:
    """High-frequency error norm (percent): NRMSE of the Laplacian-of-Gaussian filtered masked images.

    HFEN = 100 ||LoG(x·M) - LoG(y·M)||_M / ||LoG(y·M)||_M with a LoG of sigma 1.5 voxels
    (Ravishankar & Bresler, IEEE TMI 2011; used by the 2016 QSM challenge).
    """
    x, y, m, _ = check_pair(recon, truth, mask)
    lx = ndi.gaussian_laplace(x * m, sigma_vox, mode="constant")
    ly = ndi.gaussian_laplace(y * m, sigma_vox, mode="constant")
    denom = np.linalg.norm(ly[m])
    return float(100.0 * np.linalg.norm((lx - ly)[m]) / denom) if denom > 0 else float("nan")


def ssim(recon, truth, mask, window: int = 5, data_range: float = 1.0, k1: float = 0.01,
         k2: float = 0.03) -> float:
    """Mean structural similarity over the mask, with cubic box windows on the masked images.

    Args:
        recon, truth: (x, y, z) volumes, ppm (used as they are: no rescaling).
        mask: (x, y, z) 0/1; images are multiplied by it and the SSIM map averaged over it.
        window: edge of the cubic averaging window in voxels.
        data_range: L, the dynamic range in the stabilising constants C1 = (K1 L)^2, C2 = (K2 L)^2.
        k1, k2: SSIM constants.
    """
    x, y, m, _ = check_pair(recon, truth, mask)
    x, y = x * m, y * m
    mean = lambda a: ndi.uniform_filter(a, size=window, mode="constant")  # noqa: E731
    mx, my = mean(x), mean(y)
    vx = mean(x * x) - mx * mx
    vy = mean(y * y) - my * my
    cxy = mean(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap[m].mean())


def xsim(recon, truth, mask) -> float:
    """XSIM, the SSIM variant tuned for QSM: 5³ windows, L = 1, K1 = 0.01, K2 = 0.001, ppm images, no rescaling.

    Reference:
        Milovic C, et al. XSIM: a structural similarity index measure optimized for MRI QSM.
        Magn Reson Med (parameters as given in the module doc).
    """
    return ssim(recon, truth, mask, window=5, data_range=1.0, k1=0.01, k2=0.001)


def correlation(recon, truth, mask) -> float:
    """Pearson correlation coefficient of the two volumes inside the mask."""
    x, y, m, _ = check_pair(recon, truth, mask)
    xr, yr = x[m] - x[m].mean(), y[m] - y[m].mean()
    denom = np.linalg.norm(xr) * np.linalg.norm(yr)
    return float(xr @ yr / denom) if denom > 0 else float("nan")


def all_metrics(recon, truth, seg, mask) -> MetricResult:
    """The eight RC2 rows followed by HFEN, XSIM and correlation."""
    out = rc2_metrics(recon, truth, seg, mask)
    out.values["HFEN"] = hfen(recon, truth, mask)
    out.values["XSIM"] = xsim(recon, truth, mask)
    out.values["correlation"] = correlation(recon, truth, mask)
    return out


# --- 2016 challenge --------------------------------------------------------------------------


def nrmse_2016(recon, truth, mask) -> float:
    """The 2016 challenge's RMSE: 100 ||x - y||_M / ||y||_M, without demeaning (percent)."""
    x, y, m, _ = check_pair(recon, truth, mask)
    denom = np.linalg.norm(y[m])
    return float(100.0 * np.linalg.norm(x[m] - y[m]) / denom) if denom > 0 else float("nan")


def roi_means(recon, labels, names=None) -> MetricResult:
    """Mean of `recon` inside each label of a label map (rows `roi_<k>_<name>`); NaN for absent labels.

    Args:
        recon: (x, y, z) volume, ppm.
        labels: (x, y, z) integer label map, 0 = background.
        names: dict label -> name; default the 2016 `evaluation_mask` labels.
    """
    x = np.asarray(recon, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != x.shape:
        raise shape_mismatch("ROI label map", labels.shape, "reconstruction", x.shape)
    names = ROI_2016 if names is None else names
    out = MetricResult()
    present = sorted(set(np.unique(labels).tolist()) - {0} | set(names))
    for k in present:
        row = f"roi_{k}_{names.get(k, 'label')}"
        region = labels == k
        out.values[row] = float(x[region].mean()) if region.any() else float("nan")
        if not region.any():
            out.notes.append(f"{row}: label {k} absent from the ROI map")
    return out


def challenge2016_metrics(recon, chi_33, mask, roi_labels=None, chi_cosmos=None) -> MetricResult:
    """2016-challenge-style metrics: NRMSE/HFEN/SSIM(XSIM) vs chi_33 (and chi_cosmos), ROI means.

    Rows: nrmse_chi33, hfen_chi33, xsim_chi33, ssim_chi33, correlation_chi33 (and the *_cosmos
    equivalents when `chi_cosmos` is given), then `roi_<k>_<name>` means of `recon`.
    SSIM here uses L = the truth's range inside the mask, K = (0.01, 0.03), 5³ box windows; it is
    close to, not bit-identical with, the challenge's script.
    """
    out = MetricResult()
    refs = [("chi33", chi_33)] + ([("cosmos", chi_cosmos)] if chi_cosmos is not None else [])
    for tag, ref in refs:
        x, y, m, _ = check_pair(recon, ref, mask)
        out.values[f"nrmse_{tag}"] = nrmse_2016(x, y, m)
        out.values[f"hfen_{tag}"] = hfen(x, y, m)
        out.values[f"xsim_{tag}"] = xsim(x, y, m)
        out.values[f"ssim_{tag}"] = ssim(x, y, m, data_range=float(np.ptp(y[m])) or 1.0)
        out.values[f"correlation_{tag}"] = correlation(x, y, m)
    if roi_labels is not None:
        rois = roi_means(recon, roi_labels)
        out.values.update(rois.values)
        out.notes.extend(rois.notes)
    return out
