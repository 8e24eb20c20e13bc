"""Step 5 script: fine-tuning lowers the data-consistency loss, keeps geometry and mask, bad input."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.network_model.model_finetune import train as finetune  # noqa: E402
from daqsm.outputs import config_companion  # noqa: E402
from daqsm.training_data.dipole import forward_field  # noqa: E402
from daqsm.training_data.units import hz_per_ppm  # noqa: E402
from daqsm.training_data.volume_io import read_volume, write_volume  # noqa: E402
from tests.network_model.synthetic import smooth_chi  # noqa: E402

SHAPE = (18, 20, 22)  # not divisible by 2**depth: exercises the padding
AFFINE = np.array([[0.9, 0.0, 0.0, -10.0], [0.0, 1.1, 0.1, 5.0], [0.0, -0.1, 1.1, 2.0], [0, 0, 0, 1]])


def _phantom():
    n = max(SHAPE)
    chi = smooth_chi(n, 7, amplitude_ppm=0.1)[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    idx = [np.arange(s) - (s - 1) / 2 for s in SHAPE]
    r2 = sum((i / (0.4 * s)) ** 2 for i, s in zip(np.meshgrid(*idx, indexing="ij"), SHAPE))
    mask = (r2 <= 1).astype(np.uint8)
    chi = chi * mask
    field = forward_field(chi, (0.9, 1.1, 1.1), (0.0, 0.1, 1.0), pad="auto") * mask
    return chi, field.astype(np.float32), mask


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    import keras

    from daqsm.network_model.unet import build_target_model

    root = tmp_path_factory.mktemp("ft")
    chi, field, mask = _phantom()
    write_volume(root / "field.nii.gz", field, AFFINE)
    write_volume(root / "mask.nii.gz", mask, AFFINE)
    keras.utils.set_random_seed(3)
    build_target_model(depth=2, base_filters=4).save(root / "pre.keras")
    return root


def _run(case, out, *extra):
    return finetune.main(["--model", str(case / "pre.keras"), "-o", str(out), "--progress", "false",
                          "--b0", "3", "--te", "0.02", "--learning_rate", "2e-3", "--lambda_tv", "0.0005",
                          *extra])


def test_finetune_lowers_dc_keeps_geometry(case, tmp_path):
    import keras

    out = tmp_path / "qsm.nii.gz"
    assert _run(case, out, "--field", str(case / "field.nii.gz"), "--mask", str(case / "mask.nii.gz"),
                "--iterations", "25", "--convergence_tol", "0") == 0
    with open(tmp_path / "qsm_loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(26))
    assert float(rows[-1]["ndi"]) < 0.7 * float(rows[0]["ndi"])
    vol = read_volume(out)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    mask = read_volume(case / "mask.nii.gz").data
    assert vol.data.shape == SHAPE and np.all(vol.data[mask == 0] == 0) and np.any(vol.data != 0)
    tuned = keras.saving.load_model(tmp_path / "qsm_model.keras")
    assert tuned.name == "daqsm_target_unet"
    assert os.path.isfile(config_companion(out, "finetune", folder=False))
    # existing outputs are kept without --overwrite
    assert _run(case, out, "--field", str(case / "field.nii.gz"), "--mask", str(case / "mask.nii.gz")) == 2


def test_matlab_field_in_hz(case, tmp_path):
    import scipy.io

    _, field, _ = _phantom()
    scipy.io.savemat(tmp_path / "f.mat", {"fieldHz": field * hz_per_ppm(3.0)})
    out = tmp_path / "q.nii.gz"
    assert _run(case, out, "--field", str(tmp_path / "f.mat"), "--mask", str(case / "mask.nii.gz"),
                "--units", "hz", "--voxel_size_mm", "[0.9,1.1,1.1]", "--iterations", "2") == 0
    vol = read_volume(out)
    np.testing.assert_allclose(np.diag(vol.affine)[:3], (0.9, 1.1, 1.1), rtol=1e-6)


@pytest.mark.parametrize("kind,message", [
    ("missing", "file not found"),
    ("foreign", "not a target model of this package"),
    ("wrong_io", "expected a model with 2 inputs"),
    ("garbage", "cannot load as a Keras model"),
    ("shape", "shape mismatch"),
    ("phase", "phase scale unknown"),
])
def test_bad_input_exit_2(case, tmp_path, capsys, kind, message):
    import keras

    model, mask = case / "pre.keras", case / "mask.nii.gz"
    extra = ["--b0", "3", "--te", "0.02"]
    if kind == "missing":
        model = tmp_path / "none.keras"
    elif kind == "foreign":  # right inputs and output, but not this package's target model
        model = tmp_path / "other.keras"
        field_in, mask_in = keras.Input((None, None, None, 1)), keras.Input((None, None, None, 1))
        chi = keras.layers.Conv3D(1, 3, padding="same")(keras.layers.Concatenate()([field_in, mask_in]))
        keras.Model([field_in, mask_in], chi).save(model)
    elif kind == "wrong_io":
        model = tmp_path / "dense.keras"
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(model)
    elif kind == "garbage":
        model = tmp_path / "bad.keras"
        model.write_text("not a model")
    elif kind == "shape":
        mask = tmp_path / "m.nii.gz"
        write_volume(mask, np.ones((18, 20, 21), np.uint8), AFFINE)
    elif kind == "phase":
        extra = []
    out = tmp_path / "q.nii.gz"
    code = finetune.main(["--model", str(model), "--field", str(case / "field.nii.gz"), "--mask", str(mask),
                          "-o", str(out), "--progress", "false", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_padding_is_centred():
    assert finetune.centred_padding((18, 20, 16), 4) == [(1, 1), (0, 0), (0, 0)]
    assert finetune.centred_padding((17,), 16) == [(7, 8)]


def test_case_folder_weight_and_phase(case, tmp_path):
    import json

    from daqsm.network_model.target_data import load_case
    from daqsm.training_data.units import rad_per_ppm

    _, field, mask = _phantom()
    folder = tmp_path / "Sim1Snr1"
    mag = np.stack([np.full(SHAPE, 5.0), np.linspace(1, 2, np.prod(SHAPE)).reshape(SHAPE)], axis=-1)
    write_volume(folder / "local_field.nii.gz", field, AFFINE)
    write_volume(folder / "mask.nii.gz", mask, AFFINE)
    write_volume(folder / "magnitude.nii.gz", mag.astype(np.float32), AFFINE)
    (folder / "case.json").write_text(json.dumps({"b0_tesla": 7.0, "te_s": [0.004, 0.012],
                                                  "voxel_size_mm": [0.9, 1.1, 1.1], "b0_dir": [0, 0.1, 1]}))
    vol = load_case(folder)
    assert vol.phase_rad_per_ppm == pytest.approx(rad_per_ppm(7.0, 0.012))  # 2nd echo
    second = mag[..., 1] * mask
    np.testing.assert_allclose(vol.weight, second / second.max(), rtol=1e-6)
    assert vol.geometry.voxel_size_mm == (0.9, 1.1, 1.1)
    out = tmp_path / "q.nii.gz"
    assert finetune.main(["--model", str(case / "pre.keras"), "--case", str(folder), "-o", str(out),
                          "--iterations", "1", "--progress", "false"]) == 0


def test_every_field_is_a_cli_option():
    import dataclasses

    parser = finetune.build_parser()
    for f in dataclasses.fields(finetune.FinetuneConfig):  # resolved values: tests/test_config.py
        value = "true" if f.type in (bool, "bool") else "1"  # booleans take true/false (or nothing)
        given = [value] if "tuple" in str(f.type) else value  # tuples take one or several values
        assert getattr(parser.parse_args([f"--{f.name}", value]), f.name) == given
        assert getattr(parser.parse_args([f"--{f.name.replace('_', '-')}", value]), f.name) == given
    assert parser.parse_args(["-o", "x.nii.gz"]).output == "x.nii.gz"


def test_boolean_options_work_as_bare_flags():
    from daqsm.network_model.config import resolve_config

    parser = finetune.build_parser()
    bare = resolve_config(finetune.FinetuneConfig, parser.parse_args(["--overwrite", "--progress", "false"]))
    assert bare.overwrite is True and bare.progress is False
    assert resolve_config(finetune.FinetuneConfig, parser.parse_args([])).overwrite is False


def test_auto_lambda_and_its_evidence_in_the_sidecar(case, tmp_path):
    """--lambda-tv auto (the default): the NLTV rule's alpha mapped to network units, its evidence and the
    stop's target (noise + model-error floor, never below the noise energy) recorded."""
    import json

    from daqsm.network_model.tv_weight import lambda_from_alpha
    from daqsm.training_data.units import rad_per_ppm

    out = tmp_path / "q.nii.gz"
    assert finetune.main(["--model", str(case / "pre.keras"), "-o", str(out), "--progress", "false", "--b0", "3",
                          "--te", "0.02", "--field", str(case / "field.nii.gz"), "--mask", str(case / "mask.nii.gz"),
                          "--iterations", "3", "--lambda-scan-iterations", "10", "--residual-factor", "1"]) == 0
    ft = json.loads((tmp_path / "q.json").read_text())["FineTuning"]
    rule = ft["LambdaTV"]
    assert rule["rule"] == "discrepancy" and "discrepancy rule" in rule["note"]
    voxel = tuple(np.sqrt((AFFINE[:3, :3] ** 2).sum(0)))
    assert ft["lambda_tv"] == pytest.approx(lambda_from_alpha(rule["alpha"], rad_per_ppm(3, 0.02), voxel, 100 / 3),
                                            rel=1e-5)
    assert len(rule["alphas"]) == len(rule["ndi_per_alpha"]) >= 3
    assert ft["stop_ndi_target"] == pytest.approx(max(ft["noise_energy"], rule["ndi_target"]))
    assert rule["residual_factor"] == 1.0
    # --residual-factor kappa: the rule's target is kappa x the noise residual (floor permitting), so the
    # alpha is never smaller, the target and the stop's target never lower
    assert finetune.main(["--model", str(case / "pre.keras"), "-o", str(tmp_path / "k.nii.gz"), "--progress", "false",
                          "--b0", "3", "--te", "0.02", "--field", str(case / "field.nii.gz"), "--mask",
                          str(case / "mask.nii.gz"), "--iterations", "3", "--lambda-scan-iterations", "10",
                          "--residual-factor", "1e9"]) == 0
    kappa_ft = json.loads((tmp_path / "k.json").read_text())["FineTuning"]
    kappa = kappa_ft["LambdaTV"]
    assert kappa["residual_factor"] == 1e9 and kappa["alpha"] == max(kappa["alphas"]) >= rule["alpha"]
    assert kappa["weight_target_ndi"] == pytest.approx(1e9 * kappa["noise_ndi"], rel=1e-5)
    assert rule["weight_target_ndi"] == pytest.approx(rule["ndi_target"])
    # ... but the stop's target is max(E, 1.3 R_floor) whatever kappa: Adam crosses kappa E long before
    # the map is smooth (tv_weight's docstring), so kappa must not end the run earlier
    assert kappa["ndi_target"] == pytest.approx(rule["ndi_target"], rel=1e-6)
    assert kappa_ft["stop_ndi_target"] == pytest.approx(ft["stop_ndi_target"], rel=1e-6)


