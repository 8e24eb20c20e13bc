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
