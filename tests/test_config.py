"""The one config layer (daqsm/config.py) as every command sees it.

Asserts the RESOLVED value of every parameter of every dataclass-configured command, reached by
its dashed option, its underscore spelling (the original keys, e.g. --datasets_path) and a config
file; the old spellings (aliases); unknown config keys refused with "did you mean" and exit 2; and
`--help` of every console script without importing TensorFlow.
"""
from __future__ import annotations

import configparser
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from daqsm.config import _spec, option_name, resolve_config
from daqsm.outputs import config_companion

REPO = Path(__file__).resolve().parents[1]


def _commands():
    from daqsm.evaluation import baseline_cli as baselines
    from daqsm.evaluation import cli as evaluate
    from daqsm.evaluation import demo, figures
    from daqsm.network_model import check_cli, export, infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.train_model import train as pretrain
    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu
    from daqsm.training_data.simulator import simulate

    # (module, config class, argv every parse needs)
    return {
        "genchi": (genChi, genChi.GenChiCommandConfig, []),
        "fieldmap": (qsmFmapCal_gpu, qsmFmapCal_gpu.FieldmapConfig, []),
        "patches": (genRDFPatchesSyn, genRDFPatchesSyn.PatchCommandConfig, []),
        "train": (pretrain, pretrain.PretrainConfig, []),
        "finetune": (finetune, finetune.FinetuneConfig, []),
        "infer": (infer, infer.InferConfig, []),
        "simulate": (simulate, simulate.SimulateConfig, []),
        "baseline": (baselines, baselines.BaselineConfig, []),
        "demo": (demo, demo.DemoConfig, []),
        "figures-slices": (figures, figures.SlicesConfig, ["slices"]),
        "figures-losses": (figures, figures.LossesConfig, ["losses"]),
        "export": (export, export.ExportConfig, []),
        "check": (check_cli, check_cli.CheckConfig, []),
        "evaluate": (evaluate, evaluate.EvaluateConfig, []),  # columns: a list of mappings, its own reader
    }


COMMANDS = ["genchi", "fieldmap", "patches", "train", "finetune", "infer", "simulate", "baseline", "demo",
            "figures-slices", "figures-losses", "export", "check"]
# values the generic rule below would pick but the step's own validation refuses
SPECIAL = {("patches", "grid"): True, ("patches", "patch_size"): (32, 32, 16), ("patches", "stride"): (8, 8, 4),
           ("patches", "target_patch_size"): (16, 16, 16), ("fieldmap", "pad"): "8", ("train", "dipole_pad"): "auto",
           ("finetune", "dipole_pad"): "none", ("simulate", "resolution"): 2.0, ("baseline", "pad"): "8"}


def _sample(command, field, hint):
    if (command, field.name) in SPECIAL:
        return SPECIAL[command, field.name]
    elem, is_tuple, count, _ = _spec(field, hint)
    default = field.default
    choices = field.metadata.get("choices")
    if choices:
        value = next(c for c in choices if c != (default[0] if isinstance(default, tuple) and default else default))
    elif elem is bool:
        value = not default
    elif elem is int:
        value = (default if isinstance(default, int) else 0) + 2
    elif elem is float:
        base = default if isinstance(default, float) else 0.0
        value = base * 0.5 if 0 < base <= 1 else base + 0.25
    else:
        value = "some_value"
    if is_tuple:
        value = tuple([value] * (count or 3)) if not isinstance(value, tuple) else value
        if elem is float and field.name == "b0_dir":
            value = (0.0, 0.6, 0.8)
    return value


def _argv(option, value):
    if isinstance(value, bool):
        return [option] if value else ["--no-" + option[2:].replace("_", "-")]
    if isinstance(value, tuple):
        return [option, *map(str, value)]
    return [option, str(value)]


def _cases():
    import inspect  # noqa: F401

    out = []
    for name in COMMANDS:
        module, cls, _ = _commands()[name]
        for field in dataclasses.fields(cls):
            out.append(pytest.param(name, field.name, id=f"{name}-{field.name}"))
    return out


