"""RC2-like simulator: field estimate, noise level, determinism, labels and the RC2 grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daqsm.outputs import config_companion
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.simulator import simulate
from daqsm.training_data.simulator.gre import add_noise, crop_kspace, estimate_local_field
from daqsm.training_data.volume_io import read_volume

COARSE_MM = 4.0  # the built-in phantom at 4 mm: 46 x 55 x 46 voxels, fast


def nrmse(a, b, mask):
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def noise_free_case(tmp_path_factory):
    """Sim1 without resampling (native = output grid) and without noise."""
    out = tmp_path_factory.mktemp("sim")
    anatomy = simulate.load_builtin(COARSE_MM)
    (path,) = simulate.simulate_cases(anatomy, out, COARSE_MM, seed=3, quiet=True,
                                      peak_snr={"Snr0": np.inf}, variants=("Sim1",))
    return path


def test_noise_free_field_estimate_equals_dipole_field(noise_free_case):
    local = read_volume(f"{noise_free_case}/local_field.nii.gz").data
    chi = read_volume(f"{noise_free_case}/chi.nii.gz").data
    mask = read_volume(f"{noise_free_case}/mask.nii.gz").data > 0
    case = json.loads(open(f"{noise_free_case}/case.json").read())
    expected = forward_field(chi, case["voxel_size_mm"], case["b0_dir"], pad="auto")
    assert nrmse(local, expected, mask) <= 0.02
    assert np.all(local[~mask] == 0)
    assert case["peak_snr"] is None and case["te_s"] == [0.004, 0.012, 0.020, 0.028]


def test_wrapped_phase_is_unwrapped():
    """A smooth field reaching 0.6 ppm wraps at every echo difference; the estimate recovers it."""
    shape, vs = (32, 32, 32), (1.0, 1.0, 1.0)
    grid = np.indices(shape).astype(np.float32)
    field = 0.6 * np.exp(-(((grid - 16) ** 2).sum(0)) / (2 * 8.0**2)).astype(np.float32)
    te = (0.004, 0.012, 0.020, 0.028)
    from daqsm.training_data.units import rad_per_ppm

    echoes = [np.exp(1j * rad_per_ppm(7.0, t) * field).astype(np.complex64) for t in te]
    assert rad_per_ppm(7.0, 0.008) * field.max() > np.pi
    mask = np.ones(shape, bool)
    estimate = estimate_local_field(echoes, te, 7.0, mask, vs)
    np.testing.assert_allclose(estimate - estimate.mean(), field - field.mean(), atol=1e-4)


def test_peak_snr_sets_background_noise(tmp_path):
    anatomy = simulate.load_builtin(COARSE_MM)
    simulate.simulate_cases(anatomy, tmp_path, COARSE_MM, seed=0, quiet=True, peak_snr={"Snr1": 100.0},
                            variants=("Sim2",))
    magnitude = read_volume(tmp_path / "Sim2Snr1" / "magnitude.nii.gz", ndim=4).data
    seg = read_volume(tmp_path / "Sim2Snr1" / "segmentation.nii.gz").data
    air = seg == 14
    # In air the magnitude is |complex noise|: E|n|^2 = 2 sigma^2 (sigma per channel)
    sigma = np.sqrt(np.mean(magnitude[..., 0][air] ** 2) / 2)
    assert sigma == pytest.approx(magnitude[..., 0].max() / 100.0, rel=0.05)
    assert magnitude.shape[-1] == 4


def test_noise_std_exact():
    rng = np.random.default_rng(0)
    noisy = add_noise(np.zeros((64, 64, 64), np.complex64), 0.25, rng)
    assert noisy.real.std() == pytest.approx(0.25, rel=0.01) and noisy.imag.std() == pytest.approx(0.25, rel=0.01)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.nii.gz"))}


def test_same_seed_same_files_other_seed_differs(tmp_path):
    anatomy = simulate.load_builtin(COARSE_MM)
    kwargs = dict(quiet=True, peak_snr={"Snr1": 100.0}, variants=("Sim2",))
    simulate.simulate_cases(anatomy, tmp_path / "a", COARSE_MM, seed=1, **kwargs)
    simulate.simulate_cases(anatomy, tmp_path / "b", COARSE_MM, seed=1, **kwargs)
    simulate.simulate_cases(anatomy, tmp_path / "c", COARSE_MM, seed=2, **kwargs)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    chi_a = read_volume(tmp_path / "a" / "Sim2Snr1" / "chi.nii.gz").data
    chi_c = read_volume(tmp_path / "c" / "Sim2Snr1" / "chi.nii.gz").data
    mag_a = read_volume(tmp_path / "a" / "Sim2Snr1" / "magnitude.nii.gz", ndim=4).data
    mag_c = read_volume(tmp_path / "c" / "Sim2Snr1" / "magnitude.nii.gz", ndim=4).data
    assert not np.allclose(chi_a, chi_c)     # texture
    seg = read_volume(tmp_path / "a" / "Sim2Snr1" / "segmentation.nii.gz").data
    assert not np.allclose(mag_a[seg == 14], mag_c[seg == 14])  # noise


def test_labels_survive_resampling_and_texture_in_range():
    from daqsm.training_data.simulator.phantom import make_phantom
    from daqsm.training_data.simulator.tissue import TEXTURE_STD_RANGE_PPB

    native = simulate.load_builtin(2.0)
    out_shape, _, _ = simulate.output_grid(native, 5.0)
    resampled = simulate.resample_labels(native.labels, out_shape)
    assert set(np.unique(native.labels)) == set(np.unique(resampled))
    assert 16 in resampled
    phantom = make_phantom(2.0, seed=0)
    for label in (8, 9):
        std_ppb = 1e3 * phantom.texture_ppm[phantom.labels == label].std()
        assert TEXTURE_STD_RANGE_PPB[0] <= std_ppb <= TEXTURE_STD_RANGE_PPB[1]
        assert phantom.chi_ppm[phantom.labels == label].std() > 0


def blocky_labels(seed=0):
    """Random 6-label blocks with a small calcification (label 16)."""
    import scipy.ndimage as ndi

    labels = ndi.zoom(np.random.default_rng(seed).integers(0, 6, (12, 15, 11)), 3, order=0).astype(np.uint8)
    labels[5:9, 20:23, 10:12] = 16
    return labels


def test_label_fractions_equal_linear_zoom_and_sum_to_one():
    import scipy.ndimage as ndi

    labels, out_shape = blocky_labels(), (23, 28, 21)
    fractions = simulate.label_fractions(labels, out_shape)
    assert sorted(fractions) == sorted(int(v) for v in np.unique(labels))
    factors = [m / n for m, n in zip(out_shape, labels.shape)]
    for label, frac in fractions.items():
        reference = ndi.zoom((labels == label).astype(np.float32), factors, order=1, grid_mode=True,
                             mode="grid-constant")
        np.testing.assert_allclose(frac, reference, atol=1e-6)
    np.testing.assert_allclose(sum(fractions.values()), 1.0, atol=1e-5)


def test_sim1_segmentation_from_merged_fractions_equals_resampling_sim1_labels():
    labels, out_shape = blocky_labels(1), (23, 28, 21)
    replacement = simulate.calcification_replacement(labels)
    assert replacement is not None and replacement != 16
    merged = simulate.merge_label_fractions(simulate.label_fractions(labels, out_shape), 16, replacement)
    sim1 = simulate.remove_calcification(labels)
    assert 16 not in sim1
    np.testing.assert_array_equal(simulate.majority_labels(merged, out_shape),
                                  simulate.resample_labels(sim1, out_shape))


def test_kspace_crop_preserves_low_frequencies():
    rng = np.random.default_rng(0)
    smooth = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((40, 40, 40))) *
                                  (np.abs(np.fft.fftfreq(40))[:, None, None] < 0.1) *
                                  (np.abs(np.fft.fftfreq(40))[None, :, None] < 0.1) *
                                  (np.abs(np.fft.fftfreq(40))[None, None, :] < 0.1))).astype(np.float32)
    cropped = crop_kspace(smooth, (20, 20, 20))
    np.testing.assert_allclose(cropped, smooth[::2, ::2, ::2], atol=1e-5 * np.abs(smooth).max() * 10)


def test_cli_bad_input_and_overwrite(tmp_path, capsys):
    assert simulate.main(["--source", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    assert "SegmentedModel.nii.gz" in capsys.readouterr().err
    assert simulate.main(["--source", "builtin", "-o", str(tmp_path / "o"), "--resolution", "20"]) == 2
    (tmp_path / "o" / "Sim1Snr1").mkdir(parents=True)
    assert simulate.main(["--source", "builtin", "-o", str(tmp_path / "o"), "--resolution", "6", "--quiet"]) == 2
    assert "exist" in capsys.readouterr().err


def test_cli_writes_the_resolved_config_beside_the_cases(tmp_path):
    import dataclasses
    import json

    out = tmp_path / "o"
    assert simulate.main(["--source", "builtin", "-o", str(out), "--resolution", "8", "--seed", "3", "--quiet"]) == 0
    config = json.loads(Path(config_companion(out, "simulate", folder=True)).read_text())
    assert set(config) == {f.name for f in dataclasses.fields(simulate.SimulateConfig)}
    assert (config["source"], config["output"], config["resolution"], config["seed"], config["progress"]) == (
        "builtin", str(out), 8.0, 3, False)


@pytest.mark.realdata
def test_rc2_phantom_grid_is_164_205_205(shared_data):
    anatomy = simulate.load_rc2_phantom(shared_data / "rc2_phantom")
    shape, vs, _ = simulate.output_grid(anatomy, 1.0)
    assert anatomy.labels.shape == (256, 320, 320)
    assert shape == (164, 205, 205)
    assert vs == pytest.approx((1.0, 1.0, 1.0), abs=0.002)
    assert anatomy.chiref_ppm[16] == pytest.approx(-3.3) and anatomy.chiref_ppm[8] == pytest.approx(-0.03)
    small = anatomy.labels[::2, ::2, ::2]  # labels survive the majority resampling (on a 2x subsample for speed)
    resampled = simulate.resample_labels(small, (82, 102, 102))
    assert set(np.unique(small)) <= set(np.unique(resampled))


def test_other_protocol_three_tesla_other_echoes_oblique_b0(tmp_path):
    """3 T, other echo times and an oblique B0 (issue 24: targets over the protocols users have): the
    noise-free estimate is D * chi along that direction, not along z, and case.json records the protocol."""
    anatomy = simulate.load_builtin(COARSE_MM)
    b0_dir = (0.0, float(np.sin(0.4)), float(np.cos(0.4)))  # 23 degrees from the third axis
    (path,) = simulate.simulate_cases(anatomy, tmp_path, COARSE_MM, seed=3, quiet=True, peak_snr={"Snr0": np.inf},
                                      variants=("Sim1",), b0_tesla=3.0, te_s=(0.005, 0.015, 0.025), b0_dir=b0_dir)
    local = read_volume(f"{path}/local_field.nii.gz").data
    chi = read_volume(f"{path}/chi.nii.gz").data
    mask = read_volume(f"{path}/mask.nii.gz").data > 0
    case = json.loads(open(f"{path}/case.json").read())
    assert case["b0_tesla"] == 3.0 and case["te_s"] == [0.005, 0.015, 0.025]
    np.testing.assert_allclose(case["b0_dir"], b0_dir, atol=1e-7)
    oblique = forward_field(chi, case["voxel_size_mm"], b0_dir, pad="auto")
    along_z = forward_field(chi, case["voxel_size_mm"], (0.0, 0.0, 1.0), pad="auto")
    assert nrmse(local, oblique, mask) <= 0.02 < 5 * 0.02 < nrmse(local, along_z, mask)


def test_r2star_scales_with_field_strength(tmp_path):
    """R2* is RC2's 7 T value times B0 / 7 T (linear in B0): at the same echo times the log decay
    between two echoes at 3 T is 3/7 of that at 7 T, voxel by voxel (noise-free, no resampling)."""
    anatomy = simulate.load_builtin(COARSE_MM)
    kwargs = dict(quiet=True, peak_snr={"Snr0": np.inf}, variants=("Sim2",), te_s=(0.004, 0.012))
    (at7,) = simulate.simulate_cases(anatomy, tmp_path / "7", COARSE_MM, seed=1, **kwargs)
    (at3,) = simulate.simulate_cases(anatomy, tmp_path / "3", COARSE_MM, seed=1, b0_tesla=3.0, **kwargs)
    mask = read_volume(f"{at7}/mask.nii.gz").data > 0

    def log_decay(path):
        magnitude = read_volume(f"{path}/magnitude.nii.gz", ndim=4).data
        return np.log(magnitude[..., 0][mask] / magnitude[..., 1][mask])

    decay7, decay3 = log_decay(at7), log_decay(at3)
    assert decay7.mean() > 0.05  # the echoes do decay
    np.testing.assert_allclose(decay3, decay7 * 3.0 / 7.0, rtol=1e-3, atol=1e-5)


def test_cli_protocol_options(tmp_path, capsys):
    out = tmp_path / "o"
    assert simulate.main(["--source", "builtin", "-o", str(out), "--resolution", "8", "--quiet", "--b0-tesla", "3",
                          "--te", "0.005", "0.015", "0.025", "--b0-dir", "0", "1", "1"]) == 0
    case = json.loads((out / "Sim1Snr1" / "case.json").read_text())
    assert case["b0_tesla"] == 3.0 and case["te_s"] == [0.005, 0.015, 0.025]
    np.testing.assert_allclose(case["b0_dir"], [0.0, 2**-0.5, 2**-0.5], atol=1e-7)
    for bad, word in ((["--b0-tesla", "0"], "--b0-tesla"), (["--te", "0.01"], "--te"),
                      (["--te", "0.01", "-0.02"], "--te"), (["--b0-dir", "0", "0", "0"], "--b0-dir")):
        assert simulate.main(["--source", "builtin", "-o", str(tmp_path / "bad"), "--resolution", "8", "--quiet"]
                             + bad) == 2
        assert word in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
