"""Fine-tuning's per-case TV weight: the alpha -> lambda mapping is exact, the rule follows the noise."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.network_model.tv_weight import (
    alpha_from_lambda,
    choose_lambda_tv,
    lambda_from_alpha,
    parse_lambda_tv,
    residual_to_ndi,
)
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.units import rad_per_ppm
from tests.network_model.synthetic import smooth_chi


@pytest.mark.parametrize("voxel_mm,b0,te", [(1.0, 3.0, 0.025), (3.0, 7.0, 0.012), (1.0, 7.0, 0.012)])
def test_network_objective_is_nltv_objective_rescaled(voxel_mm, b0, te):
    """L_net(chi; lambda(alpha)) = (ref / s)^2 / N * (R(chi) + alpha s TV_mm(chi)) for any chi (all-ones mask)."""
    tf = pytest.importorskip("tensorflow")
    from daqsm.evaluation.nltv_alpha import data_residual, total_variation
    from daqsm.network_model.losses import finetune_loss, ndi_loss, tv_loss
    from daqsm.training_data.dipole import dipole_operator_tf

    shape, vs, b0_dir = (12, 14, 16), (voxel_mm,) * 3, (0.0, 0.2, 1.0)
    rng = np.random.default_rng(1)
    chi = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    field = (forward_field(smooth_chi(16, 3)[:12, :14, :16] * 0.1, vs, b0_dir, pad="auto")
             + 0.002 * rng.standard_normal(shape)).astype(np.float32)
    mask = np.ones(shape, np.float32)
    weight = (0.5 + 0.5 * rng.random(shape)).astype(np.float32)
    s, label_scale, alpha = rad_per_ppm(b0, te), 100.0 / 3.0, 3e-3
    lam = lambda_from_alpha(alpha, s, vs, label_scale)
    dipole = dipole_operator_tf(shape, vs, b0_dir, "auto")
    ndi = float(ndi_loss(chi[None], field[None], weight[None], mask[None], dipole, s)[0])
    tv = float(tv_loss(chi[None], mask[None], label_scale)[0])
    network = float(finetune_loss(ndi, tv, lam))
    residual = data_residual(chi, field, mask, weight, vs, b0_dir, s, "auto")
    nltv = residual_to_ndi(residual + alpha * s * total_variation(chi, vs), s, mask.size)
    assert network == pytest.approx(nltv, rel=2e-4)
    assert alpha_from_lambda(lam, s, vs, label_scale) == pytest.approx(alpha)
    del tf


def test_mapping_scales_with_voxel_size_and_phase():
    s3, s7 = rad_per_ppm(3.0, 0.025), rad_per_ppm(7.0, 0.012)
    one = lambda_from_alpha(1e-2, s7, (1.0, 1.0, 1.0), 100.0 / 3.0)
    assert lambda_from_alpha(1e-2, s7, (3.0, 3.0, 3.0), 100.0 / 3.0) == pytest.approx(one / 3)
    assert lambda_from_alpha(1e-2, s3, (1.0, 1.0, 1.0), 100.0 / 3.0) == pytest.approx(one * s7 / s3)
    # issue 21's measurement on the built-in 3 mm cases (7 T, TE 12 ms): alpha ~ 0.225 lambda
    assert alpha_from_lambda(1.0, s7, (3.0, 3.0, 3.0), 100.0 / 3.0) == pytest.approx(0.225, rel=0.01)


def _case(noise_ppm: float):
    n = 24
    idx = np.arange(n) - (n - 1) / 2
    r2 = sum(a**2 for a in np.meshgrid(idx, idx, idx, indexing="ij"))
    mask = (r2 <= (0.42 * n) ** 2).astype(np.float32)
    chi = smooth_chi(n, 5, amplitude_ppm=0.1) * mask
    chi[8:12, 8:12, 10:14] += 0.2 * mask[8:12, 8:12, 10:14]  # a sharp edge TV should keep
    field = forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), pad="auto")
    field = (field + noise_ppm * np.random.default_rng(0).standard_normal(field.shape)) * mask
    return field.astype(np.float32), mask


def test_noisier_data_gets_a_larger_lambda():
    s = rad_per_ppm(3.0, 0.025)
    picks = []
    for noise in (0.001, 0.01):
        field, mask = _case(noise)
        choice = choose_lambda_tv(field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), s, 100.0 / 3.0,
                                  iterations=40)
        assert choice.rule == "discrepancy" and choice.ndi_target > 0, choice
        assert choice.lambda_tv == pytest.approx(lambda_from_alpha(choice.alpha, s, (1.0,) * 3, 100.0 / 3.0))
        assert len(choice.evidence["ndi_per_alpha"]) == len(choice.evidence["alphas"])
        picks.append(choice.lambda_tv)
    assert picks[1] > picks[0], picks


def test_undecidable_falls_back_with_a_reason():
    field, mask = _case(0.001)
    thin = np.zeros_like(mask)
    thin[:, :, 12] = mask[:, :, 12]  # one slice: no 2x2x2 block for the noise estimate
    choice = choose_lambda_tv(field * thin, thin, None, (1.0,) * 3, (0.0, 0.0, 1.0), 20.0, 100.0 / 3.0,
                              alphas=(1e-3, 1e-2), iterations=5)
    assert choice.rule == "fallback" and "cannot decide" in choice.note


@pytest.mark.parametrize("text,value", [("auto", None), ("AUTO ", None), ("0.01", 0.01), (0.05, 0.05), ("0", 0.0)])
def test_parse_lambda_tv(text, value):
    assert parse_lambda_tv(text) == value


@pytest.mark.parametrize("bad", ["-1", "x", "nan", None])
def test_parse_lambda_tv_rejects(bad):
    with pytest.raises(InputError, match="lambda_tv"):
        parse_lambda_tv(bad)
