"""Inference command: tiled vs whole agreement, affine and mask handling, units, bad input.

The project U-Net is not needed: a small two-input fully convolutional Keras model with two 2x
poolings (divisor 4) stands in for it, built and saved once per session.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daqsm.network_model import infer
from daqsm.network_model.model_info import write_model_info
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.units import hz_per_ppm

SHAPE = (50, 46, 48)  # 50 and 46 are not multiples of 4: padding is exercised
AFFINE = np.array([[1.0, 0, 0, -20], [0, 1.2, 0, -30], [0, 0, 0.9, -10], [0, 0, 0, 1]])


def build_small_model(n_inputs: int = 2):
    """Two poolings + two upsamplings (divisor 4), skips, output x mask: contract 3 in miniature."""
    from daqsm.tf_env import import_tensorflow

    import_tensorflow()
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    field = keras.Input((None, None, None, 1), name="field_ppm")
    mask = keras.Input((None, None, None, 1), name="mask")
    x = layers.Concatenate()([field * 30.0, mask]) if n_inputs == 2 else field
    # 3x3x3 convolutions at full resolution, 1x1x1 at the coarse levels: the receptive field
    # (radius ~6 voxels) stays below the worst-case distance to a tile edge with tile 32 /
    # overlap 16 (8 voxels), so tiled and whole-volume inference can agree closely.
    c1 = layers.Conv3D(4, 3, padding="same", activation="relu")(x)
    c2 = layers.Conv3D(4, 1, activation="relu")(layers.MaxPooling3D(2)(c1))
    c3 = layers.Conv3D(4, 1, activation="relu")(layers.MaxPooling3D(2)(c2))
    u2 = layers.Conv3D(4, 1, activation="relu")(layers.Concatenate()([layers.UpSampling3D(2)(c3), c2]))
    u1 = layers.Conv3D(4, 3, padding="same", activation="relu")(
        layers.Concatenate()([layers.UpSampling3D(2)(u2), c1]))
    chi = layers.Conv3D(1, 1)(u1)
    if n_inputs == 2:
        return keras.Model([field, mask], layers.Multiply()([chi, mask]))
    return keras.Model(field, chi)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.keras"
    build_small_model().save(path)
    return str(path)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """Ellipsoidal 'head' mask with spheres of +-0.1..0.3 ppm; field by dipole convolution (ppm)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in SHAPE], indexing="ij"))
    mask = ((grid[0] / 22) ** 2 + (grid[1] / 20) ** 2 + (grid[2] / 21) ** 2) <= 1
    chi = np.zeros(SHAPE, np.float32)
    rng = np.random.default_rng(3)
    for _ in range(8):
        centre = rng.uniform(-10, 10, 3)
        radius = rng.uniform(2, 6)
        chi[np.sum((grid - centre[:, None, None, None]) ** 2, axis=0) <= radius**2] = rng.uniform(-0.3, 0.3)
    chi *= mask
    field = forward_field(chi, (1.0, 1.2, 0.9), pad="auto") * mask
    folder = tmp_path_factory.mktemp("phantom")
    nib.save(nib.Nifti1Image(field.astype(np.float32), AFFINE), folder / "field.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), folder / "mask.nii.gz")
    return {"dir": folder, "field": str(folder / "field.nii.gz"), "mask": str(folder / "mask.nii.gz"),
            "field_ppm": field, "mask_arr": mask}


def run_infer(model, phantom, out, *extra):
    return infer.main(["--model", model, "--field", phantom["field"], "--mask", phantom["mask"], "-o", str(out),
                       *extra])


def test_tiled_matches_whole_keeps_affine_and_zero_outside(model_path, phantom, tmp_path):
    assert run_infer(model_path, phantom, tmp_path / "tiled.nii.gz", "--tile", "32", "--overlap", "16",
                     "--batch-size", "2") == 0
    assert run_infer(model_path, phantom, tmp_path / "whole.nii.gz", "--whole") == 0
    tiled_img, whole_img = nib.load(tmp_path / "tiled.nii.gz"), nib.load(tmp_path / "whole.nii.gz")
    tiled, whole = tiled_img.get_fdata(dtype=np.float32), whole_img.get_fdata(dtype=np.float32)
    mask = phantom["mask_arr"]
    assert tiled.shape == SHAPE and tiled_img.get_data_dtype() == np.float32
    np.testing.assert_allclose(tiled_img.affine, AFFINE)
    np.testing.assert_allclose(whole_img.affine, AFFINE)
    assert np.all(tiled[~mask] == 0) and np.all(whole[~mask] == 0)
    assert np.linalg.norm(whole[mask]) > 0
    nrmse = np.linalg.norm(tiled[mask] - whole[mask]) / np.linalg.norm(whole[mask])
    assert nrmse <= 0.01, nrmse
    record = json.loads((tmp_path / "tiled.json").read_text())
    assert record["mode"] == "tiled" and record["divisor"] == 4 and record["tiles"] > 1
    np.testing.assert_allclose(record["input_voxel_size_mm"], [1.0, 1.2, 0.9])


def test_no_overlap_shows_seams(model_path, phantom, tmp_path):
    """The agreement above comes from the blending: tiles without overlap disagree more."""
    run_infer(model_path, phantom, tmp_path / "a.nii.gz", "--tile", "16", "--overlap", "0")
    run_infer(model_path, phantom, tmp_path / "w.nii.gz", "--whole")
    a, w = (nib.load(tmp_path / n).get_fdata() for n in ("a.nii.gz", "w.nii.gz"))
    assert np.linalg.norm(a - w) / np.linalg.norm(w) > 0.01


def test_mat_field_in_hz_gives_the_ppm_result(model_path, phantom, tmp_path):
    import scipy.io

    b0 = 3.0
    scipy.io.savemat(tmp_path / "field_hz.mat", {"fieldmap": phantom["field_ppm"] * hz_per_ppm(b0)})
    assert infer.main(["--model", model_path, "--field", str(tmp_path / "field_hz.mat"), "--mask", phantom["mask"],
                       "--units", "hz", "--b0", str(b0), "--voxel-size", "1", "1.2", "0.9", "--whole",
                       "-o", str(tmp_path / "from_hz.nii.gz")]) == 0
    run_infer(model_path, phantom, tmp_path / "from_ppm.nii.gz", "--whole")
    from_hz = nib.load(tmp_path / "from_hz.nii.gz")
    np.testing.assert_allclose(from_hz.get_fdata(), nib.load(tmp_path / "from_ppm.nii.gz").get_fdata(), atol=1e-5)
    np.testing.assert_allclose(np.diag(from_hz.affine)[:3], [1.0, 1.2, 0.9])


def test_case_folder_and_geometry_warning(model_path, phantom, tmp_path, capsys):
    case = tmp_path / "Sim1Snr1"
    case.mkdir()
    nib.save(nib.Nifti1Image(phantom["field_ppm"].astype(np.float32), AFFINE), case / "local_field.nii.gz")
    nib.save(nib.Nifti1Image(phantom["mask_arr"].astype(np.uint8), AFFINE), case / "mask.nii.gz")
    (case / "case.json").write_text(json.dumps({"b0_tesla": 7.0, "te_s": [0.004], "voxel_size_mm": [1, 1.2, 0.9],
                                                "b0_dir": [0, 1, 0]}))
    model_copy = tmp_path / "m.keras"
    model_copy.write_bytes(Path(model_path).read_bytes())
    write_model_info(model_copy, voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), divisor=4)
    assert infer.main(["--model", str(model_copy), "--case", str(case), "-o", str(tmp_path / "out.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "B0 direction" in err and "voxel size" in err and len(err.strip().splitlines()) == 1
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["model_info"]["voxel_size_mm"] == [1.0, 1.0, 1.0] and record["b0_tesla"] == 7.0


def test_run_folder_stands_for_its_target_model_and_sidecar(model_path, phantom, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "target_model.keras").write_bytes(Path(model_path).read_bytes())
    write_model_info(run / "target_model.keras", voxel_size_mm=(2, 2, 2), divisor=4)
    out = tmp_path / "out.nii.gz"
    assert infer.main(["--model", str(run), "--field", phantom["field"], "--mask", phantom["mask"], "-o", str(out)]) == 0
    assert "voxel size" in capsys.readouterr().err  # the folder's sidecar was read
    assert json.loads((tmp_path / "out.json").read_text())["model_info"]["voxel_size_mm"] == [2.0, 2.0, 2.0]


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "garbage.keras").write_text("not a zip file")
    build_small_model(n_inputs=1).save(folder / "one_input.keras")
    return folder


@pytest.mark.parametrize("case", ["missing_model", "garbage_model", "one_input_model", "shape_mismatch",
                                  "output_exists", "bad_tile", "bad_units", "hz_without_b0", "not_nifti_output"])
def test_bad_input_exits_2_and_writes_nothing(case, model_path, phantom, bad_models, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    args = {"model": model_path, "field": phantom["field"], "mask": phantom["mask"]}
    extra = []
    if case == "missing_model":
        args["model"] = str(tmp_path / "nope.keras")
    elif case == "garbage_model":
        args["model"] = str(bad_models / "garbage.keras")
    elif case == "one_input_model":
        args["model"] = str(bad_models / "one_input.keras")
    elif case == "shape_mismatch":
        nib.save(nib.Nifti1Image(np.ones((50, 46, 47), np.uint8), AFFINE), tmp_path / "m.nii.gz")
        args["mask"] = str(tmp_path / "m.nii.gz")
    elif case == "output_exists":
        out.write_bytes(b"keep me")
    elif case == "bad_tile":
        extra = ["--tile", "30"]
    elif case == "bad_units":
        extra = ["--units", "tesla"]
    elif case == "hz_without_b0":
        extra = ["--units", "hz"]
    elif case == "not_nifti_output":
        out = tmp_path / "out.mat"
    rc = infer.main(["--model", args["model"], "--field", args["field"], "--mask", args["mask"], "-o", str(out),
                     *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err
    if case == "output_exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not (tmp_path / "out.json").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_mat_field_keeps_the_nifti_masks_geometry_or_says_what_it_assumes(model_path, phantom, tmp_path, capsys):
    """Issue 24: a .mat field was written with an identity affine; now the NIfTI mask's affine is kept."""
    import scipy.io

    scipy.io.savemat(tmp_path / "field.mat", {"RDF": phantom["field_ppm"]})
    assert infer.main(["--model", model_path, "--field", str(tmp_path / "field.mat"), "--mask", phantom["mask"],
                       "--whole", "-o", str(tmp_path / "a.nii.gz")]) == 0
    np.testing.assert_allclose(nib.load(tmp_path / "a.nii.gz").affine, AFFINE)
    record = json.loads((tmp_path / "a.json").read_text())
    np.testing.assert_allclose(record["input_voxel_size_mm"], [1.0, 1.2, 0.9])
    assert record["geometry_sources"]["voxel_size_mm"] == f"mask {phantom['mask']}"
    assert "assumed" not in capsys.readouterr().err
    scipy.io.savemat(tmp_path / "mask.mat", {"mask": phantom["mask_arr"].astype(np.uint8)})
    assert infer.main(["--model", model_path, "--field", str(tmp_path / "field.mat"), "--mask",
                       str(tmp_path / "mask.mat"), "--whole", "-o", str(tmp_path / "b.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "1 mm isotropic voxels and B0 along the third voxel axis (z) assumed" in err
