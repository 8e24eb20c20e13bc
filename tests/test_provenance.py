"""Provenance sidecars: every volume a command writes has OUT.json, and its fields match the run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daqsm import provenance
from daqsm.outputs import config_companion
from tests.training_data.test_input_check import _write_case


def _sidecars_of_all_volumes(folder: Path) -> dict:
    """{volume name: sidecar dict} for every NIfTI under folder; fails if one has none."""
    out = {}
    for volume in sorted(Path(folder).rglob("*.nii*")):
        side = Path(provenance.sidecar_path(volume))
        assert side.is_file(), f"{volume.name} has no sidecar"
        out[volume.name] = json.loads(side.read_text())
    assert out, f"no volumes under {folder}"
    return out


def _check_common(record, units, step, *argv_parts):
    assert record["Units"] == units
    generated = record["GeneratedBy"][0]
    assert generated["Name"] == "daqsm" and generated["Version"] == provenance.package_version()
    assert generated["Step"] == step
    for part in argv_parts:
        assert part in generated["CommandLine"], (part, generated["CommandLine"])


def test_paths_and_bids_naming():
    assert provenance.sidecar_path("a/b.nii.gz") == "a/b.json" and provenance.sidecar_path("b.nii") == "b.json"
    assert provenance.bids_chimap_path("d/sub-01_ses-1") == "d/sub-01_ses-1_Chimap.nii.gz"
    assert provenance.bids_chimap_path("sub-01.nii.gz") == "sub-01_Chimap.nii.gz"
    assert provenance.bids_chimap_path("sub-01_Chimap.nii.gz") == "sub-01_Chimap.nii.gz"


def test_record_without_a_command_has_no_command_line():
    record = provenance.build_record("x", "ppm", b0_tesla=3, voxel_size_mm=(1, 1, 2), dipole_pad=None)
    assert "CommandLine" not in record["GeneratedBy"][0] and record["DipoleKernel"]["Padding"] == "none"
    with provenance.command("daqsm-x", ["--a", "b c"]):
        assert provenance.build_record("x", None)["GeneratedBy"][0]["CommandLine"] == "daqsm-x --a 'b c'"
    assert "CommandLine" not in provenance.build_record("x", None)["GeneratedBy"][0]


@pytest.fixture(scope="module")
def model_and_case(tmp_path_factory):
    pytest.importorskip("tensorflow")
    import keras

    from daqsm.network_model.unet import build_target_model

    root = tmp_path_factory.mktemp("prov")
    folder, *_ = _write_case(root / "case")
    keras.utils.set_random_seed(2)
    build_target_model(depth=1, base_filters=4).save(root / "pre.keras")
    return root / "pre.keras", folder


def test_the_sidecar_writer_lives_with_its_record(tmp_path):
    """One module owns the sidecar, its keys and its writer (the atomic write is daqsm.outputs')."""
    record = provenance.build_record("a map", "ppm", voxel_size_mm=(1, 1, 1.5))
    path = provenance.write_sidecar(tmp_path / "x.nii.gz", record, {"QC": {"Rms": np.float32(0.5)}})
    assert path == str(tmp_path / "x.json")
    content = json.loads(Path(path).read_text())
    assert content["VoxelSize"] == [1.0, 1.0, 1.5] and content["QC"] == {"Rms": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temp left
    assert not (Path(provenance.__file__).parent / "training_data" / "formats" / "sidecar.py").exists()


def test_finetune_sidecars_match_the_run(model_and_case, tmp_path):
    from daqsm.network_model.model_finetune import train as finetune

    model, case = model_and_case
    out = tmp_path / "ft" / "sub-01"
    argv = ["--model", str(model), "--case", str(case), "-o", str(out), "--iterations", "3", "--progress", "false",
            "--dipole_pad", "fast", "--bids", "true", "--convergence_tol", "0", "--tau", "0"]
    assert finetune.main(argv) == 0
    records = _sidecars_of_all_volumes(tmp_path / "ft")
    assert set(records) == {"sub-01_Chimap.nii.gz", "sub-01_Chimap_residual.nii.gz"}
    qsm = records["sub-01_Chimap.nii.gz"]
    _check_common(qsm, "ppm", "daqsm-finetune", "--iterations 3", "--dipole_pad fast")
    zooms = nib.load(tmp_path / "ft" / "sub-01_Chimap.nii.gz").header.get_zooms()
    assert qsm["VoxelSize"] == pytest.approx(list(zooms)) == [1.0, 1.0, 1.5]
    assert qsm["B0Direction"] == [0.0, 0.0, 1.0] and qsm["MagneticFieldStrength"] == 3.0
    assert qsm["DipoleKernel"]["Padding"] == "fast" and qsm["DipoleKernel"]["D0"] == 0.0
    assert qsm["Model"]["SHA256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert qsm["Config"]["iterations"] == 3 and qsm["Config"]["case"] == str(case)
    rows = (tmp_path / "ft" / "sub-01_Chimap_loss.csv").read_text().strip().splitlines()
    assert qsm["FineTuning"]["iterations"] == 3 == len(rows) - 2  # header + iteration 0
    assert qsm["FineTuning"]["stop_reason"] == "done"
    residual = records["sub-01_Chimap_residual.nii.gz"]
    assert residual["QC"] == qsm["QC"] and "noise estimate" in qsm["QC"]["Summary"]
    assert residual["Model"] == qsm["Model"] and residual["Units"] == "ppm"


def test_infer_sidecars_match_the_run(model_and_case, tmp_path):
    from daqsm.network_model import infer

    model, case = model_and_case
    out = tmp_path / "inf" / "sub-02.nii.gz"
    assert infer.main(["--model", str(model), "--case", str(case), "-o", str(out), "--whole", "--bids"]) == 0
    records = _sidecars_of_all_volumes(tmp_path / "inf")
    assert set(records) == {"sub-02_Chimap.nii.gz", "sub-02_Chimap_residual.nii.gz"}
    qsm = records["sub-02_Chimap.nii.gz"]
    _check_common(qsm, "ppm", "daqsm-infer", "--whole", "--bids")
    assert qsm["Model"]["SHA256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert qsm["VoxelSize"] == [1.0, 1.0, 1.5] and qsm["MagneticFieldStrength"] == 3.0
    assert qsm["Config"]["whole"] is True and qsm["mode"] == "whole"
    assert qsm["QC"]["ResidualRmsPpm"] > 0 and records["sub-02_Chimap_residual.nii.gz"]["QC"] == qsm["QC"]


def test_fieldmap_and_baseline_sidecars_match_the_run(tmp_path):
    from daqsm.evaluation import baseline_cli as baselines
    from daqsm.training_data import qsmFmapCal_gpu
    from daqsm.training_data.volume_io import write_volume
    from tests.network_model.synthetic import ball_mask, smooth_chi

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    (tmp_path / "chi").mkdir()
    for i in range(2):
        write_volume(tmp_path / "chi" / f"m{i}.nii.gz", smooth_chi(16, i), affine)
    write_volume(tmp_path / "mask.nii.gz", ball_mask(16).astype(np.uint8), affine)
    assert qsmFmapCal_gpu.main([str(tmp_path / "chi"), "-o", str(tmp_path / "fields"), "--pad", "8",
                                "--d0", str(1 / 3)]) == 0
    records = _sidecars_of_all_volumes(tmp_path / "fields")
    assert len(records) == 2
    for record in records.values():
        _check_common(record, "ppm", "daqsm-fieldmap", "--pad 8")
        assert record["DipoleKernel"]["Padding"] == "8" and record["DipoleKernel"]["D0"] == pytest.approx(1 / 3)
        assert record["VoxelSize"] == [1.0, 1.0, 2.0] and record["B0Direction"] == [0.0, 0.0, 1.0]
    # the resolved config of the whole run beside the maps: every option, the given values
    config = json.loads(Path(config_companion(tmp_path / "fields", "fieldmap", folder=True)).read_text())
    assert set(config) == {f.name for f in dataclasses.fields(qsmFmapCal_gpu.FieldmapConfig)}
    assert (config["inputs"], config["output"], config["pad"], config["demean"]) == (
        [str(tmp_path / "chi")], str(tmp_path / "fields"), "8", False)
    assert config["d0"] == pytest.approx(1 / 3)
    field = next((tmp_path / "fields").glob("*.nii.gz"))
    out = tmp_path / "base" / "tkd.nii.gz"
    assert baselines.main(["tkd", "--field", str(field), "--mask", str(tmp_path / "mask.nii.gz"), "-o", str(out),
                           "--pad", "fast"]) == 0
    record = _sidecars_of_all_volumes(tmp_path / "base")["tkd.nii.gz"]
    _check_common(record, "ppm", "daqsm-baseline", "tkd", "--pad fast")
    assert record["Config"]["method"] == "tkd" and record["DipoleKernel"]["Padding"] == "fast"
    # the sidecar holds the resolved config: every option of the command, the given values
    assert set(record["Config"]) == {f.name for f in dataclasses.fields(baselines.BaselineConfig)}
    assert (record["Config"]["pad"], record["Config"]["output"]) == ("fast", str(out))
    assert record["Sources"][0] == str(field)


def test_simulated_case_volumes_have_sidecars(tmp_path):
    from daqsm.training_data.simulator.simulate import write_case

    case = {"b0_tesla": 7.0, "te_s": [0.004, 0.012], "voxel_size_mm": [1.0, 1.0, 1.0], "b0_dir": [0.0, 0.0, 1.0],
            "source": "builtin", "variant": "Sim1", "seed": 0}
    arrays = {"local_field": np.zeros((4, 4, 4), np.float32), "magnitude": np.ones((4, 4, 4, 2), np.float32),
              "mask": np.ones((4, 4, 4), np.uint8), "chi": np.zeros((4, 4, 4), np.float32)}
    write_case(tmp_path / "Sim1Snr1", arrays, case, np.eye(4))
    records = _sidecars_of_all_volumes(tmp_path / "Sim1Snr1")
    assert set(records) == {f"{name}.nii.gz" for name in arrays}
    assert records["local_field.nii.gz"]["Units"] == "ppm" and records["mask.nii.gz"]["Units"] is None
    assert records["magnitude.nii.gz"]["EchoTime"] == [0.004, 0.012]
    assert records["local_field.nii.gz"]["DipoleKernel"]["Padding"] == "auto" and "DipoleKernel" not in records["mask.nii.gz"]
    assert all(r["MagneticFieldStrength"] == 7.0 and r["Config"]["variant"] == "Sim1" for r in records.values())


def test_genchi_nifti_maps_have_sidecars(tmp_path):
    from daqsm.training_data import genChi
    from daqsm.training_data.volume_io import write_volume
    from tests.network_model.synthetic import ball_mask, smooth_chi

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    write_volume(tmp_path / "chi.nii.gz", smooth_chi(16, 0), affine)
    write_volume(tmp_path / "mask.nii.gz", ball_mask(16).astype(np.uint8), affine)
    assert genChi.main([str(tmp_path / "chi.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"), "-n", "2",
                        "-o", str(tmp_path / "maps") + "/", "--seed", "4", "--quiet"]) == 0
    records = _sidecars_of_all_volumes(tmp_path / "maps")
    assert len(records) == 4
    _check_common(records["chi_0000.nii.gz"], "ppm", "daqsm-genchi", "-n 2", "--seed 4")
    assert records["chi_0001.nii.gz"]["Config"]["seed"] == 4 and "DipoleKernel" not in records["chi_0001.nii.gz"]
    assert records["mask_0000.nii.gz"]["Units"] is None
