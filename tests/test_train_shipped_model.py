"""benchmarks/train_shipped_model.py resumes a work folder only when its finished steps are what the command asks.

The script skips every step whose output exists; a folder reused from another run (fewer maps, other
targets) used to train silently on what it held while the manifest recorded the command's --maps.
The check runs before anything else, so these tests need no TensorFlow work and take milliseconds.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from daqsm.outputs import config_companion

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_shipped_model", ROOT / "benchmarks" / "train_shipped_model.py")
train_shipped_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_shipped_model)


def _work(tmp_path, n_maps=48, seed=0, targets=train_shipped_model.BUILTIN_CASES, crop=96):
    work = tmp_path / "w"
    work.mkdir(parents=True)
    (work / "step1_chi.h5").write_bytes(b"")
    Path(config_companion(work / "step1_chi.h5", "genchi", False)).write_text(json.dumps({"n_maps": n_maps, "seed": seed}))
    (work / "step3_patches.h5").write_bytes(b"")
    Path(config_companion(work / "step3_patches.h5", "patches", False)).write_text(json.dumps({
        "source": [str(work / "step1_chi.h5")], "target": [str(work / "targets" / t) for t in targets],
        "target_patch_size": [crop] * 3}))
    return work


def test_a_folder_made_by_the_same_command_resumes(tmp_path):
    work = _work(tmp_path)
    assert train_shipped_model.stale_outputs(work, 48, 0, 96, []) == []
    mixed = _work(tmp_path / "m", targets=train_shipped_model.case_names(["3T-tilt15"]))
    assert train_shipped_model.stale_outputs(mixed, 48, 0, 96, ["3T-tilt15"]) == []


@pytest.mark.parametrize("change, expected", [
    (dict(n_maps=12), "holds 12 maps of seed 0, this command asks for --maps 48"),
    (dict(seed=3), "maps of seed 3"),
    (dict(crop=128), "--target-crop 96"),
    (dict(targets=train_shipped_model.case_names(["3T-tilt15"])), "T3tilt_Sim1Snr1"),
])
def test_a_folder_of_another_recipe_is_one_line_exit_2_before_anything_runs(tmp_path, capsys, change, expected):
    work = _work(tmp_path, **change)
    before = sorted(p.name for p in work.iterdir())
    with pytest.raises(SystemExit) as stop:
        train_shipped_model.main(["--work", str(work), "--steps", "3000", "--target-crop", "96", "--maps", "48"])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and expected in message and str(work) in message
    assert sorted(p.name for p in work.iterdir()) == before  # no source, targets or run folder started


def test_patches_made_from_another_folders_maps_are_refused(tmp_path):
    work = _work(tmp_path)
    step3 = Path(config_companion(work / "step3_patches.h5", "patches", False))
    config = json.loads(step3.read_text())
    config["source"] = ["/elsewhere/step1_chi.h5"]
    step3.write_text(json.dumps(config))
    assert "made from /elsewhere/step1_chi.h5" in " ".join(train_shipped_model.stale_outputs(work, 48, 0, 96, []))
