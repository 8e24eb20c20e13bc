"""daqsm-demo re-runs with --overwrite (its own folder replaced whole, a foreign folder refused), shows
progress in steps 4 and 5, and a tiny run's table says it is a smoke test."""
from __future__ import annotations

import shutil

from daqsm.evaluation import demo


def test_overwrite_refuses_a_folder_the_demo_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert demo.main(["--size", "tiny", "-o", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "made by daqsm-demo" in err and err.count("\n") == 1
    assert (out / "thesis.tex").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_without_overwrite_an_existing_demo_folder_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)
    before = sorted(p.name for p in out.iterdir())
    assert demo.main(["--size", "tiny", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_rerun_with_overwrite_replaces_the_whole_folder_with_progress(tiny_run, tiny_rerun):
    """Issue 24: the second run failed at step 4 ('holds checkpoints; use --resume true').

    The session's second demo run (fixture `tiny_rerun`) is this rerun: `daqsm-demo --overwrite` with
    the same seed over a copy of the first run's folder (its checkpoints included) plus a file of
    its own; its stdout and stderr are in run2.log.
    """
    from tests.conftest import RERUN_LEFTOVER

    assert (tiny_run / demo.MARKER).is_file() and any((tiny_run / "step4_pretrain" / "checkpoints").iterdir())
    assert not (tiny_rerun / RERUN_LEFTOVER).exists()  # replaced whole
    assert (tiny_rerun / "step4_pretrain" / "target_model.keras").is_file() and (tiny_rerun / "table.md").is_file()
    err = (tiny_rerun.parent / "run2.log").read_text()
    assert "pre-training: 100%" in err and "fine-tuning" in err  # steps 4 and 5 show progress bars
    assert "SMOKE TEST" in (tiny_rerun / "table.md").read_text() and "smoke test" in err
