"""Shared fixtures: the real challenge data folder (skip cleanly when absent) and quiet TF."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QSM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with qsm2016/ and rc2_phantom/; set QSM_SHARED_DATA to point elsewhere."""
    if not (SHARED_DATA / "qsm2016").is_dir():
        pytest.skip(f"real challenge data not found at {SHARED_DATA}; set QSM_SHARED_DATA to enable")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, request) -> Path:
    """The tiny demo (`python -m daqsm.evaluation.demo --size tiny --seed 0`) run once in a fresh process.

    When the session also needs `tiny_rerun`, the wheel it runs from is built and installed while
    this run computes, so their wall times overlap instead of adding up.
    """
    from tests.golden.generate import finish, run_tiny

    out = tmp_path_factory.mktemp("tiny_demo") / "run1"
    proc = run_tiny(out)
    try:
        if any("tiny_rerun" in item.fixturenames for item in request.session.items):
            request.getfixturevalue("installed_daqsm")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    error = finish(proc)
    assert not error, error
    return out


@pytest.fixture(scope="session")
def installed_daqsm(tmp_path_factory):
    """This checkout built as a wheel and installed (not editable) in a new venv (tests/installed.py)."""
    from tests.installed import install_wheel

    return install_wheel(tmp_path_factory.mktemp("wheel_install"))


#: a file the rerun's --overwrite must remove (the demo replaces its own folder whole)
RERUN_LEFTOVER = "left_from_before.txt"


@pytest.fixture(scope="session")
def tiny_rerun(tiny_run, installed_daqsm) -> Path:
    """A second run of the same demo, same seed and package versions, over a copy of the first.

    It runs the installed wheel's `daqsm-demo --overwrite` on a copy of `tiny_run` (its step-4
    checkpoints and an extra file included) from a folder whose own evaluation/, training_data/ and
    network_model/ packages come first on PYTHONPATH. One run checks that the demo reproduces bit for
    bit (tests/test_determinism.py; every file it compares is newer than `run2.started`, so none is a
    leftover of the copy), that the installed package works beside a user's same-named packages
    (tests/test_wheel.py) and that a rerun with --overwrite replaces the demo's folder whole
    (tests/evaluation/test_demo.py; its output is in `run2.log`). The demo runs twice per session, no more.
    """
    import os
    import shutil

    from tests.golden.generate import finish, run_tiny

    out = tiny_run.parent / "run2"
    shutil.copytree(tiny_run, out, symlinks=True)
    (out / RERUN_LEFTOVER).write_text("written before the rerun\n")
    (tiny_run.parent / "run2.started").write_text("")  # its mtime: every file of the rerun is newer
    error = finish(run_tiny(out, command=[str(installed_daqsm.bin / "daqsm-demo"), "--overwrite"],
                            cwd=installed_daqsm.user_dir, env=installed_daqsm.env(dict(os.environ))))
    assert not error, error
    return out
