"""Step 1 command (genChi): output layout, seed determinism, chunk independence, bad input, config."""
from __future__ import annotations

import dataclasses
import json
import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from daqsm.config import option_name
from daqsm.outputs import config_companion
from daqsm.training_data import genChi
from tests.training_data.test_augment import blob

VOXEL = (1.1, 1.0, 1.2)


@pytest.fixture()
def source(tmp_path):
    chi, mask = blob(24)
    affine = np.diag(list(VOXEL) + [1.0])
    chi_path, mask_path = tmp_path / "chi.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(chi, affine), chi_path)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_path)
    return str(chi_path), str(mask_path)


def run(source, out, *extra):
    return genChi.main([source[0], "--mask", source[1], "-o", str(out), "--quiet", *map(str, extra)])


def test_hdf5_layout_and_metadata(source, tmp_path):
    out = tmp_path / "synth.h5"
    assert run(source, out, "-n", 3, "--seed", 5, "--sources-probability", 1.0) == 0
    with h5py.File(out, "r") as h5:
        assert h5["chi"].shape == (3, 24, 24, 24) and h5["chi"].dtype == np.float32
        assert h5["chi"].chunks == (1, 24, 24, 24) and h5["chi"].compression == "gzip"
        assert h5["mask"].dtype == np.uint8 and set(np.unique(h5["mask"][()])) <= {0, 1}
        chi, mask = h5["chi"][()], h5["mask"][()].astype(bool)
        assert np.all(chi[~mask] == 0) and mask.reshape(3, -1).any(axis=1).all()
        assert h5.attrs["units"] == "ppm" and h5.attrs["format_version"] == 1
        assert np.allclose(h5.attrs["voxel_size_mm"], VOXEL) and np.allclose(h5.attrs["b0_dir"], (0, 0, 1))
        assert list(h5.attrs["source_files"]) == ["chi.nii.gz"] and h5.attrs["seed"] == 5
        params = [json.loads(p) for p in h5["params"][()]]
        assert [p["index"] for p in params] == [0, 1, 2]
        assert all(len(p["sources"]) >= 1 for p in params)
        assert json.loads(h5.attrs["config"])["sources_probability"] == 1.0
    config = json.load(open(config_companion(tmp_path / "synth.h5", "genchi", folder=False)))
    assert config["seed"] == 5 and config["n_maps"] == 3
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_same_seed_byte_identical_different_seed_differs_chunk_independent(source, tmp_path):
    for name, n, seed in (("a", 3, 7), ("b", 3, 7), ("c", 3, 8), ("d", 2, 7)):
        assert run(source, tmp_path / f"{name}.h5", "-n", n, "--seed", seed, "--workers", 1 + (name == "b")) == 0
    read = {name: h5py.File(tmp_path / f"{name}.h5", "r")["chi"][()] for name in "abcd"}
    assert read["a"].tobytes() == read["b"].tobytes()
    assert not np.array_equal(read["a"], read["c"])
    assert read["d"].tobytes() == read["a"][:2].tobytes()  # sample i depends on (seed, i) only


def test_nifti_folder_output(source, tmp_path):
    out = tmp_path / "maps"
    assert run(source, f"{out}/", "-n", 2, "--no-elastic") == 0
    names = sorted(n for n in os.listdir(out) if not n.startswith("."))
    assert (out / ".daqsm-output").is_file()  # the marker: a folder daqsm-genchi made (issue 23)
    assert names == ["chi_0000.json", "chi_0000.nii.gz", "chi_0001.json", "chi_0001.nii.gz", "genchi_config.json",
                     "mask_0000.json", "mask_0000.nii.gz", "mask_0001.json", "mask_0001.nii.gz", "params.json"]
    img = nib.load(out / "chi_0001.nii.gz")
    assert np.allclose(img.header.get_zooms(), VOXEL) and img.get_fdata().shape == (24, 24, 24)
    assert json.load(open(config_companion(out, "genchi", folder=True)))["elastic"] is False
    assert run(source, f"{out}/", "-n", 1) == 2  # exists -> refuse
    assert run(source, f"{out}/", "-n", 1, "--overwrite") == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("chi_")) == ["chi_0000.json", "chi_0000.nii.gz"]


