"""Step 2 command (qsmFmapCal_gpu): outputs, overrides, batches, bad input and the real 2016 data."""
from __future__ import annotations

import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from daqsm.training_data import qsmFmapCal_gpu
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.volume_io import read_volume, write_volume


@pytest.fixture
def chi_file(tmp_path):
    rng = np.random.default_rng(0)
    chi = np.zeros((24, 20, 16), np.float32)
    chi[6:18, 5:15, 4:12] = 0.1 * rng.standard_normal((12, 10, 8))
    affine = np.diag([0.9, 1.0, 1.4, 1.0])
    affine[:3, 3] = (-10, 4, 2)
    path = tmp_path / "chi.nii.gz"
    nib.save(nib.Nifti1Image(chi, affine), path)
    mask = np.zeros_like(chi, np.uint8)
    mask[4:20, 3:17, 2:14] = 1
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    return path, chi, affine


def test_single_nifti_output_keeps_affine_and_uses_header_voxel_size(tmp_path, chi_file):
    path, chi, affine = chi_file
    out = tmp_path / "field.nii.gz"
    assert qsmFmapCal_gpu.main([str(path), "-o", str(out), "--pad", "8"]) == 0
    vol = read_volume(out)
    np.testing.assert_allclose(vol.affine, affine)
    np.testing.assert_allclose(vol.data, forward_field(chi, (0.9, 1.0, 1.4), (0, 0, 1), pad=8), atol=1e-6)


def test_overrides_demean_and_overwrite(tmp_path, chi_file):
    path, chi, _ = chi_file
    out = tmp_path / "field.nii.gz"
    args = [str(path), "-o", str(out), "--voxel-size", "1", "1", "1", "--b0-dir", "0", "1", "1",
            "--pad", "none", "--mask", str(tmp_path / "mask.nii.gz"), "--demean"]
    assert qsmFmapCal_gpu.main(args) == 0
    field = read_volume(out).data
    mask = read_volume(tmp_path / "mask.nii.gz").data > 0
    expected = forward_field(chi, (1, 1, 1), (0, 1, 1))
    # a known mask: the field is demeaned inside it and 0 outside (the network's input contract)
    np.testing.assert_allclose(field, (expected - expected[mask].mean()) * mask, atol=1e-6)
    assert abs(field[mask].mean()) < 1e-6 and np.all(field[~mask] == 0)
    kept = tmp_path / "kept.nii.gz"
    assert qsmFmapCal_gpu.main(args[:2] + [str(kept)] + args[3:] + ["--keep-background"]) == 0
    np.testing.assert_allclose(read_volume(kept).data, expected - expected[mask].mean(), atol=1e-6)
    assert qsmFmapCal_gpu.main(args) == 2          # exists, no --overwrite
    assert qsmFmapCal_gpu.main(args + ["--overwrite"]) == 0


def test_folder_and_step1_hdf5_inputs(tmp_path, chi_file):
    path, chi, _ = chi_file
    folder = tmp_path / "maps"
    write_volume(folder / "a.nii.gz", chi)
    write_volume(folder / "b.nii.gz", -chi)
    assert qsmFmapCal_gpu.main([str(folder), "-o", str(tmp_path / "out")]) == 0
    np.testing.assert_allclose(read_volume(tmp_path / "out" / "b_field.nii.gz").data,
                               -read_volume(tmp_path / "out" / "a_field.nii.gz").data, atol=1e-7)
    with h5py.File(tmp_path / "syn.h5", "w") as h5:
        h5.create_dataset("chi", data=np.stack([chi, 2 * chi]))
        h5.create_dataset("mask", data=np.stack([chi != 0, chi != 0]).astype(np.uint8))
        h5.attrs["voxel_size_mm"] = (1.0, 1.0, 2.0)
    assert qsmFmapCal_gpu.main([str(tmp_path / "syn.h5"), "-o", str(tmp_path / "fields.h5"), "--pad", "4"]) == 0
    with h5py.File(tmp_path / "fields.h5") as h5:
        assert h5["field"].shape == (2,) + chi.shape
        # the step-1 file carries masks: the fields are 0 outside them
        np.testing.assert_allclose(h5["field"][1], forward_field(2 * chi, (1, 1, 2), pad=4) * (chi != 0), atol=1e-6)
        assert np.abs(forward_field(2 * chi, (1, 1, 2), pad=4)[chi == 0]).max() > 1e-3
        assert list(h5.attrs["voxel_size_mm"]) == [1.0, 1.0, 2.0] and h5.attrs["units"] == "ppm"


