"""Volume I/O round trips (NIfTI, MAT v5 and v7.3 as MATLAB writes them, HDF5, npy) and units."""
from __future__ import annotations

import math

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from daqsm.errors import InputError
from daqsm.training_data.geometry import b0_dir_from_affine
from daqsm.training_data.units import hz_per_ppm, rad_per_ppm, to_ppm
from daqsm.training_data.volume_io import read_field, read_mask, read_volume, write_volume


def write_mat73(path, variables: dict):
    """Write a MATLAB v7.3 file the way MATLAB does: 512-byte user block, MATLAB_class attributes,
    axes reversed, complex as a (real, imag) compound."""
    with h5py.File(path, "w", userblock_size=512) as h5:
        for name, value in variables.items():
            value = np.asarray(value)
            stored = np.transpose(value)
            if np.iscomplexobj(value):
                compound = np.dtype([("real", "<f8"), ("imag", "<f8")])
                arr = np.empty(stored.shape, compound)
                arr["real"], arr["imag"] = stored.real, stored.imag
                stored = arr
                matlab_class = "double"
            elif value.dtype == bool:
                stored, matlab_class = stored.astype(np.uint8), "logical"
            else:
                matlab_class = {"float64": "double", "float32": "single"}.get(value.dtype.name, value.dtype.name)
            dset = h5.create_dataset(name, data=stored)
            dset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    with open(path, "r+b") as fh:  # MATLAB's header text in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


@pytest.fixture
def volume():
    return np.random.default_rng(0).standard_normal((5, 6, 7)).astype(np.float32)


def test_mat_v5_and_v73_round_trip_same_axis_order(tmp_path, volume):
    scipy.io.savemat(tmp_path / "v5.mat", {"chi": volume})
    write_mat73(tmp_path / "v73.mat", {"chi": volume, "mask": volume > 0})
    v5 = read_volume(tmp_path / "v5.mat")
    v73 = read_volume(str(tmp_path / "v73.mat") + ":chi")
    np.testing.assert_array_equal(v5.data, volume)
    np.testing.assert_array_equal(v73.data, volume)
    assert v73.data.shape == (5, 6, 7)
    mask = read_volume(tmp_path / "v73.mat", variable="mask", dtype=None)
    assert mask.data.dtype == bool and np.array_equal(mask.data, volume > 0)


def test_mat73_complex_and_variable_listing(tmp_path, volume):
    write_mat73(tmp_path / "c.mat", {"a": volume, "b": volume + 1j * volume})
    data = read_volume(tmp_path / "c.mat", variable="b", dtype=np.complex64).data
    np.testing.assert_allclose(data, volume + 1j * volume)
    with pytest.raises(InputError, match=r"no variable 'chi'; present: a, b"):
        read_volume(tmp_path / "c.mat", variable="chi")
    with pytest.raises(InputError, match="holds 2 variables"):
        read_volume(tmp_path / "c.mat")
    with pytest.raises(InputError, match="expected real values"):
        read_volume(tmp_path / "c.mat", variable="b")


def test_nifti_round_trip_keeps_affine_and_header(tmp_path, volume):
    affine = np.array([[0.0, 0.0, 1.2, -10], [0.9, 0.0, 0.0, 5], [0.0, 1.1, 0.0, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "in.nii.gz")
    vol = read_volume(tmp_path / "in.nii.gz")
    write_volume(tmp_path / "out.nii", vol.data * 2, affine=vol.affine, header=vol.header)
    again = read_volume(tmp_path / "out.nii")
    np.testing.assert_allclose(again.affine, affine)
    np.testing.assert_allclose(again.data, volume * 2)
    assert again.voxel_size_mm == pytest.approx((0.9, 1.1, 1.2))
    # the affine's third row (scanner z) is array axis 1
    assert again.b0_dir == pytest.approx((0.0, 1.0, 0.0))


def test_b0_direction_from_oblique_affine():
    angle = math.radians(20)
    rot_x = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_x @ np.diag([1.0, 1.0, 2.0])
    b = b0_dir_from_affine(affine)
    assert b == pytest.approx((0.0, math.sin(angle), math.cos(angle)))


def test_hdf5_and_npy(tmp_path, volume):
    write_volume(tmp_path / "v.h5", volume, variable="chi", attrs={"voxel_size_mm": (1.0, 1.0, 2.0), "b0_dir": (0, 0, 1)})
    vol = read_volume(tmp_path / "v.h5")
    np.testing.assert_array_equal(vol.data, volume)
    assert vol.voxel_size_mm == (1.0, 1.0, 2.0)
    write_volume(tmp_path / "v.npy", volume)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.npy").data, volume)


def test_units_conversions():
    assert hz_per_ppm(7.0) == pytest.approx(298.04, abs=0.01)
    assert rad_per_ppm(3.0, 0.025) == pytest.approx(20.06, abs=0.01)
    np.testing.assert_allclose(to_ppm(np.array([298.042346]), "Hz", b0_tesla=7.0), [1.0], rtol=1e-6)
    np.testing.assert_allclose(to_ppm(np.array([20.064]), "rad", b0_tesla=3.0, te_s=0.025), [1.0], rtol=1e-3)
    np.testing.assert_allclose(to_ppm(np.array([50.0]), "ppb"), [0.05])
    with pytest.raises(InputError, match="did you mean 'hz'"):
        to_ppm(np.ones(3), "hzz", b0_tesla=3)
    with pytest.raises(InputError, match="B0 is needed"):
        to_ppm(np.ones(3), "hz")
    with pytest.raises(InputError, match="echo time"):
        to_ppm(np.ones(3), "rad", b0_tesla=3)


def test_read_field_in_hz_from_mat(tmp_path, volume):
    write_mat73(tmp_path / "f.mat", {"RDF": volume * hz_per_ppm(3.0)})
    np.testing.assert_allclose(read_field(tmp_path / "f.mat", "hz", b0_tesla=3.0).data, volume, rtol=1e-5)


@pytest.mark.parametrize("data, message", [
    (np.zeros((4, 4, 4)), "empty"),
    (np.full((4, 4, 4), 2.0), "binary"),
    (np.ones((4, 4, 5)), "shape mismatch"),
])
def test_bad_masks(tmp_path, data, message):
    write_volume(tmp_path / "m.nii.gz", data.astype(np.float32))
    with pytest.raises(InputError, match=message):
        read_mask(tmp_path / "m.nii.gz", like=np.zeros((4, 4, 4)))


def test_bad_volumes(tmp_path, volume):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(InputError, match="unknown format"):
        read_volume(tmp_path / "x.txt")
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    write_volume(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="1 NaN/Inf"):
        read_volume(tmp_path / "nan.npy")
    write_volume(tmp_path / "2d.npy", volume[0])
    with pytest.raises(InputError, match="expected a 3-D volume, found 2-D"):
        read_volume(tmp_path / "2d.npy")