@pytest.mark.parametrize("command,key", _cases())
def test_every_option_resolves(command, key, tmp_path):
    module, cls, base = _commands()[command]
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    hint = typing.get_type_hints(cls)[key]
    value = _sample(command, field, hint)
    parser = module.build_parser()
    spellings = {option_name(key), f"--{key}"} | {f"--{a}" for a in field.metadata.get("aliases", ())}
    for option in sorted(spellings):
        args = parser.parse_args(base + _argv(option, value))
        assert getattr(resolve_config(cls, None, vars(args)), key) == value, option
    config = tmp_path / "c.json"
    config.write_text(json.dumps({key: list(value) if isinstance(value, tuple) else value}))
    assert getattr(resolve_config(cls, config, vars(parser.parse_args(base))), key) == value
    # nothing given: the dataclass default
    assert getattr(resolve_config(cls, None, vars(parser.parse_args(base))), key) == getattr(cls(), key, field.default)


def test_old_boolean_and_name_spellings():
    from daqsm.network_model.model_finetune import train as finetune

    parser = finetune.build_parser()
    cfg = resolve_config(finetune.FinetuneConfig, None, vars(parser.parse_args(
        ["--overwrite", "true", "--progress", "false", "--b0", "3", "--te", "0.02", "--voxel_size_mm", "[1,1,2]"])))
    assert (cfg.overwrite, cfg.progress, cfg.b0_tesla, cfg.te_s, cfg.voxel_size_mm) == (True, False, 3.0, 0.02,
                                                                                          (1.0, 1.0, 2.0))
    assert resolve_config(finetune.FinetuneConfig, None, vars(parser.parse_args(["--quiet"]))).progress is False


CONFIG_COMMANDS = {  # command -> (argv before, argv after --config FILE): `--config FILE` alone, else the sub-command
    "figures-slices": (["slices"], []),
    "figures-losses": (["losses"], []),
}


