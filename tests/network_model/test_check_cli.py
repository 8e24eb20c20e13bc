"""daqsm-check runs the readers of the step that follows: it refuses what the step refuses, with the
same line, and for what the step accepts it says ok and prints the values the step reads (issue 23, 4).

The step runs with a model that does not exist: it reads and checks its inputs before the model, so
"model ... not found" means it accepted them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from daqsm.network_model import check_cli
from daqsm.training_data.units import hz_per_ppm, rad_per_ppm
from daqsm.training_data.volume_io import write_volume
from tests.training_data.test_input_check import AFFINE, TE, _write_case

N = 16


def _files(tmp_path, scale=1.0, weight=False):
    """A good case plus its field (times `scale`), mask and a 3-D weight as separate files."""
    folder, f, m, mag = _write_case(tmp_path / "c")
    write_volume(tmp_path / "field.nii.gz", f * scale, AFFINE)
    argv = ["--field", str(tmp_path / "field.nii.gz"), "--mask", str(folder / "mask.nii.gz")]
    if weight:
        write_volume(tmp_path / "weight.nii.gz", mag[..., 1], AFFINE)
    return argv


def _case(tmp_path, **changes):
    folder, *_ = _write_case(tmp_path / "c", **changes)
    return [str(folder)]


def _case_without_b0_te(tmp_path):
    folder, *_ = _write_case(tmp_path / "c")
    (folder / "case.json").write_text(json.dumps({"voxel_size_mm": [1.0, 1.0, 1.5]}))
    return [str(folder)]


#: name -> (argv for daqsm-check and the step, built in tmp_path); what step 5 refuses
FINETUNE_REFUSES = {
    "ppm files without B0 and TE": lambda t: _files(t),
    "hz files with B0, no TE": lambda t: _files(t, hz_per_ppm(3.0)) + ["--units", "hz", "--b0", "3"],
    "rad files with B0, no TE": lambda t: _files(t, rad_per_ppm(3.0, 0.02)) + ["--units", "rad", "--b0", "3"],
    "case without B0 and TE": _case_without_b0_te,
    "case: one TE, four-echo magnitude": lambda t: _case(t, info={"te_s": [0.012]}),
    "zero B0 direction": lambda t: _files(t) + ["--b0", "3", "--te", "0.02", "--b0-dir", "0", "0", "0"],
    "Hz labelled ppm": lambda t: _files(t, hz_per_ppm(3.0)) + ["--b0", "3", "--te", "0.02"],
    "negative weight": lambda t: _files(t, weight=True) + ["--b0", "3", "--te", "0.02", "--weight",
                                                            str(_negative(t / "weight.nii.gz"))],
    "zero phase scale": lambda t: _files(t) + ["--phase_rad_per_ppm", "0"],
    "B0 out of the one table's range": lambda t: _files(t) + ["--b0", "3000", "--te", "0.02"],
}


def _negative(path):
    write_volume(path, -np.ones((N, N, N), np.float32), AFFINE)
    return path


#: name -> (argv, expected phase scale rad/ppm, weight source text); what step 5 accepts
FINETUNE_ACCEPTS = {
    "case with four echoes": (lambda t: _case(t), rad_per_ppm(3.0, TE[1]), "echo 2 of 4 of"),
    "case with one echo": (lambda t: _case(t, magnitude=np.ones((N, N, N), np.float32), info={"te_s": [0.02]}),
                           rad_per_ppm(3.0, 0.02), "echo 1 of 1 of"),
    "hz files with B0 and TE": (lambda t: _files(t, hz_per_ppm(3.0)) + ["--units", "hz", "--b0", "3", "--te", "0.02"],
                                rad_per_ppm(3.0, 0.02), "the mask"),
    "ppm files with a weight": (lambda t: _files(t, weight=True) + ["--b0", "7", "--te", "0.01", "--weight",
                                                                     str(t / "weight.nii.gz")],
                                rad_per_ppm(7.0, 0.01), "weight.nii.gz"),
    "explicit phase scale": (lambda t: _files(t) + ["--phase_rad_per_ppm", "12.5"], 12.5, "the mask"),
}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and ": error: " in err[-1], err
    return err[-1].split(": error: ", 1)[1]


def _step5(tmp_path, argv, capsys):
    from daqsm.network_model.model_finetune import train as finetune

    step_argv = argv if argv[0].startswith("--") else ["--case", argv[0]] + argv[1:]  # CASE_DIR: the step's --case
    code = finetune.main(["--model", str(tmp_path / "absent.keras"), "-o", str(tmp_path / "q.nii.gz")] + step_argv)
    assert code == 2
    return _error_line(capsys)


@pytest.mark.parametrize("name", sorted(FINETUNE_REFUSES))
def test_check_refuses_what_step5_refuses_with_its_line(name, tmp_path, capsys):
    argv = FINETUNE_REFUSES[name](tmp_path)
    capsys.readouterr()
    step_line = _step5(tmp_path, argv, capsys)
    assert "absent.keras" not in step_line, f"step 5 accepted the inputs of {name!r}"
    assert check_cli.main(argv) == 2
    assert _error_line(capsys) == step_line


@pytest.mark.parametrize("name", sorted(FINETUNE_ACCEPTS))
def test_check_accepts_what_step5_accepts_and_prints_what_it_reads(name, tmp_path, capsys):
    make, phase, weight = FINETUNE_ACCEPTS[name]
    argv = make(tmp_path)
    capsys.readouterr()
    assert "absent.keras" in _step5(tmp_path, argv, capsys)  # inputs accepted, the model is next
    assert check_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "daqsm-check: ok (step 5" in out
    assert f"phase scale {phase:.4g} rad/ppm" in out
    assert "voxel size 1 x 1 x 1.5 mm" in out
    weight_line = next(line for line in out.splitlines() if line.startswith("weight W: "))
    assert weight in weight_line, weight_line


#: inference: no phase scale needed; the same case checks
INFER_REFUSES = {k: FINETUNE_REFUSES[k] for k in ("rad files with B0, no TE", "case: one TE, four-echo magnitude",
                                                  "zero B0 direction", "Hz labelled ppm")}
INFER_ACCEPTS = {"ppm files without B0 and TE": (lambda t: _files(t), "unknown: the small-angle form"),
                 "case with four echoes": (lambda t: _case(t), f"{rad_per_ppm(3.0, TE[1]):.4g} rad/ppm")}


def _infer(tmp_path, argv, capsys):
    from daqsm.network_model import infer

    step_argv = argv if argv[0].startswith("--") else ["--case", argv[0]] + argv[1:]
    code = infer.main(["--model", str(tmp_path / "absent.keras"), "-o", str(tmp_path / "q.nii.gz")] + step_argv)
    assert code == 2
    return _error_line(capsys)


@pytest.mark.parametrize("name", sorted(INFER_REFUSES))
def test_check_step_infer_refuses_what_inference_refuses(name, tmp_path, capsys):
    argv = INFER_REFUSES[name](tmp_path)
    capsys.readouterr()
    step_line = _infer(tmp_path, argv, capsys)
    assert "absent.keras" not in step_line
    assert check_cli.main(argv + ["--step", "infer"]) == 2
    assert _error_line(capsys) == step_line


@pytest.mark.parametrize("name", sorted(INFER_ACCEPTS))
def test_check_step_infer_accepts_what_inference_accepts(name, tmp_path, capsys):
    make, phase = INFER_ACCEPTS[name]
    argv = make(tmp_path)
    capsys.readouterr()
    assert "absent.keras" in _infer(tmp_path, argv, capsys)
    assert check_cli.main(argv + ["--step", "infer"]) == 0
    out = capsys.readouterr().out
    assert "daqsm-check: ok (daqsm-infer" in out and f"QC phase scale {phase}" in out


def test_unknown_step_is_one_line_listing_the_steps(tmp_path, capsys):
    assert check_cli.main(_case(tmp_path) + ["--step", "evaluate"]) == 2
    assert "expected one of finetune, infer" in _error_line(capsys)