def test_switches_all_off_reproduce_the_source(source, tmp_path):
    out = tmp_path / "off.h5"
    assert run(source, out, "-n", 1, "--no-elastic", "--no-affine", "--no-contrast", "--no-sources",
               "--erode-vox", 0) == 0
    chi = nib.load(source[0]).get_fdata(dtype=np.float32)
    assert np.array_equal(h5py.File(out, "r")["chi"][0], chi)


def _bad_inputs(tmp_path, source):
    other = tmp_path / "other_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 24, 24), np.uint8), np.eye(4)), other)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.uint8), np.eye(4)), empty)
    exists = tmp_path / "exists.h5"
    exists.write_bytes(b"keep")
    return {
        "shape mismatch": ([source[0], "--mask", str(other), "-n", "1"], "shape mismatch"),
        "empty mask": ([source[0], "--mask", str(empty), "-n", "1"], "empty"),
        "n zero": ([source[0], "--mask", source[1], "-n", "0"], "--n-maps: expected an integer >= 1"),
        "n negative": ([source[0], "--mask", source[1], "-n", "-3"], "--n-maps: expected an integer >= 1"),
        "missing file": ([str(tmp_path / "nope.nii.gz"), "--mask", source[1], "-n", "1"], "not found"),
        "exists": ([source[0], "--mask", source[1], "-n", "1", "-o", str(exists)], "--overwrite"),
    }


@pytest.mark.parametrize("case", ["shape mismatch", "empty mask", "n zero", "n negative", "missing file", "exists"])
def test_bad_input_exit_2_one_line_nothing_written(case, source, tmp_path, capsys):
    argv, message = _bad_inputs(tmp_path, source)[case]
    out = tmp_path / "out.h5"
    if "-o" not in argv:
        argv = argv + ["-o", str(out)]
    assert genChi.main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    if case == "exists":
        assert (tmp_path / "exists.h5").read_bytes() == b"keep"


def test_config_file_and_override_precedence(source, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 11\nrotation_deg: 2.5\nsources_count: [2, 3]\n")
    out = tmp_path / "o.h5"
    assert run(source, out, "-n", 1, "--config", cfg, "--seed", 12) == 0
    resolved = json.load(open(config_companion(tmp_path / "o.h5", "genchi", folder=False)))
    assert resolved["seed"] == 12 and resolved["rotation_deg"] == 2.5 and resolved["sources_count"] == [2, 3]
    cfg.write_text("seed: 1\nrotaton_deg: 2\n")
    assert run(source, tmp_path / "p.h5", "-n", 1, "--config", cfg) == 2
    assert "rotaton_deg" in capsys.readouterr().err


def test_every_parameter_is_reachable_from_the_command_line():
    parser = genChi.build_parser()
    options = {opt for action in parser._actions for opt in action.option_strings}
    for field in dataclasses.fields(genChi.GenChiCommandConfig):
        assert option_name(field.name) in options, field.name


@pytest.mark.realdata
def test_one_map_from_the_real_cosmos(shared_data, tmp_path):
    folder = shared_data / "qsm2016"
    out = tmp_path / "cosmos.h5"
    argv = [str(folder / "chi_cosmos.nii.gz"), "--mask", str(folder / "msk.nii.gz"), "-n", "1", "-o", str(out),
            "--quiet", "--sources-probability", "1"]
    assert genChi.main(argv) == 0
    with h5py.File(out, "r") as h5:
        chi, mask = h5["chi"][0], h5["mask"][0].astype(bool)
        assert chi.shape == (160, 160, 160) and np.all(chi[~mask] == 0)
        assert 0.7 < mask.sum() / 933481 < 1.3
        assert np.abs(chi).max() > 1.5  # a strong source was added
        assert np.allclose(h5.attrs["voxel_size_mm"], (1.0625, 1.0625, 1.0714), atol=1e-4)
