"""QC residual map: ~0 for the truth of a noise-free phantom, the NDI term's per-voxel root, the figure row."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.qc.residual import residual_map_ppm, residual_summary
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.units import rad_per_ppm
from tests.network_model.synthetic import ball_mask, smooth_chi

N = 24
VS, B0 = (1.0, 1.0, 1.2), (0.1, 0.0, 1.0)


def _phantom():
    mask = ball_mask(N)
    chi = smooth_chi(N, 3, amplitude_ppm=0.1)
    field = forward_field(chi, VS, B0, pad="auto") * mask  # noise-free measured local field
    return chi, field, mask


@pytest.mark.parametrize("phase", [None, rad_per_ppm(3.0, 0.02)])
def test_residual_is_zero_for_the_truth_of_a_noise_free_phantom(phase):
    chi, field, mask = _phantom()
    residual = residual_map_ppm(chi, field, mask, None, VS, B0, "auto", phase)
    assert residual.shape == chi.shape and residual.dtype == np.float32
    assert float(np.abs(residual).max()) < 1e-6 * float(np.abs(field).max()) + 1e-9  # float32 rounding only
    assert np.all(residual[mask == 0] == 0)
    wrong = residual_map_ppm(0.5 * chi, field, mask, None, VS, B0, "auto", phase)
    assert float(np.sqrt(np.mean(wrong[mask > 0] ** 2))) > 100 * float(np.abs(residual).max())


def test_small_angle_form_and_weight():
    chi, field, mask = _phantom()
    weight = mask * np.linspace(0.2, 1.0, N)[:, None, None].astype(np.float32)
    wrong = 0.8 * chi
    small = residual_map_ppm(wrong, field, mask, weight, VS, B0, "auto", None)
    expected = weight * np.abs(field - forward_field(wrong * mask, VS, B0, pad="auto")) * mask
    np.testing.assert_allclose(small, expected, rtol=1e-5, atol=1e-9)
    exact = residual_map_ppm(wrong, field, mask, weight, VS, B0, "auto", rad_per_ppm(3.0, 0.02))
    np.testing.assert_allclose(exact, small, rtol=1e-2, atol=1e-7)  # small residuals: the two forms agree


def test_mean_square_times_phase_squared_is_the_ndi_term():
    """The map is the per-voxel root of fine-tuning's data term (daqsm.network_model.losses.ndi_loss)."""
    tf = pytest.importorskip("tensorflow")
    from daqsm.network_model.losses import ndi_loss
    from daqsm.training_data.dipole import dipole_operator_tf

    chi, field, mask = _phantom()
    s = rad_per_ppm(7.0, 0.02)
    wrong = 1.3 * chi  # large enough that the cosine is not in its small-angle regime everywhere
    residual = residual_map_ppm(wrong, field, mask, mask, VS, B0, "auto", s)
    inside = mask > 0

    def t(a):
        return tf.constant(a[None], tf.float32)

    ndi = float(ndi_loss(t(wrong), t(field), t(mask), t(mask), dipole_operator_tf((N, N, N), VS, B0, "auto"), s,
                         reference_rad_per_ppm=None)[0])
    np.testing.assert_allclose(np.mean(residual[inside] ** 2) * s**2, ndi, rtol=1e-4)


def test_summary_compares_with_the_noise_estimate():
    chi, field, mask = _phantom()
    rng = np.random.default_rng(0)
    sigma = 0.002
    noisy = (field + sigma * rng.standard_normal(field.shape).astype(np.float32)) * mask
    summary = residual_summary(residual_map_ppm(chi, noisy, mask, None, VS, B0), noisy, mask)
    assert 0.5 < summary["ResidualOverNoise"] < 2.0  # the truth explains the field to the noise level
    assert summary["NoiseEstimated"] and "x the noise estimate" in summary["Summary"]
    assert residual_summary(np.zeros_like(field), noisy, mask, noise_ppm=0.01)["NoisePpm"] == 0.01


def test_figure_shows_the_residual_as_a_fourth_row(tmp_path):
    from PIL import Image

    from daqsm.evaluation import figures
    from daqsm.training_data.volume_io import write_volume

    chi, field, mask = _phantom()
    for name, data in (("chi", chi), ("mask", mask.astype(np.uint8)),
                       ("res", residual_map_ppm(0.9 * chi, field, mask, None, VS, B0))):
        write_volume(tmp_path / f"{name}.nii.gz", data, np.diag(list(VS) + [1.0]))
    out = tmp_path / "f.png"
    assert figures.main(["slices", "--recon", str(tmp_path / "chi.nii.gz"), "--truth", str(tmp_path / "chi.nii.gz"),
                         "--mask", str(tmp_path / "mask.nii.gz"), "--residual", str(tmp_path / "res.nii.gz"),
                         "-o", str(out)]) == 0
    assert Image.open(out).size == (900, 1200)