@pytest.mark.parametrize("command", COMMANDS + ["evaluate"])
def test_unknown_config_key_exits_2_with_a_suggestion(command, tmp_path, capsys):
    module, cls, _ = _commands()[command]
    first = dataclasses.fields(cls)[1].name
    hints = typing.get_type_hints(cls)
    number = next((f.name for f in dataclasses.fields(cls) if hints[f.name] in (int, float)), None)
    config = tmp_path / "c.yaml"
    # the unknown key is reported first: before a bad value above it and before the missing inputs
    config.write_text((f"{number}: not-a-number\n" if number else "") + f"{first}x: 1\n")
    before, after = CONFIG_COMMANDS.get(command, ([], []))
    assert module.main([*before, "--config", str(config), *after]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"unknown key '{first}x' (did you mean '{first}'?)" in err


# command -> a config file holding its required inputs (paths that do not exist) and nothing else: the
# command reads them from the file and stops at the first input it cannot read, not at "required"
REQUIRED_INPUTS = {
    "genchi": {"source": ["missing_chi.nii.gz"], "mask": ["missing_mask.nii.gz"], "output": "o.h5"},
    "fieldmap": {"inputs": ["missing_chi.nii.gz"], "output": "f.nii.gz"},
    "patches": {"source": ["missing_maps.h5"], "target": ["missing_case"], "output": "o.h5"},
    "train": {"datasets_path": "missing_patches.h5", "run_dir": "run"},
    "finetune": {"model": "missing_model.keras", "case": "missing_case", "output": "q.nii.gz"},
    "infer": {"model": "missing_model.keras", "field": "missing_field.nii.gz", "mask": "missing_mask.nii.gz",
              "output": "q.nii.gz"},
    "simulate": {"source": "missing_rc2", "output": "cases"},
    "baseline": {"method": "tkd", "field": "missing_field.nii.gz", "mask": "missing_mask.nii.gz", "output": "x.nii.gz"},
    "figures-slices": {"recon": "missing_recon.nii.gz", "truth": "missing_truth.nii.gz", "output": "s.png"},
    "figures-losses": {"log": "missing_log.csv", "output": "l.png"},
    "export": {"model": "missing_model.keras", "output": "m.onnx"},
    "check": {"case": "missing_case"},
    "evaluate": {"columns": [{"recon": "missing_recon.nii.gz", "case": "missing_case"}], "json": "t.json"},
}


def test_required_inputs_table_covers_every_command():
    assert set(REQUIRED_INPUTS) == set(COMMANDS + ["evaluate"]) - {"demo"}  # the demo needs no input


@pytest.mark.parametrize("command", sorted(REQUIRED_INPUTS))
def test_required_inputs_come_from_the_config_file(command, tmp_path, monkeypatch, capsys):
    """`COMMAND --config c.json` with the inputs in the file: no "required" error (issue 20, Deliver 5)."""
    module, _, _ = _commands()[command]
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(REQUIRED_INPUTS[command]))
    before, _ = CONFIG_COMMANDS.get(command, ([], []))
    assert module.main([*before, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ": required" not in err and "missing_" in err, err
    assert sorted(os.listdir(tmp_path)) == ["c.json"]  # nothing written


def test_steps_1_to_3_run_from_config_files_alone(tmp_path):
    """Steps 1, 2 and 3 with every input and the output in the config file (no argument but --config)."""
    import nibabel as nib
    import numpy as np

    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu

    grid = np.indices((24, 24, 24)) - 11.5
    mask = (np.sqrt((grid ** 2).sum(0)) < 10).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask.astype(np.float32) * 0.05, np.eye(4)), tmp_path / "chi.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    step1 = tmp_path / "genchi.json"
    step1.write_text(json.dumps({"source": [str(tmp_path / "chi.nii.gz")], "mask": [str(tmp_path / "mask.nii.gz")],
                                 "output": str(tmp_path / "chi.h5"), "n_maps": 1, "quiet": True}))
    assert genChi.main(["--config", str(step1)]) == 0
    written = json.loads(Path(config_companion(tmp_path / "chi.h5", "genchi", folder=False)).read_text())
    assert (written["source"], written["output"], written["n_maps"]) == ([str(tmp_path / "chi.nii.gz")],
                                                                        str(tmp_path / "chi.h5"), 1)
    step2 = tmp_path / "fieldmap.json"
    step2.write_text(json.dumps({"inputs": [str(tmp_path / "chi.h5")], "output": str(tmp_path / "fields.h5")}))
    assert qsmFmapCal_gpu.main(["--config", str(step2)]) == 0
    step3 = tmp_path / "patches.json"
    step3.write_text(json.dumps({"source": [str(tmp_path / "chi.h5")], "source_fields": [str(tmp_path / "fields.h5")],
                                 "output": str(tmp_path / "p.h5"), "patch_size": 8, "brain_threshold": 0.0,
                                 "quiet": True}))
    assert genRDFPatchesSyn.main(["--config", str(step3)]) == 0
    written = json.loads(Path(config_companion(tmp_path / "p.h5", "patches", folder=False)).read_text())
    assert written["source"] == [str(tmp_path / "chi.h5")]


def _console_scripts():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = [line.strip() for line in parser["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    return [tuple(part.strip() for part in line.split("=")) for line in lines]


def test_console_scripts_listed():
    assert len(_console_scripts()) >= 11  # the eleven pipeline commands (+ daqsm-export, daqsm-check)


#: `--help` of each module in turn in one fresh interpreter; it stops after a module that imported
#: TensorFlow or Keras, so each module's check starts without them (the rest go to a new interpreter)
HELP = """
import contextlib, io, json, sys
for module in sys.argv[1:]:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            try:
                __import__(module, fromlist=["main"]).main(["--help"])
            except SystemExit as stop:
                assert stop.code in (0, None), stop.code
        error = ""
    except BaseException as exc:
        error = repr(exc)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    print(json.dumps({"module": module, "error": error, "imported": heavy[:3], "stdout": out.getvalue()}), flush=True)
    if heavy:
        break
"""


@pytest.fixture(scope="module")
def help_outputs() -> dict:
    """module -> what its `--help` did in a fresh interpreter (error, heavy modules imported, stdout).

    One interpreter for all console scripts instead of one each (13 Python starts, ~5 s CPU saved):
    a module that imports TensorFlow ends that interpreter, so no module is checked after one did.
    """
    pending = list(dict.fromkeys(target.split(":")[0] for _, target in _console_scripts()))
    results = {}
    while pending:
        out = subprocess.run([sys.executable, "-c", HELP, *pending], capture_output=True, text=True, cwd=REPO,
                             timeout=300)
        done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert done, f"the --help runner exited {out.returncode}: {out.stderr[-2000:]}"
        results.update((record["module"], record) for record in done)
        pending = [m for m in pending if m not in results]
    return results


@pytest.mark.parametrize("name,target", _console_scripts())
def test_help_without_tensorflow(name, target, help_outputs):
    record = help_outputs[target.split(":")[0]]
    assert not record["error"], record["error"]
    assert record["imported"] == [], record["imported"]
    assert "usage:" in record["stdout"]


# `--overwrite true` (older READMEs) and the bare flag, also where a positional argument follows
POSITIONAL_RUNS = {  # command -> (argv before the flag, positional argv after it, the positional's dest, value)
    "genchi": (["--mask", "m.nii.gz", "-o", "o.h5"], ["src.nii.gz"], "positional_source", ["src.nii.gz"]),
    "fieldmap": (["-o", "f.h5"], ["chi.h5"], "positional_inputs", ["chi.h5"]),
    "baseline": ([], ["tkd"], "positional_method", "tkd"),
    "figures-losses": (["losses"], ["log.csv"], "positional_log", "log.csv"),
    "check": ([], ["case_dir"], "positional_case", "case_dir"),
}


def _overwrite(command, args):
    module, cls, _ = _commands()[command]
    if "overwrite" in {f.name for f in dataclasses.fields(cls)}:
        return resolve_config(cls, None, vars(args)).overwrite
    return bool(args.overwrite)


@pytest.mark.parametrize("command", sorted(set(POSITIONAL_RUNS) - {"check"}))
@pytest.mark.parametrize("spelling,expected", [(["--overwrite"], True), (["--overwrite", "true"], True),
                                               (["--overwrite", "True"], True), (["--overwrite", "false"], False),
                                               (["--overwrite=true"], True), (["--no-overwrite"], False), ([], False)])
def test_overwrite_flag_and_old_true_false_before_a_positional(command, spelling, expected):
    module, _, _ = _commands()[command]
    before, positional, dest, value = POSITIONAL_RUNS[command]
    args = module.build_parser().parse_args(before + spelling + positional)
    assert getattr(args, dest) == value
    assert _overwrite(command, args) is expected


@pytest.mark.parametrize("command", sorted(POSITIONAL_RUNS))
def test_any_boolean_option_takes_true_false_before_a_positional(command):
    module, cls, _ = _commands()[command]
    before, positional, dest, value = POSITIONAL_RUNS[command]
    parser = module.build_parser()
    for field in dataclasses.fields(cls):
        if field.type not in (bool, "bool"):
            continue
        for word, want in (("true", True), ("false", False), ("FALSE", False)):
            args = parser.parse_args(before + [option_name(field.name), word] + positional)
            assert getattr(args, dest) == value, (field.name, word)
            assert getattr(resolve_config(cls, None, vars(args)), field.name) is want, (field.name, word)


def test_true_false_words_stay_values_of_options_that_take_values():
    from daqsm.evaluation import figures

    args = figures.build_parser().parse_args(["losses", "--title", "true", "log.csv"])
    assert (args.title, args.positional_log) == ("true", "log.csv")


@pytest.mark.parametrize("command", COMMANDS + ["evaluate"])
def test_overwrite_true_false_in_every_command(command):
    module, cls, base = _commands()[command]
    parser = module.build_parser()
    if not any("--overwrite" in action.option_strings for action in parser._actions) and command not in (
            "figures-slices", "figures-losses"):
        pytest.skip(f"{command} has no --overwrite (step 4 resumes its run folder; daqsm-check writes nothing)")
    for words, want in ((["--overwrite"], True), (["--overwrite", "true"], True), (["--overwrite", "false"], False),
                        (["--overwrite=TRUE"], True)):
        args = parser.parse_args(base + words)
        got = resolve_config(cls, None, vars(args)).overwrite if "overwrite" in {
            f.name for f in dataclasses.fields(cls)} else bool(args.overwrite)
        assert got is want, words
