"""The tree shows the architecture: dependencies point one way (design.md).

daqsm.api -> evaluation -> network_model -> training_data -> daqsm infrastructure (errors, tf_env,
config), which imports none of the pipeline packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INFRA = ("daqsm/errors.py", "daqsm/tf_env.py", "daqsm/config.py", "daqsm/validate.py", "daqsm/output_lock.py")
# package -> top-level packages its modules must not import
FORBIDDEN = {"training_data": {"network_model", "evaluation"}, "network_model": {"evaluation"}}


def _imported(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", INFRA)
def test_infrastructure_imports_no_pipeline_package(module):
    bad = {n for n in _imported(REPO / module) if n.split(".")[0] in ("training_data", "network_model", "evaluation")
           or n in ("daqsm", "daqsm.api")}
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    for path in sorted((REPO / package).rglob("*.py")):
        bad = {n for n in _imported(path) if n.split(".")[0] in FORBIDDEN[package] or n == "daqsm.api"}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_simulator_has_its_own_package():
    names = {p.name for p in (REPO / "training_data" / "simulator").glob("*.py")}
    assert {"phantom.py", "tissue.py", "texture.py", "gre.py", "gibbs.py", "simulate.py"} <= names
