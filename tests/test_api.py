"""The Python API (`import daqsm`) on arrays in memory gives the same arrays as each step's command."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from daqsm.training_data.volume_io import read_volume, write_volume
from tests.network_model.synthetic import ball_mask, smooth_chi

N = 16
VOXEL = (1.0, 1.0, 1.25)  # exact in a NIfTI header (float32), so command and API see the same geometry
AFFINE = np.diag(list(VOXEL) + [1.0])


def test_import_daqsm_is_light():
    code = ("import sys, daqsm; assert callable(daqsm.metrics); "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import daqsm

    with pytest.raises(AttributeError):
        daqsm.no_such_step  # noqa: B018


@pytest.fixture(scope="module")
def arrays():
    mask = ball_mask(N).astype(np.uint8)
    return {"chi": smooth_chi(N, 1) * mask, "mask": mask}


def test_step1_synthesize_maps_matches_genchi(arrays, tmp_path):
    import daqsm
    from daqsm.training_data import genChi

    write_volume(tmp_path / "chi.nii.gz", arrays["chi"], AFFINE)
    write_volume(tmp_path / "mask.nii.gz", arrays["mask"], AFFINE)
    assert genChi.main([str(tmp_path / "chi.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"), "-n", "2",
                        "--seed", "4", "-o", str(tmp_path / "syn.h5"), "--quiet"]) == 0
    chi, masks, params = daqsm.synthesize_maps(arrays["chi"], arrays["mask"], 2, seed=4, voxel_size_mm=VOXEL)
    with h5py.File(tmp_path / "syn.h5", "r") as h5:
        np.testing.assert_array_equal(chi, h5["chi"][()])
        np.testing.assert_array_equal(masks, h5["mask"][()].astype(bool))
    assert len(params) == 2 and params[1]["index"] == 1


def test_step2_field_maps_matches_command(arrays, tmp_path):
    pytest.importorskip("tensorflow")
    import daqsm
    from daqsm.training_data import qsmFmapCal_gpu

    write_volume(tmp_path / "chi.nii.gz", arrays["chi"], AFFINE)
    write_volume(tmp_path / "mask.nii.gz", arrays["mask"], AFFINE)
    assert qsmFmapCal_gpu.main([str(tmp_path / "chi.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
                                "--pad", "4", "-o", str(tmp_path / "field.nii.gz")]) == 0
    field = daqsm.field_maps(arrays["chi"], VOXEL, mask=arrays["mask"], pad=4)
    np.testing.assert_array_equal(field, read_volume(tmp_path / "field.nii.gz").data)
    stacked = daqsm.field_maps(np.stack([arrays["chi"]] * 2), VOXEL, mask=arrays["mask"], pad=4)
    np.testing.assert_array_equal(stacked[1], field)


def test_step3_make_patches_matches_command(arrays, tmp_path):
    import daqsm
    from daqsm.training_data import genRDFPatchesSyn
    from daqsm.training_data.dipole import forward_field

    field = (forward_field(arrays["chi"], VOXEL) * arrays["mask"]).astype(np.float32)
    for name, data in (("chi", arrays["chi"]), ("mask", arrays["mask"]), ("field", field)):
        write_volume(tmp_path / f"{name}.nii.gz", data, AFFINE)
    assert genRDFPatchesSyn.main(["--source", str(tmp_path / "chi.nii.gz"), "--source-masks",
                                  str(tmp_path / "mask.nii.gz"), "--source-fields", str(tmp_path / "field.nii.gz"),
                                  "--target-field", str(tmp_path / "field.nii.gz"), "--target-mask",
                                  str(tmp_path / "mask.nii.gz"), "--patch-size", "8", "-o",
                                  str(tmp_path / "p.h5"), "--quiet"]) == 0
    patches = daqsm.make_patches([field], [arrays["mask"]], [arrays["chi"]], [field], [arrays["mask"]],
                                 voxel_size_mm=VOXEL, patch_size=8)
    with h5py.File(tmp_path / "p.h5", "r") as h5:
        for group in ("source", "target"):
            for key, value in patches[group].items():
                np.testing.assert_array_equal(value, h5[group][key][()], err_msg=f"{group}/{key}")
        np.testing.assert_array_equal(patches["index"]["source_origin"], h5["index/source_origin"][()])


def _two_protocol_patches(arrays, **extra):
    import daqsm
    from daqsm.training_data.dipole import forward_field

    field = (forward_field(arrays["chi"], VOXEL) * arrays["mask"]).astype(np.float32)
    return daqsm.make_patches([field], [arrays["mask"]], [arrays["chi"]], [field, 0.5 * field, field],
                              [arrays["mask"]] * 3, voxel_size_mm=VOXEL, patch_size=8, target_patch_size=8,
                              target_b0_tesla=[7.0, 3.0, 7.0], target_te_s=0.012,
                              target_b0_dir=[(0, 0, 1), (0, 0.2588, 0.9659), (0, 0, 1)], **extra)


def test_step3_make_patches_keeps_each_targets_protocol_as_the_file_does(arrays, tmp_path):
    """Targets of two protocols: the dict records them as step 3's format 3 does, and the in-memory
    group step 4 builds from it gives every crop the protocol the file reader gives it."""
    from daqsm.network_model.data import group_from_arrays
    from daqsm.training_data.formats.patch_h5 import read_patch_group

    patches = _two_protocol_patches(arrays)
    crops = patches["index"]["target_volume"]
    expected = {0: (7.0, (0.0, 0.0, 1.0)), 1: (3.0, (0.0, 0.2588, 0.9659)), 2: (7.0, (0.0, 0.0, 1.0))}
    in_memory = group_from_arrays("target", patches["target"], patches["attrs"]["target"], index=patches["index"])
    assert in_memory.mixed and len(in_memory.protocols) == 2
    with h5py.File(tmp_path / "p.h5", "w") as h5:  # the same content as a file, read by step 4's reader
        for group in ("source", "target", "index"):
            for key, value in patches[group].items():
                h5.create_dataset(f"{group}/{key}", data=value)
        for group in ("source", "target"):
            h5[group].attrs.update(patches["attrs"][group])
    from_file = read_patch_group(str(tmp_path / "p.h5"), "target")
    for crop, (memory, file) in enumerate(zip(in_memory.crop_protocols(), from_file.crop_protocols())):
        assert memory == file
        tesla, direction = expected[int(crops[crop])]
        assert memory.b0_tesla == tesla and np.allclose(memory.b0_dir, direction, atol=1e-3)


@pytest.mark.parametrize("argument, value, expected", [
    ("target_b0_tesla", [7.0, 3.0], "target_b0_tesla: expected a number or one per target (3)"),
    ("target_voxel_size_mm", [(1, 1, 1)] * 2, "target_voxel_size_mm: expected an (x, y, z) triple or one per target"),
    ("target_voxel_size_mm", (1, 1, -1), "target_voxel_size_mm"),
])
def test_step3_make_patches_per_target_values_are_checked(arrays, argument, value, expected):
    import daqsm
    from daqsm.errors import InputError

    fields = [arrays["chi"]] * 3
    with pytest.raises(InputError, match=re.escape(expected)):
        daqsm.make_patches(fields[:1], [arrays["mask"]], [arrays["chi"]], fields, [arrays["mask"]] * 3,
                           patch_size=8, **{argument: value})


def test_step4_on_arrays_of_two_protocols_trains_with_a_kernel_per_crop(arrays):
    pytest.importorskip("tensorflow")
    import daqsm
    from daqsm.errors import InputError

    patches = _two_protocol_patches(arrays)
    tiny = {"depth": 1, "base_filters": 4, "batch_size": 1, "target_batch_size": 1, "max_steps": 2,
            "val_fraction": 0.0, "progress": False}
    model, log = daqsm.pretrain(patches=patches, **tiny)
    assert [row["step"] for row in log] == [1, 2] and all(np.isfinite(row["ndi"]) for row in log)
    with pytest.raises(InputError, match="phase_rad_per_ppm: one value cannot serve the 2 protocols"):
        daqsm.pretrain(patches=patches, phase_rad_per_ppm=10.0, **tiny)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny patch set, and step 4 run through the command and through the API."""
    pytest.importorskip("tensorflow")
    import daqsm
    from daqsm.network_model.train_model import train
    from tests.network_model.synthetic import make_patch_file

    root = tmp_path_factory.mktemp("api")
    patch_file = make_patch_file(root / "patches.h5", count=4, n=N)
    tiny = {"depth": 1, "base_filters": 4, "batch_size": 2, "max_steps": 2, "val_fraction": 0.0}
    args = [f"--{k}={v}" for k, v in tiny.items()] + ["--progress", "false"]
    assert train.main(["--datasets_path", patch_file, "--run_dir", str(root / "run"), *args]) == 0
    model, log = daqsm.pretrain(patch_file=patch_file, **tiny)
    return root, model, log, patch_file, tiny


