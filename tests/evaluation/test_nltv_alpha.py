"""Nonlinear TV's alpha: the noise estimate, the discrepancy rule (stage 1) against the best by truth (stage 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from daqsm.evaluation import baseline_cli
from daqsm.evaluation import baselines as B
from daqsm.evaluation import nltv_alpha as A
from daqsm.evaluation.metrics import nrmse_pair
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.volume_io import read_volume, write_volume
from tests.evaluation.test_baselines import phantom


def noisy_phantom(sigma_ppm: float, seed: int = 0):
    """The 32^3 sphere phantom, its padded field plus white Gaussian noise of std sigma_ppm, masked."""
    chi, brain, _ = phantom()
    noise = np.random.default_rng(seed).normal(0.0, sigma_ppm, chi.shape).astype(np.float32)
    return chi, brain, (forward_field(chi, pad="auto") + noise) * brain


@pytest.mark.parametrize("sigma", [0.002, 0.006])
def test_noise_estimate_from_the_field(sigma):
    _, brain, field = noisy_phantom(sigma)
    assert A.estimate_noise_ppm(field, brain) == pytest.approx(sigma, rel=0.15)  # measured +8 % / +3 %


@pytest.mark.parametrize("sigma", [0.002, 0.006])
def test_discrepancy_alpha_is_near_the_best_alpha_by_truth(sigma):
    """Stage 1 (no truth) vs stage 2 (min rmse vs chi) on the same grid, 100 iterations per alpha.

    Measured: field noise 0.002 ppm: stage 1 alpha 0.01, stage 2 0.01 (rmse 6.26 % both);
    0.006 ppm: stage 1 0.0464 (rmse 23.7 %), stage 2 0.0215 (20.2 %) — one grid step (x2.15) apart.
    A fixed alpha cannot pass both: the best alphas differ by a grid step and the rule follows the noise.

    This field is the dipole model's own forward field plus white noise: no model error, the truth's
    residual is 0.84-0.93 E, so Morozov's kappa 1 is right here. The default kappa 3 (for fields with model
    error: 2.1-12.6 E on every realistic case measured) over-regularises such a field: alpha 0.1, rmse
    44.5 / 44.9 % (docs/evaluation-and-baselines.md says so; --residual-factor 1 for such simulations).
    """
    chi, brain, field = noisy_phantom(sigma)
    scan = A.scan_alpha(field, brain, params=B.NDITVParams(iterations=100))
    stage1 = A.choose_alpha_discrepancy(scan, tau=1.0)
    stage2, rmse = A.best_alpha_by_truth(scan, chi, brain)
    default = A.choose_alpha_discrepancy(scan)  # kappa 3
    assert default.alpha > stage1.alpha and rmse[default.index] > 2 * rmse[stage2.index], rmse
    assert stage1.reached
    assert abs(stage1.index - stage2.index) <= 1, (stage1, stage2)  # within a factor 2.15
    assert rmse[stage1.index] <= 1.2 * rmse[stage2.index], rmse
    # the residual of the chosen map is at the noise level the rule aims for
    assert scan.residual[stage1.index] == pytest.approx(scan.noise_residual, rel=0.25)
    assert rmse[stage2.index] == pytest.approx(nrmse_pair(scan.maps[stage2.index], chi, brain)[0])


def test_noise_residual_matches_the_truth_residual():
    """E (from the estimated noise) vs the data residual of the true chi: equal in expectation."""
    chi, brain, field = noisy_phantom(0.004)
    scale = 2 * np.pi * 42.577478 * 3.0 * 0.025  # NDITVParams defaults, rad/ppm
    truth = A.data_residual(chi * brain, field, brain, phase_scale=scale)
    expected = A.noise_residual(A.estimate_noise_ppm(field, brain), brain, None, scale)
    assert expected == pytest.approx(truth, rel=0.2)


def test_rules_on_a_synthetic_scan():
    alphas = tuple(10.0 ** np.arange(-4, 0.5, 0.5))
    # an L: TV falls steeply while R barely grows, then R grows while TV stays flat; corner at index 4
    residual = (1.0, 1.02, 1.05, 1.1, 1.2, 3.0, 10.0, 30.0, 100.0)
    tv = (1000.0, 300.0, 100.0, 30.0, 10.0, 9.0, 8.5, 8.2, 8.0)
    scan = A.AlphaScan(alphas, residual, tv, (1,) * 9, None, 0.01, 5.0, 0.0)
    assert A.choose_alpha_lcurve(scan).index == 4
    assert A.choose_alpha_discrepancy(scan, tau=1.0).index == 5  # largest alpha with R <= E = 5 (> 1.3 x floor 1)
    model_error = A.AlphaScan(alphas, residual, tv, (1,) * 9, None, 0.0, 0.5, 0.0)  # E below every R
    assert not A.choose_alpha_discrepancy(model_error, tau=1.0, floor_factor=None).reached  # Morozov alone: none
    choice = A.choose_alpha_discrepancy(model_error, tau=1.0)  # target 1.3 x floor = 1.3: R 1.2 at index 4
    assert choice.reached and choice.index == 4 and "floor" in choice.note and choice.target == pytest.approx(1.3)
    # kappa (tau) x E: the target a field with model error needs (benchmarks/bench_model_error.py)
    assert A.choose_alpha_discrepancy(scan, tau=1.0).target == 5.0
    kappa = A.choose_alpha_discrepancy(scan)  # the default kappa 3: T = 15, R 10 at index 6, 30 above it
    assert A.RESIDUAL_FACTOR == 3.0
    assert (kappa.index, kappa.target) == (6, 15.0) and "3 x noise residual" in kappa.note
    with pytest.raises(Exception, match="maps"):
        A.best_alpha_by_truth(scan, np.zeros((2, 2, 2)), np.ones((2, 2, 2)))


def test_command_alpha_auto(tmp_path, capsys):
    chi, brain, _ = phantom(24)
    f = write_volume(tmp_path / "field.nii.gz", forward_field(chi, pad="auto") * brain)
    m = write_volume(tmp_path / "mask.nii.gz", brain.astype(np.uint8))
    out = tmp_path / "tv.nii.gz"
    argv = ["ndi-tv", "--field", f, "--mask", m, "-o", str(out), "--b0", "3", "--te", "0.025", "--alpha", "auto",
            "--alpha-grid", "1e-3", "1e-2",
            "--iterations", "5"]
    assert baseline_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "by the discrepancy principle" in printed
    assert read_volume(out).data.shape == chi.shape
    # the sidecar says which alpha made the map (the config alone only says 'auto')
    chosen = json.loads((tmp_path / "tv.json").read_text())["AlphaChoice"]
    assert chosen["alpha"] in (1e-3, 1e-2) and chosen["rule"] == "discrepancy"
    assert f"alpha {chosen['alpha']:.3g} by the discrepancy principle" in printed
    assert chosen["alphas"] == [1e-3, 1e-2] and len(chosen["residual"]) == len(chosen["tv"]) == 2 and chosen["noise_residual"] > 0
    # --residual-factor kappa: the target kappa x E; a huge one takes the largest alpha of the grid
    assert baseline_cli.main(argv + ["--residual-factor", "1e9", "-o", str(tmp_path / "k.nii.gz")]) == 0
    kappa = json.loads((tmp_path / "k.json").read_text())["AlphaChoice"]
    assert kappa["alpha"] == 1e-2 and kappa["note"].startswith("R ") and "1e+09 x noise residual" in kappa["note"]
    for bad in (["--alpha", "often"], ["--alpha", "0.1", "--alpha-grid", "1e-3"], ["--residual-factor", "0"]):
        assert baseline_cli.main(["ndi-tv", "--field", f, "--mask", m, "-o", str(tmp_path / "x.nii.gz")] + bad) == 2


def test_progress_bars_of_the_scan_and_the_solve(tmp_path, capsys):
    """The scan and a single TV solve show a bar on stderr (1 mm: minutes of silence before), --quiet none;
    the solve's hook sees every iteration once."""
    chi, brain, _ = phantom(24)
    field = forward_field(chi, pad="auto") * brain
    seen = []
    _, info = B.ndi_tv(field, brain, params=B.NDITVParams(alpha=1e-3, iterations=7, tol=0.0), pad="none",
                       return_info=True, on_iteration=lambda it, change: seen.append((it, change)))
    assert [it for it, _ in seen] == list(range(1, info["iterations"] + 1)) == list(range(1, 8))
    assert all(change >= 0 for _, change in seen)
    f = write_volume(tmp_path / "field.nii.gz", field)
    m = write_volume(tmp_path / "mask.nii.gz", brain.astype(np.uint8))
    base = ["ndi-tv", "--field", f, "--mask", m, "--b0", "3", "--te", "0.025", "--iterations", "3"]
    for extra, bar in ((["--alpha", "auto", "--alpha-grid", "1e-3", "1e-2"], "TV weight scan"), ([], "ndi-tv")):
        assert baseline_cli.main(base + extra + ["-o", str(tmp_path / "a.nii.gz"), "--overwrite"]) == 0
        assert f"{bar}: " in capsys.readouterr().err
        assert baseline_cli.main(base + extra + ["-o", str(tmp_path / "a.nii.gz"), "--overwrite", "--quiet"]) == 0
        assert f"{bar}: " not in capsys.readouterr().err
