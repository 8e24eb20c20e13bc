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
def tiny_rerun(tiny_run) -> Path:
    """A second run of the same command, same seed and environment, into another folder."""
    from tests.golden.generate import finish, run_tiny

    out = tiny_run.parent / "run2"
    error = finish(run_tiny(out))
    assert not error, error
    return out