@pytest.mark.parametrize("extra", [["--prior", "map", "--prior-weight", "1"], ["--prior", "weights",
                                                                                "--prior-weight", "10"],
                                   ["--trainable", "decoder"], ["--trainable", "norm"]])
def test_prior_keeping_variants_run_and_save_a_whole_model(case, tmp_path, extra):
    import json

    import keras

    out = tmp_path / "q.nii.gz"
    assert _run(case, out, "--field", str(case / "field.nii.gz"), "--mask", str(case / "mask.nii.gz"),
                "--iterations", "3", *extra) == 0
    ft = json.loads((tmp_path / "q.json").read_text())["FineTuning"]
    whole = keras.saving.load_model(tmp_path / "q_model.keras")
    assert all(layer.trainable for layer in whole.layers)
    pre = keras.saving.load_model(case / "pre.keras")
    if "--trainable" in extra:  # frozen layers keep their pre-trained weights
        assert 0 < ft["trainable_weights"] < sum(int(np.prod(v.shape)) for v in pre.trainable_variables)
        frozen = "enc0_conv0" if extra[-1] == "decoder" else "out_conv"
        for a, b in zip(whole.get_layer(frozen).get_weights(), pre.get_layer(frozen).get_weights()):
            np.testing.assert_array_equal(a, b)
    else:
        assert "prior" in open(tmp_path / "q_loss.csv").readline()