def test_step4_pretrain_matches_command(trained):
    import keras

    root, model, log, _, _ = trained
    command_model = keras.saving.load_model(root / "run" / "target_model.keras")
    x = np.random.default_rng(0).standard_normal((1, N, N, N, 1)).astype(np.float32) * 0.05
    m = np.ones_like(x)
    np.testing.assert_array_equal(np.asarray(model([x, m])), np.asarray(command_model([x, m])))
    assert [row["step"] for row in log] == [1, 2]


def test_step4_on_arrays_writes_nothing_and_matches_command(trained, tmp_path, monkeypatch):
    import tempfile

    import keras

    import daqsm

    root, _, _, patch_file, tiny = trained
    with h5py.File(patch_file, "r") as h5:
        patches = {g: {k: h5[g][k][()] for k in h5[g]} for g in ("source", "target")}
        patches["attrs"] = {g: dict(h5[g].attrs) for g in ("source", "target")}
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    monkeypatch.chdir(quiet)
    monkeypatch.setattr(tempfile, "tempdir", str(quiet))
    model, log = daqsm.pretrain(patches, **tiny)
    assert list(quiet.iterdir()) == []  # no temporary patch file, no run folder
    command_model = keras.saving.load_model(root / "run" / "target_model.keras")
    x = np.random.default_rng(1).standard_normal((1, N, N, N, 1)).astype(np.float32) * 0.05
    m = np.ones_like(x)
    np.testing.assert_allclose(np.asarray(model([x, m])), np.asarray(command_model([x, m])), rtol=1e-5, atol=1e-6)
    with open(root / "run" / "log.csv", newline="", encoding="utf-8") as fh:
        command_log = list(csv.DictReader(fh))
    assert [row["step"] for row in log] == [1, 2]
    np.testing.assert_allclose([row["loss"] for row in log], [float(r["loss"]) for r in command_log], rtol=1e-5)
    with pytest.raises(daqsm.errors.InputError, match="patches"):
        daqsm.pretrain({"source": patches["source"]}, **tiny)


