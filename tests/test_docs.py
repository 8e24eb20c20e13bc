"""The docs run as written: every command and code block of README.md and docs/*.md, and every link.

Default (fast, every run): each fenced block and each inline `daqsm-...` / `python ...` command is
extracted; a command must name a known program, every `--option` must be one of its options, and a
command without synopsis placeholders ([...], a|b, TESLA) must parse as given (argparse, no work
done). Python blocks compile and the `daqsm.NAME` they call exists; YAML blocks load; every
relative link resolves. The README's own-data example runs as written on a small field (.mat, Hz)
and mask with the model it names (a tiny one built at that path; iterations scaled down).

Run mode: DAQSM_DOCS_RUN=1 runs every shell block marked `<!-- docs-test: run -->` with bash in a
temporary folder (the repository's `../shared/data` must exist, else it skips), with the sizes
scaled by DAQSM_DOCS_SCALE (default `tiny`: see SCALES) so that hours of CPU become minutes;
DAQSM_DOCS_SCALE=full runs them unchanged.
"""
from __future__ import annotations

import configparser
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = ("", "bash", "sh", "shell", "console")
#: script paths of the original layout -> module with build_parser()
SCRIPTS = {
    "training_data/genChi.py": "daqsm.training_data.genChi",
    "training_data/qsmFmapCal_gpu.py": "daqsm.training_data.qsmFmapCal_gpu",
    "genRDFPatchesSyn.py": "daqsm.training_data.genRDFPatchesSyn",
    "network_model/train_model/train.py": "daqsm.network_model.train_model.train",
    "network_model/model_finetune/train.py": "daqsm.network_model.model_finetune.train",
    "network_model/infer.py": "daqsm.network_model.infer",
}
#: programs of the docs that are not ours (checked elsewhere or not at all)
FOREIGN = ("pip", "time", "cd", "export", "wait", "srun", "ls", "nvidia-smi", "mkdir", "bash", "cat", "source")
#: DAQSM_DOCS_SCALE=tiny: option -> value replacing the documented one (sizes only, never the meaning)
SCALES = {"tiny": {"-n": "2", "--iterations": "3", "--max_steps": "3", "--max-steps": "3", "--epochs": "1",
                   "--pretrain-steps": "3", "--finetune-iterations": "3", "--resolution": "6",
                   "--target-patch-size": "16", "--patch-size": "16"}}
#: ... and options added where a command leaves the size to its default (training length, network width)
APPEND = {"tiny": {"daqsm.network_model.train_model.train": ["--max_steps", "3", "--base_filters", "4"],
                   "daqsm.network_model.model_finetune.train": ["--iterations", "3"],
                   "daqsm.training_data.simulator.simulate": ["--resolution", "6"]}}
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+$")


def _entry_points() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    points = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        points[name] = target.split(":")[0]
    return points


def blocks(path: Path) -> list:
    """[(line, language, text, marker)] of the fenced blocks of a Markdown file."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if match:
            marker = ""
            back = i - 1
            if back >= 0 and lines[back].strip().startswith("<!-- docs-test:"):
                marker = lines[back].strip()[len("<!-- docs-test:"):-len("-->")].strip()
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                j += 1
            found.append((i + 1, match.group(2).lower(), "\n".join(lines[i + 1:j]), marker))
            i = j
        i += 1
    return found


def inline_commands(path: Path) -> list:
    """[(line, command)] of inline code spans that are a daqsm command outside fenced blocks."""
    found, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            words = span.split()
            if len(words) >= 2 and (words[0].startswith("daqsm-") or
                                    (words[0] == "python" and (words[1] == "-m" or words[1].endswith(".py")))):
                found.append((n, span))
    return found


def shell_commands(text: str) -> list:
    """Commands of a shell block: continuations joined, comments and variable lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # a multi-line quoted script (the SLURM example): not a command of ours
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value prefix
        words = [w for w in words if w not in ("&", "&&")]
        if words:
            commands.append(words)
    return commands


