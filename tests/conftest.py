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
def tiny_run(tmp_path_factory) -> Path:
    """The tiny demo (`python -m daqsm.evaluation.demo --size tiny --seed 0`) run once in a fresh process."""
    from tests.golden.generate import finish, run_tiny

    out = tmp_path_factory.mktemp("tiny_demo") / "run1"
    error = finish(run_tiny(out))
    assert not error, error
    return out


@pytest.fixture(scope="session")
def installed_daqsm(tmp_path_factory):
    """This checkout built as a wheel and installed (not editable) in a new venv (tests/installed.py)."""
    from tests.installed import install_wheel

    return install_wheel(tmp_path_factory.mktemp("wheel_install"))


@pytest.fixture(scope="session")
def tiny_rerun(tiny_run, installed_daqsm) -> Path:
    """A second run of the same demo, same seed and package versions, into another folder.

    It runs the installed wheel's `daqsm-demo` from a folder whose own evaluation/, training_data/
    and network_model/ packages come first on PYTHONPATH: one run checks both that the demo
    reproduces bit for bit (tests/test_determinism.py) and that the installed package works beside
    a user's same-named packages (tests/test_wheel.py). The demo runs twice per session, no more.
    """
    import os

    from tests.golden.generate import finish, run_tiny

    out = tiny_run.parent / "run2"
    error = finish(run_tiny(out, command=[str(installed_daqsm.bin / "daqsm-demo")], cwd=installed_daqsm.user_dir,
                            env=installed_daqsm.env(dict(os.environ))))
    assert not error, error
    return out