def test_qc_residual_is_computed_on_the_brain_box(case, tmp_path, monkeypatch):
    """Step 5's QC map, like inference's, costs the brain's box, not the grid (issue 23, memory)."""
    import daqsm.qc.residual as residual_module

    chi, field, mask = _phantom()
    pad = ((12, 12), (10, 10), (8, 8))
    write_volume(tmp_path / "field.nii.gz", np.pad(field, pad), AFFINE)
    write_volume(tmp_path / "mask.nii.gz", np.pad(mask, pad), AFFINE)
    grids = []
    original = residual_module.residual_map_ppm

    def recording(chi_ppm, *args, **kwargs):
        grids.append(np.shape(chi_ppm))
        return original(chi_ppm, *args, **kwargs)

    monkeypatch.setattr(residual_module, "residual_map_ppm", recording)
    out = tmp_path / "qsm.nii.gz"
    assert _run(case, out, "--field", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
                "--iterations", "1") == 0
    full = tuple(n + a + b for n, (a, b) in zip(SHAPE, pad))
    assert grids and all(g != full and all(a <= b for a, b in zip(g, full)) for g in grids)
    qc = read_volume(tmp_path / "qsm_residual.nii.gz").data
    assert qc.shape == full and not np.any(qc[np.pad(mask, pad) == 0])


