"""One home per file format (daqsm/training_data/formats): each writer's output read back by its reader."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.training_data.formats import case_folder, chi_folder, chi_h5, field_h5, patch_h5


def _case_arrays(n_echoes=4):
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    mag = rng.uniform(0.1, 1.0, (8, 8, 8, n_echoes)).astype(np.float32)
    field = 0.05 * rng.standard_normal((8, 8, 8)).astype(np.float32) * mask  # a plausible local field (ppm)
    return {"local_field": field, "mask": mask, "magnitude": mag}


@pytest.mark.parametrize("te_s", [[0.004, 0.012, 0.02, 0.028], None])
def test_case_round_trip_and_weighting_echo(tmp_path, te_s):
    arrays = _case_arrays()
    info = {"b0_tesla": 7.0, "voxel_size_mm": [1.0, 1.0, 1.0], "b0_dir": [0.0, 0.0, 1.0]}
    if te_s:
        info["te_s"] = te_s
    folder = case_folder.write_case(tmp_path / "case", arrays, info, np.eye(4))
    case = case_folder.read_case(folder)
    np.testing.assert_array_equal(case.field.data, arrays["local_field"])
    assert case.info == info
    # docs/physics.md: the 2nd echo, with or without te_s in case.json
    mag2 = arrays["magnitude"][..., 1] * arrays["mask"]
    np.testing.assert_allclose(case.weight(), mag2 / mag2.max(), rtol=1e-6)
    assert case.weight_echo_index() == 1
    assert case.weight_te_s() == (0.012 if te_s else None)


def test_single_echo_case_weights_by_that_echo(tmp_path):
    arrays = _case_arrays(n_echoes=1)
    folder = case_folder.write_case(tmp_path / "c", arrays, {"te_s": [0.01]}, np.eye(4))
    case = case_folder.read_case(folder)
    assert case.weight_echo_index() == 0 and case.weight_te_s() == 0.01
    with pytest.raises(InputError, match="weight echo 2 requested"):
        case.weight(2)


def test_the_three_case_readers_agree(tmp_path):
    from daqsm.network_model.target_data import load_case
    from daqsm.training_data.patch_inputs import TargetInputs

    arrays = _case_arrays()
    folder = case_folder.write_case(tmp_path / "c", arrays, {"b0_tesla": 3.0}, np.eye(4))  # no te_s
    finetune = load_case(folder)
    step3 = TargetInputs([folder]).load(0)
    np.testing.assert_array_equal(finetune.weight, step3.third)


def test_chi_and_field_h5_round_trip(tmp_path):
    chi = np.random.default_rng(1).standard_normal((2, 6, 6, 6)).astype(np.float32)
    mask = np.ones_like(chi, np.uint8)
    path = chi_h5.write_chi_h5(tmp_path / "c.h5", chi, mask, (1.0, 1.0, 2.0))
    assert chi_h5.is_chi_h5(path)
    got, got_mask, vs, b0 = chi_h5.read_chi_map(path, 1)
    np.testing.assert_array_equal(got, chi[1])
    assert vs == (1.0, 1.0, 2.0) and b0 == (0.0, 0.0, 1.0)
    fpath = field_h5.write_field_h5(tmp_path / "f.h5", chi * 2)
    np.testing.assert_array_equal(field_h5.read_field_map(fpath, 0), chi[0] * 2)


def test_chi_folder_round_trip_and_its_readers(tmp_path):
    """The step-1 NIfTI folder: written by formats/chi_folder.py, read back by step 3 and by step 2."""
    from daqsm.training_data.fieldmaps import iter_chi_maps
    from daqsm.training_data.patch_inputs import SourceInputs
    from daqsm.training_data.volume_io import write_volume

    rng = np.random.default_rng(2)
    chi = rng.standard_normal((2, 6, 6, 6)).astype(np.float32)
    mask = np.zeros_like(chi, bool)
    mask[:, 1:5, 1:5, 1:5] = True
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    digits = chi_folder.digits_for(2)
    for i in range(2):
        chi_folder.write_map(tmp_path, i, digits, chi[i] * mask[i], mask[i], affine)
    chi_folder.write_params(tmp_path, (1.0, 1.0, 2.0), (0.0, 0.0, 1.0), ["src.nii.gz"], [{"index": 0}, {"index": 1}])
    assert sorted(chi_folder.previous_maps(tmp_path)) == ["chi_0000.nii.gz", "chi_0001.nii.gz", "mask_0000.nii.gz",
                                                          "mask_0001.nii.gz"]
    assert chi_folder.mask_path_for(tmp_path / "chi_0001.nii.gz") == str(tmp_path / "mask_0001.nii.gz")
    assert chi_folder.mask_path_for(tmp_path / "other.nii.gz") is None
    fields = tmp_path / "fields"
    fields.mkdir()
    for i in range(2):  # step 3 needs a field per map: any volume on the grid
        write_volume(fields / f"field_{i:04d}.nii.gz", chi[i], affine)
    loaded = SourceInputs([str(tmp_path)], [str(fields)]).load(1)
    np.testing.assert_array_equal(loaded.mask, mask[1])
    np.testing.assert_allclose(loaded.third, chi[1] * mask[1])
    step2 = [m for m in iter_chi_maps([str(tmp_path)]) if m.name.startswith("chi_")]
    assert [m.name for m in step2] == ["chi_0000", "chi_0001"] and step2[1].voxel_size_mm == (1.0, 1.0, 2.0)


def test_patch_file_has_one_layout(tmp_path):
    mask = np.zeros((3, 8, 8, 8), np.float32)
    mask[:, 2:6, 2:6, 2:6] = 1
    field = np.ones_like(mask)
    path = patch_h5.write_patch_file(tmp_path / "p.h5", {"field": field, "mask": mask, "chi": field},
                                     {"field": field[:2], "mask": mask[:2], "weight": mask[:2]}, te_s=0.01)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["format_version"] == patch_h5.FORMAT_VERSION == 3
        assert h5["index/source_volume"][:].tolist() == [0, 1, 2]
        assert h5["source/field"][0][0, 0, 0] == 0  # field x mask
    info = patch_h5.read_patch_file_info(path)
    assert info["source"]["count"] == 3 and info["target"]["count"] == 2
    assert patch_h5.read_patch_group(path, "target").te_s == 0.01
    json.dumps(info)