def test_example_runs(tmp_path):
    assert qsmFmapCal_gpu.main(["--example", "-o", str(tmp_path / "ex.nii.gz")]) == 0
    assert np.abs(read_volume(tmp_path / "ex.nii.gz").data).max() > 0.01


def _bad_inputs(tmp_path, chi_file):
    path, chi, _ = chi_file
    write_volume(tmp_path / "nan.nii.gz", np.where(chi > 0, np.nan, chi).astype(np.float32))
    write_volume(tmp_path / "4d.nii.gz", np.stack([chi, chi], -1))
    write_volume(tmp_path / "2d.nii.gz", chi[0])
    write_volume(tmp_path / "small_mask.nii.gz", np.ones((4, 4, 4), np.uint8))
    write_volume(tmp_path / "empty_mask.nii.gz", np.zeros(chi.shape, np.uint8))
    write_volume(tmp_path / "frac_mask.nii.gz", np.full(chi.shape, 0.5, np.float32))
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    out = ["-o", str(tmp_path / "out.nii.gz")]
    return [
        ([str(tmp_path / "missing.nii.gz")] + out, "file not found"),
        ([str(tmp_path / "junk.nii.gz")] + out, "cannot read"),
        ([str(tmp_path / "nan.nii.gz")] + out, "NaN/Inf"),
        ([str(tmp_path / "4d.nii.gz")] + out, "expected a 3-D volume, found 4-D"),
        ([str(tmp_path / "2d.nii.gz")] + out, "expected a 3-D volume, found 2-D"),
        ([str(path), "--mask", str(tmp_path / "small_mask.nii.gz"), "--demean"] + out, "shape mismatch"),
        ([str(path), "--mask", str(tmp_path / "empty_mask.nii.gz"), "--demean"] + out, "mask .* empty"),
        ([str(path), "--mask", str(tmp_path / "frac_mask.nii.gz"), "--demean"] + out, "binary"),
        ([str(path), "--b0-dir", "0", "0", "0"] + out, "non-zero vector"),
        ([str(path), "--pad", "lots"] + out, "pad"),
        ([str(path), "--demean"] + out, "expected a mask"),
    ]


def test_bad_inputs_exit_2_one_line_nothing_written(tmp_path, chi_file, capsys):
    for argv, message in _bad_inputs(tmp_path, chi_file):
        assert qsmFmapCal_gpu.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), (argv, err)
        assert not (tmp_path / "out.nii.gz").exists()
        assert not list(tmp_path.glob(".*.tmp-*"))


def test_failing_batch_leaves_no_partial_folder(tmp_path, chi_file):
    _, chi, _ = chi_file
    write_volume(tmp_path / "maps" / "a.nii.gz", chi)
    write_volume(tmp_path / "maps" / "b.nii.gz", np.ones((4, 4, 4), np.float32))  # differs: fine for a folder
    write_volume(tmp_path / "maps" / "c.nii.gz", np.full((4, 4, 4), np.inf, np.float32))
    assert qsmFmapCal_gpu.main([str(tmp_path / "maps"), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.realdata
def test_real_2016_cosmos_field_correlates_with_measured_field(shared_data, tmp_path):
    qsm = shared_data / "qsm2016"
    out = tmp_path / "cosmos_field.nii.gz"
    assert qsmFmapCal_gpu.main([str(qsm / "chi_cosmos.nii.gz"), "-o", str(out), "--pad", "auto"]) == 0
    field = read_volume(out).data
    measured = read_volume(qsm / "phs_tissue.nii.gz").data
    mask = read_volume(qsm / "msk.nii.gz").data > 0
    r = np.corrcoef(field[mask], measured[mask])[0, 1]
    assert r > 0.8
    for wrong_axis in ((1, 0, 0), (0, 1, 0)):
        wrong = forward_field(read_volume(qsm / "chi_cosmos.nii.gz").data, (1.0625, 1.0625, 1.0714), wrong_axis)
        assert np.corrcoef(wrong[mask], measured[mask])[0, 1] < r - 0.5
