"""Step 3: patch grid, reassembly, brain threshold, crop mode, the contract-2 HDF5 layout, bad input."""
from __future__ import annotations

import json
import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.outputs import config_companion
from daqsm.training_data import genChi, genRDFPatchesSyn
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.patches import (
    assemble_patches,
    axis_starts,
    bbox_crop_origin,
    extract_patch,
    grid_origins,
    patch_count,
    read_patch_file_info,
    select_origins,
)
from daqsm.training_data.units import hz_per_ppm
from tests.training_data.test_augment import blob

P = 8


@pytest.mark.parametrize("shape,size,stride", [((16, 16, 16), (8, 8, 8), (8, 8, 8)),
                                                ((20, 17, 9), (8, 8, 8), (8, 8, 8)),
                                                ((20, 17, 9), (8, 6, 9), (4, 3, 5)),
                                                ((32, 24, 16), (16, 16, 16), (8, 8, 8))])
def test_patch_count_formula(shape, size, stride):
    origins = grid_origins(shape, size, stride)
    expected = np.prod([int(np.ceil((n - p) / s)) + 1 for n, p, s in zip(shape, size, stride)])
    assert len(origins) == patch_count(shape, size, stride) == expected
    assert len({tuple(o) for o in origins}) == len(origins)
    assert np.all(origins >= 0) and np.all(origins + size <= shape)


def test_axis_starts_cover_the_end():
    assert axis_starts(20, 8, 8) == [0, 8, 12]
    assert axis_starts(16, 8, 8) == [0, 8]
    assert axis_starts(8, 8, 3) == [0]


@pytest.mark.parametrize("shape", [(16, 24, 8), (20, 17, 11)])
def test_reassembly_with_stride_equal_patch_size_reproduces_volume(shape):
    vol = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    origins = grid_origins(shape, (P, P, P), (P, P, P))
    patches = [extract_patch(vol, o, (P, P, P)) for o in origins]
    assert np.array_equal(assemble_patches(patches, origins, shape), vol)


def test_brain_threshold_keeps_exactly_the_patches_with_enough_brain():
    mask = np.zeros((16, 16, 16), bool)
    mask[:8, :8, :8] = True        # patch (0,0,0): fraction 1
    mask[8:12, :8, :8] = True      # patch (8,0,0): fraction 0.5
    mask[:2, 8:16, :8] = True      # patch (0,8,0): fraction 0.25
    for threshold, expected in ((0.0, 8), (0.2, 3), (0.3, 2), (0.5, 2), (0.6, 1), (1.0, 1)):
        origins = select_origins(mask, (P, P, P), (P, P, P), threshold)
        assert len(origins) == expected, threshold


def test_random_crops_are_seeded_and_pass_the_threshold():
    _, mask = blob(24)
    a = select_origins(mask, (P, P, P), (P, P, P), 0.5, random_crops=5, rng=np.random.default_rng(1), grid=False)
    b = select_origins(mask, (P, P, P), (P, P, P), 0.5, random_crops=5, rng=np.random.default_rng(1), grid=False)
    assert np.array_equal(a, b) and len(a) == 5
    assert all(extract_patch(mask, o, (P, P, P)).mean() >= 0.5 for o in a)


def test_crop_pads_a_smaller_volume_and_centres_the_mask():
    mask = np.zeros((10, 12, 6), bool)
    mask[2:8, 3:9, 1:5] = True
    origin = bbox_crop_origin(mask, (16, 16, 16))
    crop = extract_patch(mask, origin, (16, 16, 16))
    assert crop.sum() == mask.sum()
    idx = np.argwhere(crop)
    centre = (idx.min(0) + idx.max(0)) / 2
    assert np.all(np.abs(centre - 7.5) <= 1)


# --- end to end through the command --------------------------------------------------------------