def program(words: list):
    """(module name, argv) of a daqsm command, None for a foreign program; raises for an unknown one."""
    head = words[0]
    if head in FOREIGN or head.startswith("#"):
        return None
    if head.startswith("daqsm-"):
        points = _entry_points()
        assert head in points, f"unknown console command {head!r}"
        return points[head], words[1:]
    if head in ("python", "python3"):
        if words[1] == "-m":
            module = words[2]
            if not module.startswith("daqsm"):
                return None  # pytest, pip, ...
            if module == "daqsm.evaluation":
                module = "daqsm.evaluation.cli"
            return module, words[3:]
        if words[1] == "-c" or words[1].startswith("benchmarks/") or words[1].startswith("tests/"):
            return None  # benchmarks and test tools have their own docs
        assert words[1] in SCRIPTS, f"unknown script {words[1]!r}"
        return SCRIPTS[words[1]], words[2:]
    if head.startswith("$") or head.endswith(".sh") or head == "srun":
        return None
    return None


def _is_synopsis(argv: list) -> bool:
    return any("[" in w or "]" in w or "|" in w or w == "..." or _PLACEHOLDER.match(w) for w in argv)


def _option_strings(parser) -> set:
    import argparse

    names = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _option_strings(sub)
    return names


def check_command(words: list, where: str) -> None:
    found = program(words)
    if found is None:
        return
    module, argv = found
    argv = [os.path.expandvars(w) for w in argv]
    parser = importlib.import_module(module).build_parser()
    known = _option_strings(parser)
    for word in argv:
        option = word.strip("[]").split("=")[0]
        if option.startswith("--") and option not in known:
            raise AssertionError(f"{where}: {module} has no option {option}")
    if not argv or _is_synopsis(argv):  # a bare program name names the command; a synopsis its options
        return
    try:
        parser.parse_args(argv)
    except SystemExit as stop:
        raise AssertionError(f"{where}: `{shlex.join(words)}` does not parse (exit {stop.code})") from None


def _cases():
    cases = []
    for path in DOCS:
        rel = path.relative_to(REPO)
        for line, lang, text, marker in blocks(path):
            cases.append(pytest.param(path, line, lang, text, marker, id=f"{rel}:{line}"))
    return cases


@pytest.mark.parametrize("path, line, lang, text, marker", _cases())
def test_block_parses(path, line, lang, text, marker, capsys):
    where = f"{path.relative_to(REPO)}:{line}"
    if lang in SHELL_LANGS:
        if text.lstrip().startswith(("step ", "daqsm/", "training_data/")):
            return  # a diagram or a file tree, not commands
        for words in shell_commands(text):
            check_command(words, where)
    elif lang == "python":
        code = compile(text, where, "exec")
        if "import daqsm" in text:
            import daqsm

            for name in re.findall(r"\bdaqsm\.([a-z_]+)\(", text):
                assert hasattr(daqsm, name), f"{where}: daqsm.{name} does not exist"
        assert code is not None
    elif lang in ("yaml", "yml"):
        import yaml

        assert isinstance(yaml.safe_load(text), dict)
    elif lang == "json":
        import json

        json.loads(text)
    capsys.readouterr()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_inline_commands_parse(path, capsys):
    for line, command in inline_commands(path):
        words = shlex.split(command)
        check_command(words, f"{path.relative_to(REPO)}:{line}")
    capsys.readouterr()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file_part = target.split("#")[0]
        if not (path.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(REPO)}: links to missing files: {missing}"


def test_a_broken_example_would_fail():
    """The checks can fail: an unknown option and a bad value are caught."""
    with pytest.raises(AssertionError, match="no option"):
        check_command(["daqsm-finetune", "--field", "f.nii.gz", "--no-such-option", "1"], "x")
    with pytest.raises(AssertionError, match="does not parse"):
        check_command(["python", "training_data/genChi.py", "c.nii.gz", "-o", "x.h5", "--mask"], "x")  # --mask needs a file


def _readme_own_data_block() -> list:
    for _line, lang, text, _marker in blocks(REPO / "README.md"):
        if lang in SHELL_LANGS and "RDF.mat:RDF" in text:
            return shell_commands(text)
    raise AssertionError("README: the own-data example (RDF.mat:RDF) is gone")


