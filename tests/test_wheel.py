"""The package as pip installs it: one top-level name, and it works beside a user's own packages.

A wheel of this checkout goes into a new virtual environment (not editable; tests/installed.py, no
download) and the tiny demo runs from a folder that holds its own `evaluation/`, `training_data/` and
`network_model/` packages, put first on PYTHONPATH and raising ImportError when imported. That demo
run is the session's second one (fixture `tiny_rerun`, also the determinism rerun), so this module
adds only the build, the install and one import check. Measured on 2 cores shared with four other
jobs (load average ~15): fixture setup 27 s wall (wheel 10 s, venv + install 7 s), import check 5 s,
`pytest tests/test_wheel.py -k "not demo"` 35 s wall, 6 s CPU; the tiny demo run from the
installed wheel took 65 s CPU (9.5 min wall at that load), the same as from the checkout, and its
outputs were bit-identical to the checkout's.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import zipfile

import pytest

from tests.installed import REPO, SHADOWING_PACKAGES

pytestmark = pytest.mark.slow


def test_wheel_installs_daqsm_as_the_only_top_level_name(installed_daqsm):
    with zipfile.ZipFile(installed_daqsm.wheel) as wheel:
        (dist_info,) = {n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info")}
        assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["daqsm"]
        recorded = {line.split(",")[0].split("/")[0] for line in wheel.read(f"{dist_info}/RECORD").decode().splitlines()}
    assert recorded == {"daqsm", dist_info}
    installed = {p.name for p in installed_daqsm.site_packages.iterdir()} - {"_dependencies_of_the_test_env.pth"}
    assert installed == {"daqsm", dist_info}
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = [line.split("=")[0].strip() for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()]
    missing = [s for s in scripts if not (installed_daqsm.bin / s).exists()]
    assert not missing, f"console scripts not installed: {missing}"


def test_installed_package_ignores_the_users_same_named_packages(installed_daqsm):
    """`python` started in the user's folder (its packages first on sys.path) imports only daqsm's."""
    code = ("import daqsm, daqsm.evaluation.metrics, daqsm.training_data.patches, daqsm.qc.residual; "
            "import sys; print(daqsm.__file__); "
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {SHADOWING_PACKAGES!r}))")
    done = subprocess.run([str(installed_daqsm.python), "-c", code], cwd=installed_daqsm.user_dir, capture_output=True,
                          text=True, env=installed_daqsm.env(dict(os.environ)))
    assert done.returncode == 0, done.stderr[-2000:]
    location, shadowed = done.stdout.split("\n")[:2]
    assert location.startswith(str(installed_daqsm.site_packages)), location
    assert shadowed == "[]"


def test_installed_demo_runs_from_a_folder_with_its_own_packages(tiny_rerun, installed_daqsm):
    """The installed `daqsm-demo`, run in the user's folder, writes the whole table (bits: test_determinism)."""
    log = (tiny_rerun.parent / "run2.log").read_text()
    assert (tiny_rerun / "table.json").exists()
    assert "Traceback" not in log
    for name in SHADOWING_PACKAGES:  # the user's packages are still there, unimported
        assert (installed_daqsm.user_dir / name / "__init__.py").exists()
