"""The tree shows the architecture: one installed name, dependencies point one way, no circles.

daqsm.api -> daqsm.evaluation -> daqsm.network_model -> daqsm.qc -> daqsm.training_data -> daqsm's
infrastructure (errors, tf_env, config, validate, outputs, output_lock, provenance), which imports none of
the pipeline packages.
"""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE = ("daqsm.training_data", "daqsm.qc", "daqsm.network_model", "daqsm.evaluation")
INFRA = sorted(p for p in (REPO / "daqsm").glob("*.py") if p.name not in ("api.py", "__init__.py"))
# package -> packages its modules must not import
FORBIDDEN = {"training_data": ("daqsm.qc", "daqsm.network_model", "daqsm.evaluation", "daqsm.api"),
             "qc": ("daqsm.network_model", "daqsm.evaluation", "daqsm.api"),
             "network_model": ("daqsm.evaluation", "daqsm.api"),
             "evaluation": ("daqsm.api",)}
LAUNCHERS = ("training_data/genChi.py", "training_data/qsmFmapCal_gpu.py", "genRDFPatchesSyn.py",
             "network_model/train_model/train.py", "network_model/model_finetune/train.py", "network_model/infer.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, top_level_only: bool = False) -> set:
    """Absolute module names `path` imports (relative imports resolved); top level = not inside a def."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module-level statements, including those under `if`/`try`
        nodes = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
                 for n in ast.walk(stmt)]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = _module_name(path).split(".")
                pkg = pkg[: len(pkg) - node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join(pkg + [node.module])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_one_installed_top_level_name():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split()
    assert include == ["daqsm", "daqsm.*"]
    assert "py_modules" not in cfg["options"]
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        assert line.split("=")[1].strip().startswith("daqsm."), line


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_original_paths_are_launchers_into_daqsm(launcher):
    path = REPO / launcher
    imported = _imported(path)
    assert any(_matches(n, ("daqsm",)) for n in imported), f"{launcher} does not call into daqsm"
    assert not (path.parent / "__init__.py").exists(), f"{path.parent} must not be a package"
    assert len(path.read_text().splitlines()) <= 20


@pytest.mark.parametrize("launcher", LAUNCHERS[:5])  # the five steps (inference is a tool, not a step)
def test_each_step_script_is_a_thin_parse_call_write(launcher):
    """The module a step's launcher runs parses, calls the library and writes: 120 lines at most (issue 20, 5)."""
    targets = [n for n in _imported(REPO / launcher) if _matches(n, ("daqsm",)) and not n.endswith(".cli")]
    assert len(targets) == 1, targets
    script = REPO / (targets[0].replace(".", "/") + ".py")
    assert len(script.read_text().splitlines()) <= 120, script.relative_to(REPO)


@pytest.mark.parametrize("module", INFRA, ids=lambda p: p.name)
def test_infrastructure_imports_no_pipeline_package(module):
    bad = {n for n in _imported(module) if _matches(n, PIPELINE + ("daqsm.api",))}
    assert not bad, f"{module.name} imports {sorted(bad)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    for path in sorted((REPO / "daqsm" / package).rglob("*.py")):
        bad = {n for n in _imported(path) if _matches(n, FORBIDDEN[package])}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_no_import_circles():
    """Imports between daqsm modules form no cycle, imports inside functions included (as `farm-studio look` counts)."""
    paths = {_module_name(p): p for p in (REPO / "daqsm").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for imported in _imported(path):
            if imported in paths and imported != name:
                targets.add(imported)
            elif imported.rsplit(".", 1)[0] in paths and imported.rsplit(".", 1)[0] != name:
                targets.add(imported.rsplit(".", 1)[0])
        graph[name] = {t for t in targets if not name.startswith(t + ".") and not t == name}
        graph[name] = {t for t in graph[name] if not paths[t].name == "__init__.py"}
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("init", sorted((REPO / "daqsm").rglob("__init__.py")), ids=lambda p: str(p.parent.name))
def test_package_index_lists_every_module(init):
    """Each package's docstring names each of its modules (style.md: one line per module)."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    modules = sorted(p.name for p in init.parent.glob("*.py") if p.name != "__init__.py")
    modules += sorted(p.name + "/" for p in init.parent.iterdir() if (p / "__init__.py").exists())
    missing = [m for m in modules if m.removesuffix(".py").removesuffix("/") not in doc]
    assert not missing, f"{init.relative_to(REPO)} does not list {missing}"


def test_simulator_has_its_own_package():
    names = {p.name for p in (REPO / "daqsm" / "training_data" / "simulator").glob("*.py")}
    assert {"phantom.py", "tissue.py", "texture.py", "gre.py", "gibbs.py", "simulate.py"} <= names
