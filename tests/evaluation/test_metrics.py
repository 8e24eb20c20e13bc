"""RC2 metrics: invariants (perfect, half-scaled reconstructions) and worked examples by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.evaluation import metrics


def _case(shape=(32, 32, 32), seed=0, with_calc=True):
    """Textured truth with DGM labels 1-6, tissue 7-9, a vein (11) and optionally a calcification (16)."""
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 0.02, shape)
    seg = np.zeros(shape, dtype=np.uint16)
    seg[3:29, 3:29, 3:29] = 8
    seg[3:29, 3:29, 3:8] = 9
    seg[20:27, 4:10, 9:15] = 7
    for i, label in enumerate(range(1, 7)):
        seg[6 + 4 * (i % 3):9 + 4 * (i % 3), 6 + 5 * (i // 3):9 + 5 * (i // 3), 10:14] = label
        y[seg == label] += 0.03 * label
    seg[14:16, 20:27, 10:12] = 11
    y[seg == 11] += 0.3
    if with_calc:
        seg[20:22, 20:22, 20:22] = 16
        y[seg == 16] = -2.0
    mask = np.zeros(shape, dtype=bool)
    mask[2:30, 2:30, 2:30] = True
    return y.astype(np.float32), seg, mask


def test_perfect_reconstruction_gives_zeros():
    y, seg, mask = _case()
    res = metrics.all_metrics(y, y, seg, mask)
    assert res.notes == []
    for row in metrics.RC2_ROWS:
        assert res.values[row] == pytest.approx(0.0, abs=1e-9), row
    assert res.values["HFEN"] == pytest.approx(0.0, abs=1e-9)
    assert res.values["XSIM"] == pytest.approx(1.0)
    assert res.values["correlation"] == pytest.approx(1.0)


def test_half_scaled_reconstruction():
    y, seg, mask = _case()
    res = metrics.rc2_metrics(0.5 * y, y, seg, mask)
    assert res.values["rmse"] == pytest.approx(50.0, rel=1e-6)
    for row in ("rmse_detrend", "rmse_detrend_Tissue", "rmse_detrend_Blood", "rmse_detrend_DGM"):
        assert res.values[row] == pytest.approx(0.0, abs=1e-6), row
    assert res.values["DeviationFromLinearSlope"] == pytest.approx(0.5, rel=1e-6)
    # the calcification of truth -2 ppm x 8 voxels = -16; half of it is reconstructed
    assert res.values["DeviationFromCalcMoment"] == pytest.approx(8.0, rel=1e-5)


def test_offset_does_not_change_demeaned_metrics():
    y, seg, mask = _case()
    # float32 rounding of y + 0.7 leaves ~1e-5 percent
    assert metrics.nrmse_pair(y + 0.7, y, mask) == pytest.approx((0.0, 0.0), abs=1e-3)


def test_nrmse_pair_worked_example():
    # y = (-1, 0, 1) (mean 0), x = (0, 0, 3): xr = (-1, -1, 2), ||xr - yr|| = sqrt(0 + 1 + 1) = sqrt(2)
    # nrmse = 100 sqrt(2) / sqrt(2) = 100; line through (yr, xr): slope 1.5, intercept 0,
    # xc = xr / 1.5 = (-2/3, -2/3, 4/3); xc - yr = (1/3, -2/3, 1/3), norm sqrt(6)/3 -> 100 sqrt(6)/3/sqrt(2)
    x = np.array([0.0, 0.0, 3.0]).reshape(3, 1, 1)
    y = np.array([-1.0, 0.0, 1.0]).reshape(3, 1, 1)
    plain, detrended = metrics.nrmse_pair(x, y, np.ones((3, 1, 1), bool))
    assert plain == pytest.approx(100.0)
    assert detrended == pytest.approx(100.0 * math.sqrt(6) / 3 / math.sqrt(2))


def test_linear_slope_worked_example():
    y, seg, mask = _case(with_calc=False)
    x = y.astype(np.float64).copy()
    dgm = np.isin(seg, range(1, 7))
    x[dgm] = 3.0 * y[dgm] + 0.01  # slope 3 -> deviation |1 - 3| = 2
    assert metrics.rc2_metrics(x, y, seg, mask).values["DeviationFromLinearSlope"] == pytest.approx(2.0, rel=1e-6)


def test_regions_erode_and_dilate_by_one_voxel():
    mask = np.ones((12, 12, 12), bool)
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[2:9, 2:9, 2:9] = 8                      # 7^3 tissue -> eroded 5^3
    assert metrics.tissue_region(mask, seg).sum() == 125
    seg[4:7, 4:7, 4:7] = 2                      # a 3^3 DGM hole: the tissue's 5^3 core [3, 8) loses all
    assert metrics.dgm_region(mask, seg).sum() == 1      # voxels within one of the hole -> empty
    assert metrics.tissue_region(mask, seg).sum() == 0
    vein = np.zeros_like(seg)
    vein[6, 6, 6] = 11
    assert metrics.blood_region(mask, vein).sum() == 27
    mask[6, 6, 6] = False                       # the vein must lie inside M before dilation
    assert metrics.blood_region(mask, vein).sum() == 0


def test_calcification_worked_example():
    """One calcified voxel at (10, 10, 10) in a 24^3 grid; every number below is derived by hand.

    cube = bbox + 3 = [7, 14)^3 (343 voxels); rim box = [3, 18)^3 (3375), rim = 3375 - 343 = 3032;
    outer box = [-1, 22) clipped to [0, 22); no-cube = outer box minus cube.
    x: -1.5 at the calcification (truth -2.0), -0.3 at (8, 8, 8) and -0.2 at (12, 12, 12) inside the cube,
    a streak of -0.234 at (10, 10, 16) in the rim, 0.1 at (10, 10, 4) in the rim (truth 0.1 there too),
    and -1.0 at (10, 10, 23), outside the outer box (must be ignored).
    Threshold: the lowest no-cube value is -0.234, first t with nothing below it is -0.24.
    Segmented: -1.5 and -0.3 (-0.2 is above t) -> 2 voxels, mean -0.9, moment -1.8;
    true moment 1 x -2.0 -> DeviationFromCalcMoment = 0.2.
    Rim fit x = a y + b: y is 0 on 3031 rim voxels and 0.1 on one, so the fit passes through that point
    and b = mean of x over the y = 0 voxels = -0.234 / 3031; residuals: 3030 x (-b), -0.234 - b, 0;
    sum of squares = 0.234^2 3030 / 3031, std(ddof=1) = 0.234 sqrt(3030) / 3031,
    CalcStreak = that / 0.9.
    """
    shape = (24, 24, 24)
    seg = np.zeros(shape, np.uint8)
    seg[10, 10, 10] = 16
    y = np.zeros(shape)
    y[10, 10, 10] = -2.0
    y[10, 10, 4] = 0.1
    x = np.zeros(shape)
    x[10, 10, 10] = -1.5
    x[8, 8, 8] = -0.3
    x[12, 12, 12] = -0.2
    x[10, 10, 16] = -0.234
    x[10, 10, 4] = 0.1
    x[10, 10, 23] = -1.0

    geom = metrics.calc_geometry(seg)
    assert geom.cube.sum() == 343 and geom.rim.sum() == 3032
    assert geom.no_cube.sum() == 22**3 - 343
    assert metrics.calc_threshold(x, geom.no_cube) == pytest.approx(-0.24)
    streak, moment, notes = metrics.calcification_metrics(x, y, seg)
    assert notes == []
    assert moment == pytest.approx(0.2, abs=1e-12)
    assert streak == pytest.approx(0.234 * math.sqrt(3030) / 3031 / 0.9, rel=1e-9)


def test_calc_threshold_stops_at_minus_1_5():
    no_cube = np.ones((4, 4, 4), bool)
    assert metrics.calc_threshold(np.full((4, 4, 4), -3.0), no_cube) == pytest.approx(-1.5)
    assert metrics.calc_threshold(np.zeros((4, 4, 4)), no_cube) == 0.0


def test_missing_labels_give_nan_with_notes():
    y, seg, mask = _case(with_calc=False)
    seg = seg.copy()
    seg[seg == 11] = 8
    res = metrics.rc2_metrics(y, y, seg, mask)
    for row in ("rmse_detrend_Blood", "CalcStreak", "DeviationFromCalcMoment"):
        assert math.isnan(res.values[row]), row
        assert any(note.startswith(row) for note in res.notes), row
    assert res.values["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert res.values["rmse_detrend_DGM"] == pytest.approx(0.0, abs=1e-6)
    no_seg = metrics.rc2_metrics(y, y, None, mask)
    assert len(no_seg.notes) == 6 and math.isnan(no_seg.values["rmse_detrend_DGM"])


def test_bad_inputs_raise_input_error():
    y, seg, mask = _case(with_calc=False)
    bad = y.copy()
    bad[5, 5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.rc2_metrics(bad, y, seg, mask)
    with pytest.raises(InputError, match="shape mismatch"):
        metrics.rc2_metrics(y[:-1], y, seg, mask)
    with pytest.raises(InputError, match="shape mismatch"):
        metrics.rc2_metrics(y, y, seg[:-1], mask)
    with pytest.raises(InputError, match="empty"):
        metrics.rc2_metrics(y, y, seg, np.zeros_like(mask))


def test_hfen_xsim_correlation_scale_behaviour():
    y, seg, mask = _case()
    assert metrics.hfen(0.5 * y, y, mask) == pytest.approx(50.0, rel=1e-6)
    assert metrics.correlation(-y, y, mask) == pytest.approx(-1.0)
    assert metrics.xsim(0.5 * y, y, mask) < metrics.xsim(0.9 * y, y, mask) < 1.0


def test_challenge2016_metrics_and_roi_means():
    y, seg, mask = _case(with_calc=False)
    rois = np.zeros(y.shape, np.int16)
    rois[6:9, 6:9, 10:14] = 1
    res = metrics.challenge2016_metrics(0.5 * y, y, mask, rois)
    assert res.values["nrmse_chi33"] == pytest.approx(50.0, rel=1e-6)
    assert res.values["roi_1_caudate"] == pytest.approx(0.5 * y[rois == 1].mean(), rel=1e-6)
    assert math.isnan(res.values["roi_2_putamen"]) and any("roi_2" in n for n in res.notes)
