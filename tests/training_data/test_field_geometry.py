"""A field without an affine (.mat, .npy, HDF5 without attributes) takes its geometry from a NIfTI
companion on the same grid, from the user, or says in one line that 1 mm and B0 along z are assumed."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry
from daqsm.training_data.geometry import b0_dir_from_affine
from daqsm.training_data.volume_io import read_volume

SHAPE = (20, 18, 16)
# the voxel size, oblique (rotation about x by 10 degrees) and shifted
_C, _S = np.cos(np.radians(10)), np.sin(np.radians(10))
AFFINE = np.array([[1.0625, 0, 0, -10], [0, 1.0625 * _C, -1.0714 * _S, -12], [0, 1.0625 * _S, 1.0714 * _C, 5],
                   [0, 0, 0, 1]])


@pytest.fixture()
def files(tmp_path):
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in SHAPE], indexing="ij"))
    mask = (np.sum((grid / 7.0) ** 2, axis=0) <= 1).astype(np.uint8)
    field = (0.02 * np.sin(grid[0] / 3.0) * mask).astype(np.float32) + 0.01 * mask
    scipy.io.savemat(tmp_path / "field.mat", {"RDF": field})
    scipy.io.savemat(tmp_path / "mask.mat", {"mask": mask})
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(field, AFFINE), tmp_path / "field.nii.gz")
    return tmp_path


def test_mat_field_takes_the_nifti_masks_geometry(files):
    geom = resolve_field_geometry(read_volume(files / "field.mat"), [("mask", files / "mask.nii.gz")])
    np.testing.assert_allclose(geom.affine, AFFINE)
    np.testing.assert_allclose(geom.geometry.voxel_size_mm, (1.0625, 1.0625, 1.0714), rtol=1e-6)
    np.testing.assert_allclose(geom.geometry.b0_dir, b0_dir_from_affine(AFFINE))
    assert geom.geometry.b0_dir[2] < 0.99  # oblique: not the default
    assert geom.sources["voxel_size_mm"].startswith("mask ") and geom.sources["b0_dir"].startswith("mask ")
    assert assumption_line(geom, "field") is None


def test_without_a_nifti_companion_the_default_is_said_in_one_line(files):
    geom = resolve_field_geometry(read_volume(files / "field.mat"), [("mask", files / "mask.mat")])
    assert geom.geometry.voxel_size_mm == (1.0, 1.0, 1.0) and geom.geometry.b0_dir == (0.0, 0.0, 1.0)
    np.testing.assert_allclose(geom.affine, np.eye(4))
    line = assumption_line(geom, "field f.mat")
    assert "\n" not in line and "1 mm isotropic" in line and "B0 along" in line
    assert geom.sources == {"voxel_size_mm": "default", "b0_dir": "default", "affine": "default"}


def test_user_voxel_size_builds_the_affine_and_b0_stays_assumed(files):
    geom = resolve_field_geometry(read_volume(files / "field.mat"), [("mask", files / "mask.mat")], (0.5, 0.5, 2))
    np.testing.assert_allclose(np.diag(geom.affine)[:3], (0.5, 0.5, 2.0))
    assert geom.sources["voxel_size_mm"] == "option --voxel-size"
    line = assumption_line(geom, "field")
    assert "B0 along" in line and "1 mm" not in line


def test_companion_on_another_grid_is_not_used(files, tmp_path):
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE), tmp_path / "other.nii.gz")
    geom = resolve_field_geometry(read_volume(files / "field.mat"), [("magnitude", tmp_path / "other.nii.gz")])
    assert geom.assumed == ["voxel_size_mm", "b0_dir"]


def test_nifti_field_keeps_its_own(files):
    geom = resolve_field_geometry(read_volume(files / "field.nii.gz"), [("mask", files / "mask.mat")])
    np.testing.assert_allclose(geom.affine, AFFINE)
    assert geom.sources["voxel_size_mm"].startswith("file ") and not geom.assumed


def test_check_prints_where_each_value_came_from(files, capsys):
    from daqsm.network_model import check_cli

    # inference's readers: a ppm field without B0/TE is enough (step 5 would also need the phase scale)
    assert check_cli.main(["--step", "infer", "--field", str(files / "field.mat"), "--mask",
                           str(files / "mask.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "voxel size 1.06 x 1.06 x 1.07 mm" in out
    assert f"geometry from: voxel size mask {files / 'mask.nii.gz'}" in out
    assert check_cli.main(["--step", "infer", "--field", str(files / "field.mat"), "--mask",
                           str(files / "mask.mat")]) == 0
    out = capsys.readouterr().out
    assert "voxel size default; B0 direction default" in out and "1 mm isotropic voxels and B0" in out


def test_baseline_output_overlays_on_the_mask(files, tmp_path, capsys):
    from daqsm.evaluation import baseline_cli as baselines

    out = tmp_path / "tkd.nii.gz"
    assert baselines.main(["tkd", "--field", str(files / "field.mat"), "--mask", str(files / "mask.nii.gz"),
                           "-o", str(out)]) == 0
    np.testing.assert_allclose(nib.load(out).affine, AFFINE, atol=1e-6)
    record = json.loads((tmp_path / "tkd.json").read_text())
    assert record["GeometrySources"]["affine"].startswith("mask ")
    assert "warning" not in capsys.readouterr().err
    assert baselines.main(["tkd", "--field", str(files / "field.mat"), "--mask", str(files / "mask.mat"),
                           "-o", str(tmp_path / "tkd2.nii.gz")]) == 0
    assert "1 mm isotropic voxels" in capsys.readouterr().err


def test_finetune_inputs_take_the_masks_geometry(files):
    from daqsm.network_model.target_data import load_files

    target = load_files(files / "field.mat", files / "mask.nii.gz", b0_tesla=3.0, te_s=0.02)
    np.testing.assert_allclose(target.affine, AFFINE)
    np.testing.assert_allclose(target.geometry.voxel_size_mm, (1.0625, 1.0625, 1.0714), rtol=1e-6)
    assert target.geometry_note is None
    target = load_files(files / "field.mat", files / "mask.mat")
    assert "1 mm isotropic" in target.geometry_note