def test_readme_own_data_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """Issue 24: the example lacked --te and stopped with 'phase scale unknown'. Each command of the
    README's own-data block runs as written on a small field (.mat in Hz, and NIfTI in ppm) and mask;
    only the fine-tuning budget is scaled (--iterations 2). A command without --model uses the model the
    package ships (daqsm/models/, whatever $DAQSM_MODEL_DIR says outside the test); one that names a
    --model gets a tiny model built at that path."""
    import nibabel as nib
    import numpy as np
    import scipy.io

    from daqsm.network_model import shipped
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.units import hz_per_ppm

    pytest.importorskip("tensorflow")
    from tests.network_model.test_shipped import build_tiny_target_model

    monkeypatch.delenv(shipped.MODEL_DIR_ENV, raising=False)
    commands = _readme_own_data_block()
    assert any(w[0] == "daqsm-finetune" and "--model" not in w for w in commands), \
        "README own-data example: show the one command without --model (the shipped model)"
    for words in commands:
        if words[0] == "daqsm-finetune" and "--model" in words:
            build_tiny_target_model(tmp_path / words[words.index("--model") + 1])
    shape = (32, 32, 32)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    mask = (np.sum(grid ** 2, axis=0) <= 13 ** 2)
    chi = np.where(np.sum((grid - 3) ** 2, axis=0) <= 16, 0.2, 0.0) * mask
    field_ppm = (forward_field(chi.astype(np.float32), (1.0, 1.0, 1.0), pad="auto") * mask).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(field_ppm, affine), tmp_path / "local_field.nii.gz")
    monkeypatch.chdir(tmp_path)
    for words in commands:
        module, argv = program(words)
        if "RDF.mat:RDF" in argv:
            b0 = float(argv[argv.index("--b0") + 1])
            scipy.io.savemat(tmp_path / "RDF.mat", {"RDF": field_ppm * hz_per_ppm(b0)})
        scaled = argv + (["--iterations", "2", "--quiet"] if module.endswith("model_finetune.train") else [])
        rc = importlib.import_module(module).main(scaled)
        err = capsys.readouterr().err
        assert rc == 0, f"`{shlex.join(words)}`: {err}"
        out = argv[argv.index("-o") + 1]
        assert (tmp_path / out).is_file() and (tmp_path / out.replace(".nii.gz", ".json")).is_file()


def _run_cases():
    """Per file, its blocks marked `<!-- docs-test: run -->`, in order: they run as one chain."""
    cases = []
    for path in DOCS:
        marked = [(line, text) for line, lang, text, marker in blocks(path)
                  if marker.startswith("run") and lang in SHELL_LANGS]
        if marked:
            cases.append(pytest.param(path, marked, id=str(path.relative_to(REPO))))
    return cases


def scale_command(words: list, scale: str) -> list:
    """The command with the sizes of SCALES[scale] (unchanged for 'full')."""
    table = SCALES.get(scale, {})
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word in table:
            out[i + 1] = table[word]
    found = program(out) if scale != "full" else None
    if found and found[0] in APPEND.get(scale, {}):
        extra = APPEND[scale][found[0]]
        for option, value in zip(extra[::2], extra[1::2]):
            if option not in out:
                out += [option, value]
    return out


@pytest.mark.skipif(os.environ.get("DAQSM_DOCS_RUN") != "1", reason="set DAQSM_DOCS_RUN=1 to run the marked blocks")
@pytest.mark.parametrize("path, marked", _run_cases())
def test_marked_blocks_run(path, marked, tmp_path, shared_data):
    scale = os.environ.get("DAQSM_DOCS_SCALE", "tiny")
    script = []
    text = "\n".join(t for _, t in marked)
    for raw in re.sub(r"\\\n\s*", " ", text).splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=\S+$", stripped):
            script.append(stripped)
            continue
        script.append(shlex.join(scale_command(shlex.split(stripped, comments=True), scale)))
        print("$", script[-1])
    # the docs run from the repository root with ../shared/data beside it: the same layout in tmp
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(Path(shared_data).resolve())
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("training_data", "network_model", "genRDFPatchesSyn.py"):
        (work / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": os.path.dirname(sys.executable) + os.pathsep
           + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{path.name}: {done.stderr[-2000:]}"