def test_infer_and_finetune_match_commands(trained, tmp_path):
    import daqsm
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune_cmd
    from daqsm.training_data.dipole import forward_field

    root, _, _, _, _ = trained
    model_path = root / "run" / "target_model.keras"
    mask = ball_mask(N).astype(np.uint8)
    field = (forward_field(smooth_chi(N, 9) * mask, VOXEL) * mask).astype(np.float32)
    write_volume(tmp_path / "field.nii.gz", field, AFFINE)
    write_volume(tmp_path / "mask.nii.gz", mask, AFFINE)
    files = ["--field", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz")]

    assert infer.main(["--model", str(model_path), *files, "--whole", "-o", str(tmp_path / "inf.nii.gz")]) == 0
    chi = daqsm.infer(str(model_path), field, mask, whole=True)
    np.testing.assert_array_equal(chi, read_volume(tmp_path / "inf.nii.gz").data)

    opts = {"iterations": 3, "learning_rate": 1e-3, "tau": 0.0, "convergence_tol": 0.0}
    assert finetune_cmd.main(["--model", str(model_path), *files, "--b0", "3", "--te", "0.02",
                              "-o", str(tmp_path / "ft.nii.gz"), "--progress", "false",
                              *[f"--{k}={v}" for k, v in opts.items()]]) == 0
    chi_ft, record, _ = daqsm.finetune(str(model_path), field, mask, voxel_size_mm=VOXEL, b0_tesla=3.0,
                                       te_s=0.02, **opts)
    np.testing.assert_array_equal(chi_ft, read_volume(tmp_path / "ft.nii.gz").data)
    assert record["FineTuning"]["iterations"] == 3 and len(record["log"]) == 4  # iteration 0 + three


def test_metrics_matches_evaluation():
    import daqsm
    from daqsm.evaluation.metrics import rc2_metrics

    rng = np.random.default_rng(2)
    truth = smooth_chi(N, 3)
    mask = ball_mask(N)
    recon = truth + 0.01 * rng.standard_normal(truth.shape).astype(np.float32)
    got = daqsm.metrics(recon, truth, None, mask)
    assert got["rmse"] == rc2_metrics(recon, truth, None, mask).values["rmse"] > 0