def test_time_budget_counts_the_scan_and_leaves_one_iteration():
    from daqsm.network_model.finetune_core import loop_seconds

    assert loop_seconds(0.0, 500.0) == 0.0                    # no budget: no limit
    assert loop_seconds(10.0, 200.0) == pytest.approx(400.0)  # 10 min less a 200 s scan
    assert 0.0 < loop_seconds(1.0, 61.0) < 1e-6               # spent by the scan: one iteration, not "no limit"


@pytest.mark.parametrize("minutes, iterations, reason", [(1e-6, 1, "time"), (30.0, 4, "done")])
def test_max_minutes_stops_fine_tuning_with_reason_time(case, tmp_path, capsys, minutes, iterations, reason):
    import json

    out = tmp_path / "q.nii.gz"
    assert _run(case, out, "--field", str(case / "field.nii.gz"), "--mask", str(case / "mask.nii.gz"),
                "--iterations", "4", "--convergence_tol", "0", "--tau", "0", "--max-minutes", str(minutes)) == 0
    ft = json.loads((tmp_path / "q.json").read_text())["FineTuning"]
    assert (ft["iterations"], ft["stop_reason"], ft["max_minutes"]) == (iterations, reason, minutes)
    assert ft["seconds_with_scan"] >= ft["seconds"]
    assert ("max_minutes" in capsys.readouterr().err) == (reason == "time")
    assert read_volume(out).data.shape == SHAPE


def test_the_lambda_scan_shows_progress(case, tmp_path, capsys):
    """--lambda-tv auto: the scan (minutes at 1 mm) has its bar before fine-tuning's; --quiet shows neither."""
    argv = ["--model", str(case / "pre.keras"), "--b0", "3", "--te", "0.02", "--field", str(case / "field.nii.gz"),
            "--mask", str(case / "mask.nii.gz"), "--iterations", "1", "--lambda-scan-iterations", "2"]
    assert finetune.main(argv + ["-o", str(tmp_path / "a.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "TV weight scan: " in err and "fine-tuning: " in err
    assert err.index("TV weight scan: ") < err.index("fine-tuning: ")
    assert finetune.main(argv + ["-o", str(tmp_path / "b.nii.gz"), "--quiet"]) == 0
    assert "TV weight scan" not in capsys.readouterr().err
