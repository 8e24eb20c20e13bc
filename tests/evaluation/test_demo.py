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


def test_rerun_with_overwrite_replaces_the_whole_folder_with_progress(tiny_run, tmp_path, capsys):
    """Issue 24: the second run failed at step 4 ('holds checkpoints; use --resume true')."""
    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)
    (out / "left_from_before.txt").write_text("old")
    assert (out / demo.MARKER).is_file()
    assert demo.main(["--size", "tiny", "-o", str(out), "--overwrite", "--seed", "0"]) == 0
    assert not (out / "left_from_before.txt").exists()  # replaced whole
    assert (out / "step4_pretrain" / "target_model.keras").is_file() and (out / "table.md").is_file()
    err = capsys.readouterr().err
    assert "pre-training: 100%" in err and "fine-tuning" in err  # steps 4 and 5 show progress bars
    assert "SMOKE TEST" in (out / "table.md").read_text() and "smoke test" in err
