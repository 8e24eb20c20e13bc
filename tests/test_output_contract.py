"""The output contract (daqsm/outputs.py, daqsm/output_lock.py): outputs owned whole (issue 23).

Each test reproduces a defect of the issue: a clean-up that removed a concurrent run's staging
folder, a companion set locked by its map's name only, an --overwrite rerun that left the old map,
a resume with another config. The table-driven exit-2 cases are in test_fault_injection.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daqsm.outputs import config_companion, is_any_temp, is_temp_of, qsm_set, temp_path
from tests.network_model.synthetic import ball_mask, make_patch_file, smooth_chi

N = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import write_volume

    root = tmp_path_factory.mktemp("contract")
    mask = ball_mask(N).astype(np.uint8)
    chi = smooth_chi(N, 1)
    write_volume(root / "chi.nii.gz", chi)
    write_volume(root / "mask.nii.gz", mask)
    write_volume(root / "field.nii.gz", (forward_field(chi) * mask).astype(np.float32))
    make_patch_file(root / "patches.h5", count=4, n=N)
    return root


@pytest.mark.parametrize("output, other", [("maps", "maps-val"), ("maps", "maps.tmp-abcdefgh"),
                                           ("x.nii", "x.nii.gz"), ("q", "q_model.keras")])
def test_temp_names_are_unique_to_their_output(tmp_path, output, other):
    mine, theirs = temp_path(tmp_path / output), temp_path(tmp_path / other)
    assert is_temp_of(os.path.basename(mine), tmp_path / output)
    assert not is_temp_of(os.path.basename(theirs), tmp_path / output)
    assert not is_temp_of(os.path.basename(mine), tmp_path / other)
    assert is_any_temp(os.path.basename(mine)) and is_any_temp(os.path.basename(theirs))


def test_cleanup_never_removes_a_related_outputs_staging(inputs, tmp_path):
    """A concurrent `-o g/maps-val/` run stages in `.maps-val.tmp-*` (and earlier versions in
    `.tmp-maps-val-*`): a run on `-o g/maps/` must leave both alone."""
    from daqsm.training_data import genChi

    staging = [tmp_path / ".maps-val.tmp-abcdefgh", tmp_path / ".tmp-maps-val-x1y2z3"]
    for folder in staging:
        folder.mkdir()
        (folder / "chi_0000.nii.gz").write_bytes(b"a live run's map")
    assert genChi.main([str(inputs / "chi.nii.gz"), "--mask", str(inputs / "mask.nii.gz"), "-n", "1",
                        "--elastic-alpha", "0", "--quiet", "-o", f"{tmp_path}/maps/"]) == 0
    for folder in staging:
        assert (folder / "chi_0000.nii.gz").read_bytes() == b"a live run's map"


def test_a_killed_runs_temps_of_every_companion_are_removed(tmp_path):
    from daqsm.output_lock import claim_qsm_set

    out = tmp_path / "q.nii.gz"
    stale = [temp_path(p) for p in qsm_set(out).values()]
    (tmp_path / ".q.incomplete").write_text("1\n")  # the killed run's marker
    keep = temp_path(tmp_path / "q2.nii.gz")
    with claim_qsm_set("-o", out, overwrite=False):
        assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(keep)


def test_tensorflow_checkpoint_temps_are_removed_in_an_owned_folder(tmp_path):
    from daqsm.output_lock import claim_output

    run = tmp_path / "run"
    with claim_output("-o", run, kind="folder", command="daqsm-train"):
        pass
    (run / "checkpoints" / "ckpt-3_temp").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-2.index").write_bytes(b"kept")
    with claim_output("-o", run, kind="folder", command="daqsm-train"):
        assert not (run / "checkpoints" / "ckpt-3_temp").exists()
        assert (run / "checkpoints" / "ckpt-2.index").exists()


def _hold_lock(path):
    code = ("import sys, time; from daqsm.output_lock import output_lock\n"
            f"with output_lock('-o', {str(path)!r}):\n    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("held", ["q.json", "q_model.keras", "q.nii"])
def test_a_companion_held_by_another_run_stops_step_5(inputs, tmp_path, capsys, held):
    from daqsm.network_model.model_finetune import train as finetune

    holder = _hold_lock(tmp_path / held)
    try:
        status = finetune.main(["--model", str(inputs / "nothing.keras"), "--field", str(inputs / "field.nii.gz"),
                                "--mask", str(inputs / "mask.nii.gz"), "--b0", "3", "--te", "0.02",
                                "-o", str(tmp_path / "q.nii.gz")])
        assert status == 2
        assert f"in use by PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import keras

    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "pre.keras"
    build_target_model(depth=1, base_filters=2).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finetune", "infer"])
def test_overwrite_with_the_other_suffix_leaves_no_old_map(command, inputs, tiny_model, tmp_path):
    """`-o x.nii --overwrite` after `-o x.nii.gz`: one map in the set, beside its own companions."""
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune

    main = {"finetune": finetune.main, "infer": infer.main}[command]
    base = ["--model", str(tiny_model), "--field", str(inputs / "field.nii.gz"), "--mask", str(inputs / "mask.nii.gz"),
            "--b0", "3", "--te", "0.02"] + (["--iterations", "1", "--progress", "false"] if command == "finetune" else [])
    assert main(base + ["-o", str(tmp_path / "x.nii.gz")]) == 0
    assert main(base + ["-o", str(tmp_path / "x.nii"), "--overwrite"]) == 0
    assert (tmp_path / "x.nii").exists() and not (tmp_path / "x.nii.gz").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.slow
def test_resume_with_another_config_or_patch_file_is_refused(inputs, tmp_path, capsys):
    from daqsm.network_model.train_model import train as pretrain

    run = tmp_path / "run"
    argv = ["--datasets_path", str(inputs / "patches.h5"), "--depth", "1", "--base_filters", "2",
            "--progress", "false", "--val_fraction", "0", "-o", str(run)]
    assert pretrain.main(argv + ["--max_steps", "1"]) == 0
    config = Path(config_companion(run, "train", folder=True)).read_text()
    capsys.readouterr()
    assert pretrain.main(argv + ["--max_steps", "2", "--label_scale", "1"]) == 2
    err = capsys.readouterr().err
    assert "label_scale" in err and len(err.strip().splitlines()) == 1
    assert Path(config_companion(run, "train", folder=True)).read_text() == config
    other = tmp_path / "other.h5"
    make_patch_file(other, count=4, n=N, seed=5)
    (inputs / "patches.h5").rename(tmp_path / "saved.h5")
    try:
        os.replace(other, inputs / "patches.h5")
        assert pretrain.main(argv + ["--max_steps", "2"]) == 2
        assert "patch file" in capsys.readouterr().err
    finally:
        os.replace(tmp_path / "saved.h5", inputs / "patches.h5")
    assert pretrain.main(argv + ["--max_steps", "2"]) == 0  # the same config and file: resumes


def test_a_non_utf8_file_name_is_stored_not_a_traceback(inputs, tmp_path):
    """A file name with an undecodable byte (Linux allows any bytes) ends up escaped in the HDF5 record."""
    import h5py

    from daqsm.training_data import qsmFmapCal_gpu

    odd = os.fsdecode(bytes(tmp_path) + b"/chi\xff.nii.gz")
    (Path(odd)).write_bytes((inputs / "chi.nii.gz").read_bytes())
    assert qsmFmapCal_gpu.main([odd, "-o", str(tmp_path / "f.h5")]) == 0
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        assert list(h5.attrs["files"]) == ["chi\\xff"]
    assert not [n for n in os.listdir(tmp_path) if is_any_temp(n)]


@pytest.mark.slow
def test_a_hand_edited_log_at_resume_is_one_line(inputs, tmp_path, capsys):
    from daqsm.network_model.train_model import train as pretrain

    run = tmp_path / "run"
    argv = ["--datasets_path", str(inputs / "patches.h5"), "--depth", "1", "--base_filters", "2",
            "--progress", "false", "--val_fraction", "0", "-o", str(run)]
    assert pretrain.main(argv + ["--max_steps", "1"]) == 0
    with open(run / "log.csv", "a") as fh:
        fh.write("two,0.5\n")
    capsys.readouterr()
    assert pretrain.main(argv + ["--max_steps", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "log.csv" in err[0]


@pytest.mark.slow
def test_a_failing_onnx_check_leaves_no_onnx(tiny_model, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    from daqsm.network_model import export

    def broken(*_args, **_kwargs):
        raise RuntimeError("onnxruntime cannot load it")

    monkeypatch.setattr(export, "compare_onnx", broken)
    assert export.main(["--model", str(tiny_model), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "onnxruntime" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_divisor_that_does_not_fit_the_model_is_one_line(inputs, tiny_model, tmp_path, capsys):
    from daqsm.network_model import infer

    status = infer.main(["--model", str(tiny_model), "--field", str(inputs / "field.nii.gz"), "--mask",
                         str(inputs / "mask.nii.gz"), "--divisor", "3", "-o", str(tmp_path / "q.nii.gz")])
    assert status == 2
    assert "--divisor 3" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_qc_residual_on_the_brain_box_matches_the_whole_grid():
    """daqsm-infer computes the QC map on the brain box (memory set by the brain, not the grid)."""
    from daqsm.network_model.infer import qc_in_brain_box
    from daqsm.qc.residual import residual_map_ppm, residual_summary
    from daqsm.training_data.dipole import forward_field

    n, small = 64, ball_mask(24).astype(bool)
    mask = np.zeros((n, n, n), bool)
    mask[20:44, 16:40, 22:46] = small
    chi = np.zeros((n, n, n), np.float32)
    chi[20:44, 16:40, 22:46] = smooth_chi(24, 3) * small
    field = (forward_field(chi * 0.9) * mask).astype(np.float32)  # a residual that is not zero
    whole = residual_map_ppm(chi, field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), "auto", 5.0)
    boxed, summary = qc_in_brain_box(chi, field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), 5.0)
    assert boxed.shape == whole.shape and not np.any(boxed[~mask])
    scale = float(np.abs(whole[mask]).max())
    assert np.max(np.abs(boxed - whole)) < 0.05 * scale
    expected = residual_summary(whole, field, mask, None)["ResidualRmsPpm"]
    assert abs(summary["ResidualRmsPpm"] - expected) < 0.02 * expected