@pytest.fixture()
def synth(tmp_path):
    """genChi output (2 maps of 24^3) with /field added as step 2 would, and a target case folder."""
    chi, mask = blob(24)
    src = tmp_path / "src"
    src.mkdir()
    nib.save(nib.Nifti1Image(chi, np.eye(4)), src / "chi.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), src / "mask.nii.gz")
    maps = tmp_path / "synth.h5"
    assert genChi.main([str(src / "chi.nii.gz"), "--mask", str(src / "mask.nii.gz"), "-n", "2", "-o", str(maps),
                        "--quiet", "--erode-vox", "0"]) == 0
    with h5py.File(maps, "a") as h5:
        h5.create_dataset("field", data=forward_field(h5["chi"][()]))
    case = tmp_path / "Sim1Snr1"
    case.mkdir()
    tchi, tmask = blob(24, seed=3)
    tfield = forward_field(tchi)
    magnitude = np.stack([np.full((24, 24, 24), 4.0 * (e + 1), np.float32) for e in range(3)], axis=-1)
    magnitude[..., 1] *= np.linspace(0.5, 1, 24, dtype=np.float32)[:, None, None]
    for name, data in (("local_field", tfield), ("mask", tmask.astype(np.uint8)), ("magnitude", magnitude),
                       ("chi", tchi)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), case / f"{name}.nii.gz")
    json.dump({"b0_tesla": 7.0, "te_s": [0.004, 0.012, 0.02], "voxel_size_mm": [1, 1, 1], "b0_dir": [0, 0, 1],
               "peak_snr": 100.0, "seed": 0, "source": "test", "variant": "Sim1"}, open(case / "case.json", "w"))
    return {"maps": maps, "case": case, "tfield": tfield, "tmask": tmask, "magnitude": magnitude}


def patch_main(*argv):
    return genRDFPatchesSyn.main([*map(str, argv), "--quiet"])


def test_layout_and_metadata_follow_contract_2(synth, tmp_path):
    out = tmp_path / "patches.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], "-o", out, "--patch-size", P,
                      "--target-patch-size", P, "--brain-threshold", 0.1) == 0
    with h5py.File(out, "r") as h5:
        for group, names in (("source", ("field", "mask", "chi")), ("target", ("field", "mask", "weight"))):
            for name in names:
                dset = h5[group][name]
                assert dset.dtype == np.float32 and dset.shape[1:] == (P, P, P) and dset.chunks == (1, P, P, P)
                assert dset.compression in ("lzf", "gzip")
            assert np.allclose(h5[group].attrs["voxel_size_mm"], (1, 1, 1))
            assert np.allclose(h5[group].attrs["b0_dir"], (0, 0, 1))
        assert list(h5["source"].attrs["files"]) == ["synth.h5"] and list(h5["target"].attrs["files"]) == ["Sim1Snr1"]
        assert h5["target"].attrs["b0_tesla"] == 7.0 and h5["target"].attrs["te_s"] == 0.012
        assert list(h5.attrs["patch_size"]) == [P] * 3 and list(h5.attrs["stride"]) == [P] * 3
        assert h5.attrs["mode"] == "patches" and h5.attrs["units"] == "ppm" and h5.attrs["format_version"] == 3
        # counts: the grid patches of each volume that pass the threshold
        with h5py.File(synth["maps"], "r") as maps:
            expected = sum(len(select_origins(maps["mask"][i], (P,) * 3, (P,) * 3, 0.1)) for i in range(2))
            n_src = h5["source/field"].shape[0]
            assert n_src == expected > 0
            j = n_src - 1
            vol, origin = h5["index/source_volume"][j], h5["index/source_origin"][j]
            masked_field = maps["field"][vol] * (maps["mask"][vol] > 0)  # the input contract: field x mask
            assert np.array_equal(h5["source/field"][j], extract_patch(masked_field, origin, (P,) * 3))
            assert np.array_equal(h5["source/chi"][j], extract_patch(maps["chi"][vol], origin, (P,) * 3))
        assert set(np.unique(h5["source/mask"][()])) <= {0.0, 1.0}
        weight = h5["target/weight"][()]
        assert weight.min() >= 0 and weight.max() == 1.0 and np.all(weight[h5["target/mask"][()] == 0] == 0)
        k = h5["target/field"].shape[0]
        assert k == len(select_origins(synth["tmask"], (P,) * 3, (P,) * 3, 0.1))
    info = read_patch_file_info(out)
    assert info["source"]["count"] == n_src and info["config"]["brain_threshold"] == 0.1
    assert os.path.exists(config_companion(tmp_path / "patches.h5", "patches", folder=False))


def test_target_weight_is_second_echo_normalised_in_mask(synth, tmp_path):
    out = tmp_path / "crop.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], "-o", out, "--mode", "crop",
                      "--patch-size", 32, "--target-patch-size", 32) == 0
    with h5py.File(out, "r") as h5:
        assert list(h5.attrs["stride"]) == [-1, -1, -1] and h5.attrs["mode"] == "crop"
        assert h5["source/field"].shape == (2, 32, 32, 32) and h5["target/field"].shape == (1, 32, 32, 32)
        origin = h5["index/target_origin"][0]
        echo2 = synth["magnitude"][..., 1] * synth["tmask"]
        expected = extract_patch(echo2 / echo2.max(), origin, (32,) * 3)
        assert np.allclose(h5["target/weight"][0], expected, atol=1e-6)
        assert np.array_equal(h5["target/field"][0], extract_patch(synth["tfield"] * synth["tmask"], origin, (32,) * 3))
        assert h5["target/mask"][0].sum() == synth["tmask"].sum()  # the crop holds the whole brain


def test_default_target_crop_holds_the_whole_brain_and_both_domains_are_zero_outside_their_masks(synth, tmp_path):
    # the fixture's fields are computed over the whole volume: non-zero outside the masks
    with h5py.File(synth["maps"], "r") as maps:
        assert np.abs(maps["field"][0][maps["mask"][0] == 0]).max() > 1e-4
    assert np.abs(synth["tfield"][~synth["tmask"]]).max() > 1e-4
    out = tmp_path / "patches.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], "-o", out, "--patch-size", P) == 0
    with h5py.File(out, "r") as h5:
        idx = np.argwhere(synth["tmask"])
        expected = tuple(int(-(-(n + 16) // 16) * 16) for n in idx.max(0) - idx.min(0) + 1)  # bbox + 2 x 8, to 16
        assert h5["target/field"].shape == (1, *expected) and tuple(h5["target"].attrs["patch_size"]) == expected
        assert h5["source/field"].shape[1:] == (P,) * 3 and h5.attrs["target_mode"] == "bbox"
        assert h5["target/mask"][0].sum() == synth["tmask"].sum()  # the whole brain is inside the crop
        for group in ("source", "target"):
            outside = h5[f"{group}/mask"][()] == 0
            assert np.all(h5[f"{group}/field"][()][outside] == 0), group
            assert np.abs(h5[f"{group}/field"][()][~outside]).max() > 0
        assert h5.attrs["input_contract"] == "field*mask"


def test_patch_reader_refuses_fields_outside_the_mask(tmp_path):
    import h5py as h5lib

    from daqsm.network_model.data import read_patch_group, write_patch_file

    rng = np.random.default_rng(0)
    mask = np.zeros((2, 8, 8, 8), np.float32)
    mask[:, 2:6, 2:6, 2:6] = 1
    field = rng.standard_normal(mask.shape).astype(np.float32)
    path = write_patch_file(tmp_path / "p.h5", {"field": field, "mask": mask, "chi": field},
                            {"field": field, "mask": mask, "weight": mask})
    assert read_patch_group(path, "source").count == 2  # written by this version: masked
    with h5lib.File(path, "a") as h5:
        h5["source/field"][1] = field[1]  # an old file: the field outside the mask kept
    with pytest.raises(InputError, match="non-zero outside the mask"):
        read_patch_group(path, "source")


def test_separate_field_files_with_units(synth, tmp_path):
    """MATLAB-style inputs: chi and field files, field in Hz converted with --b0."""
    with h5py.File(synth["maps"], "r") as h5:
        chi, mask, field = h5["chi"][()], h5["mask"][()], h5["field"][()]
    names = {}
    for kind, data in (("chi", chi), ("mask", mask), ("field", field * hz_per_ppm(3.0))):
        names[kind] = []
        for i in range(2):
            path = tmp_path / f"{kind}_{i}.nii.gz"
            nib.save(nib.Nifti1Image(data[i], np.eye(4)), path)
            names[kind].append(str(path))
    fields_h5 = tmp_path / "fields.h5"
    with h5py.File(fields_h5, "w") as h5:
        h5.create_dataset("field", data=field)
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert patch_main("--source", *names["chi"], "--source-masks", *names["mask"], "--source-fields",
                      *names["field"], "--field-units", "hz", "--b0", 3.0, "-o", a, "--patch-size", P) == 0
    assert patch_main("--source", synth["maps"], "-o", b, "--patch-size", P) == 0
    assert patch_main("--source", synth["maps"], "--source-fields", fields_h5, "-o", c, "--patch-size", P) == 0
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb, h5py.File(c, "r") as hc:
        assert np.allclose(ha["source/field"][()], hb["source/field"][()], atol=1e-6)
        assert np.array_equal(hb["source/field"][()], hc["source/field"][()])
        assert hb["target/field"].shape[0] == 0


def test_random_crops_reproducible(synth, tmp_path):
    outs = [tmp_path / f"r{i}.h5" for i in range(2)]
    for out in outs:
        assert patch_main("--source", synth["maps"], "-o", out, "--patch-size", P, "--random-crops", 3,
                          "--no-grid", "--seed", 4) == 0
    a, b = (h5py.File(o, "r")["source/chi"][()] for o in outs)
    assert a.shape[0] == 6 and a.tobytes() == b.tobytes()


def test_bad_inputs_exit_2_nothing_written(synth, tmp_path, capsys):
    out = tmp_path / "bad.h5"
    lone_field = tmp_path / "lone_field.nii.gz"
    nib.save(nib.Nifti1Image(synth["tfield"], np.eye(4)), lone_field)
    no_mask_case = tmp_path / "Case"
    no_mask_case.mkdir()
    nib.save(nib.Nifti1Image(synth["tfield"], np.eye(4)), no_mask_case / "local_field.nii.gz")
    cases = [
        (["--patch-size", 32], "larger than the volume"),
        (["--patch-size", P, "--stride", 0], "stride"),
        (["--patch-size", P, "--stride", -2], "stride"),
        (["--target-field", lone_field], "without a mask"),
        (["--target", no_mask_case], "without a mask"),
        (["--source-fields", synth["maps"], synth["maps"]], "expected 2 field maps"),
        (["--brain-threshold", 1.5], "brain-threshold"),
    ]
    for extra, message in cases:
        assert patch_main("--source", synth["maps"], "-o", out, *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)
        assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    out.write_bytes(b"keep")
    assert patch_main("--source", synth["maps"], "-o", out, "--patch-size", P) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert patch_main("--source", synth["maps"], "-o", out, "--patch-size", P, "--overwrite") == 0


def test_every_parameter_is_reachable_from_the_command_line():
    import dataclasses

    from daqsm.config import option_name

    options = {opt for action in genRDFPatchesSyn.build_parser()._actions for opt in action.option_strings}
    for field in dataclasses.fields(genRDFPatchesSyn.PatchCommandConfig):
        assert option_name(field.name) in options, field.name


@pytest.mark.realdata
def test_real_target_qsm2016(shared_data, synth, tmp_path):
    folder = shared_data / "qsm2016"
    out = tmp_path / "real.h5"
    assert patch_main("--source", synth["maps"], "--patch-size", 16, "--target-field", folder / "phs_tissue.nii.gz",
                      "--target-mask", folder / "msk.nii.gz", "--target-te-s", 0.025, "--target-b0-tesla", 3.0,
                      "-o", out, "--stride", 64, "--brain-threshold", 0.5) == 0
    with h5py.File(out, "r") as h5:
        assert h5["target/field"].shape[0] > 0
        assert np.allclose(h5["target"].attrs["voxel_size_mm"], (1.0625, 1.0625, 1.0714), atol=1e-4)
        assert h5["target"].attrs["te_s"] == 0.025


def test_genchi_nifti_folder_with_a_folder_of_field_maps(tmp_path):
    chi, mask = blob(24)
    nib.save(nib.Nifti1Image(chi, np.eye(4)), tmp_path / "chi.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    maps, fields = tmp_path / "maps", tmp_path / "fields"
    assert genChi.main([str(tmp_path / "chi.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"), "-n", "2",
                        "-o", f"{maps}/", "--quiet"]) == 0
    fields.mkdir()
    for i in range(2):
        field = forward_field(nib.load(maps / f"chi_{i:04d}.nii.gz").get_fdata(dtype=np.float32))
        nib.save(nib.Nifti1Image(field, np.eye(4)), fields / f"field_{i:04d}.nii.gz")
    out = tmp_path / "p.h5"
    assert patch_main("--source", maps, "--source-fields", fields, "-o", out, "--patch-size", P) == 0
    with h5py.File(out, "r") as h5:
        j = h5["source/field"].shape[0] - 1
        vol, origin = h5["index/source_volume"][j], h5["index/source_origin"][j]
        field = nib.load(fields / f"field_{vol:04d}.nii.gz").get_fdata(dtype=np.float32)
        mask_vol = nib.load(maps / f"mask_{vol:04d}.nii.gz").get_fdata() > 0
        expected = extract_patch(field * mask_vol, origin, (P,) * 3)  # field x mask
        assert vol == 1 and np.array_equal(h5["source/field"][j], expected)
        assert list(h5["source"].attrs["files"]) == ["maps"]


def _second_protocol_case(synth, tmp_path, b0_dir=(0.0, 0.2588, 0.9659)):
    """A copy of the synth target case at 3 T, TE 5/15/25 ms, B0 tilted 15 degrees, field made along that B0."""
    import shutil

    case = tmp_path / "T3tilt"
    shutil.copytree(synth["case"], case)
    chi = nib.load(case / "chi.nii.gz").get_fdata().astype(np.float32)
    nib.save(nib.Nifti1Image(forward_field(chi, (1, 1, 1), b0_dir), np.eye(4)), case / "local_field.nii.gz")
    info = json.load(open(case / "case.json"))
    info.update(b0_tesla=3.0, te_s=[0.005, 0.015, 0.025], b0_dir=list(b0_dir))
    json.dump(info, open(case / "case.json", "w"))
    return case


def test_targets_of_several_protocols_each_keep_theirs(synth, tmp_path):
    """Format 3: target crops of two protocols in one file, each crop indexed to its own (B0, TE, B0
    direction); the group's scalar attrs are NaN so nothing can use one protocol for all."""
    from daqsm.network_model.data import read_patch_group

    second = _second_protocol_case(synth, tmp_path)
    out = tmp_path / "mixed.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], second, "-o", out,
                      "--patch-size", 16) == 0
    with h5py.File(out, "r") as h5:
        protocols = json.loads(h5["target"].attrs["protocols"])
        volume, which = h5["index/target_volume"][()], h5["index/target_protocol"][()]
        assert np.isnan(h5["target"].attrs["b0_tesla"]) and np.all(np.isnan(h5["target"].attrs["b0_dir"]))
    assert [(p["b0_tesla"], p["te_s"]) for p in protocols] == [(7.0, 0.012), (3.0, 0.015)]
    np.testing.assert_allclose(protocols[1]["b0_dir"], (0.0, 0.2588, 0.9659))
    assert volume.tolist() == [0, 1] and which.tolist() == [0, 1]
    assert [p["b0_tesla"] for p in read_patch_file_info(out)["target"]["protocols"]] == [7.0, 3.0]
    group = read_patch_group(out, "target")
    assert group.mixed and group.b0_tesla is None and group.voxel_size_mm is None
    assert [p.b0_tesla for p in group.crop_protocols()] == [7.0, 3.0]
    # one protocol: the scalar attrs as before, and the reader sees one protocol
    single = tmp_path / "single.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], "-o", single, "--patch-size", 16) == 0
    group = read_patch_group(single, "target")
    assert not group.mixed and group.b0_tesla == 7.0 and group.te_s == 0.012 and group.b0_dir == (0.0, 0.0, 1.0)


def test_mixed_protocol_patches_train_with_each_crops_kernel(synth, tmp_path):
    """Step 4 on a mixed-protocol file: the true chi of each crop leaves (almost) no NDI through the crop's
    own kernel and phase scale, and much more through the other protocol's; a short run trains and
    records both protocols beside the model."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from daqsm.network_model.data import read_patch_group
    from daqsm.network_model.losses import ndi_loss
    from daqsm.network_model.model_info import geometry_warning, read_model_info
    from daqsm.network_model.pretrain_core import crop_physics, phase_scale, target_dipole
    from daqsm.network_model.train_model import train

    second = _second_protocol_case(synth, tmp_path)
    out = tmp_path / "mixed.h5"
    assert patch_main("--source", synth["maps"], "--target", synth["case"], second, "-o", out,
                      "--patch-size", 16) == 0
    target = read_patch_group(out, "target")
    cfg = train.PretrainConfig(depth=1, base_filters=4)
    phase = phase_scale(cfg, target)
    np.testing.assert_allclose(phase, [2 * np.pi * 42.577478 * 7 * 0.012, 2 * np.pi * 42.577478 * 3 * 0.015], rtol=1e-4)
    with h5py.File(out, "r") as h5:
        field, mask = h5["target/field"][()][..., None], h5["target/mask"][()][..., None]
        origins = h5["index/target_origin"][()]
    chi = np.stack([extract_patch(nib.load(case / "chi.nii.gz").get_fdata().astype(np.float32), o, field.shape[1:4])
                    for case, o in zip((synth["case"], second), origins)])[..., None] * mask
    dipole = target_dipole(cfg, target)

    def ndi(which):
        crop_dipole, crop_phase = crop_physics(dipole, phase, (tf.constant(which, tf.float32),), True)
        return ndi_loss(tf.constant(chi), tf.constant(field), tf.constant(mask), tf.constant(mask), crop_dipole,
                        crop_phase).numpy()

    own, swapped = ndi([0, 1]), ndi([1, 0])
    assert np.all(swapped > 20 * own), (own, swapped)
    run = tmp_path / "run"
    # one phase scale cannot serve both protocols: refused before anything is written
    assert train.main(["--datasets_path", str(out), "--run_dir", str(run), "--phase_rad_per_ppm", "20",
                       "--max_steps", "1", "--progress", "false"]) == 2
    assert not run.exists()
    assert train.main(["--datasets_path", str(out), "--run_dir", str(run), "--depth", "1", "--base_filters", "4",
                       "--batch_size", "2", "--target_batch_size", "2", "--max_steps", "2", "--val_fraction", "0.5",
                       "--validate_every", "1",
                       "--progress", "false"]) == 0
    log = (run / "log.csv").read_text().splitlines()
    assert "val_ndi" in log[0] and all("nan" not in line for line in log[1:])
    info = read_model_info(run / "target_model.keras")
    assert [p["b0_tesla"] for p in info["training_protocols"]] == [7.0, 3.0] and "b0_dir" not in info
    assert geometry_warning(info, (1, 1, 1), (0.0, 0.2588, 0.9659)) is None
    assert geometry_warning(info, (1, 1, 1), (0.0, 0.0, 1.0)) is None
    assert "training geometries" in geometry_warning(info, (1, 1, 1), (1.0, 0.0, 0.0))
