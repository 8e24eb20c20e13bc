"""One rule names every command's resolved config (daqsm.outputs.config_companion): OUT.config.json
beside a file output, FOLDER/COMMAND_config.json inside a folder output (issue 20, deliverable 4).
Steps 4 and 5 wrote config.json and OUT_config.json before; those names are still read (a resumed run
folder) and replaced with the set (step 5)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from daqsm.outputs import (
    config_companion,
    find_config_companion,
    legacy_config_companions,
    qsm_set,
    sidecar_companion,
)

REPO = Path(__file__).resolve().parents[1]

#: every console script -> (command, an output as a user gives it, folder?, the resolved config's name);
#: None: the command writes no config file (the sidecar holds it, or it records none)
COMPANIONS = {
    "daqsm-genchi": [("genchi", "run/chi.h5", False, "run/chi.config.json"),
                     ("genchi", "run/chi/", True, "run/chi/genchi_config.json")],
    "daqsm-fieldmap": [("fieldmap", "run/fields.h5", False, "run/fields.config.json"),
                       ("fieldmap", "run/f.nii.gz", False, "run/f.config.json"),
                       ("fieldmap", "run/fields", True, "run/fields/fieldmap_config.json")],
    "daqsm-patches": [("patches", "run/patches.hdf5", False, "run/patches.config.json")],
    "daqsm-simulate": [("simulate", "run/targets", True, "run/targets/simulate_config.json")],
    "daqsm-train": [("train", "run/pre", True, "run/pre/train_config.json")],
    "daqsm-finetune": [("finetune", "run/q.nii.gz", False, "run/q.config.json"),
                       ("finetune", "run/q.nii", False, "run/q.config.json")],
    "daqsm-demo": [("demo", "demo_out", True, "demo_out/demo_config.json")],
    "daqsm-infer": None,     # in the OUT.json sidecar
    "daqsm-baseline": None,  # in the OUT.json sidecar
    "daqsm-export": None,    # in the M.json sidecar
    "daqsm-evaluate": None,  # a table records none
    "daqsm-figures": None,   # a PNG records none
    "daqsm-check": None,     # writes nothing
}


def _console_scripts() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {line.split("=")[0].strip() for line in lines}


def test_the_table_lists_every_command():
    assert set(COMPANIONS) == _console_scripts()


@pytest.mark.parametrize("script", sorted(k for k, v in COMPANIONS.items() if v))
def test_every_command_config_name_follows_the_one_rule(script):
    for command, output, folder, name in COMPANIONS[script]:
        assert config_companion(output, command, folder) == name, (script, output)
        assert script == f"daqsm-{command}"  # a folder's config is named after the command that wrote it


def test_the_set_of_a_map_uses_the_same_rules():
    paths = qsm_set("d/q.nii.gz")
    assert paths["config"] == config_companion("d/q.nii.gz", "finetune", folder=False) == "d/q.config.json"
    assert paths["sidecar"] == sidecar_companion("d/q.nii.gz") == "d/q.json"
    assert paths["residual_sidecar"] == "d/q_residual.json"
    assert paths["legacy_config"] == "d/q_config.json"  # older name: refused, locked and replaced with the set


def test_no_module_spells_a_config_name_itself():
    """The rule's names are built in daqsm/outputs.py only; every writer and reader calls it."""
    literal = re.compile(r"""config\.json["']""")  # a string that ends in a config file's name
    offenders = []
    for path in [*(REPO / "daqsm").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]:
        if path.name == "outputs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if literal.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, offenders


def test_older_names_are_found(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert find_config_companion(run, "train", folder=True) is None
    (run / "config.json").write_text("{}\n")  # a run folder of an earlier version
    assert legacy_config_companions(run, "train", folder=True) == [str(run / "config.json")]
    assert find_config_companion(run, "train", folder=True) == str(run / "config.json")
    (run / "train_config.json").write_text("{}\n")
    assert find_config_companion(run, "train", folder=True) == str(run / "train_config.json")
    assert legacy_config_companions(run, "genchi", folder=True) == []  # no other command had another name


def test_an_older_config_is_replaced_with_the_set(tmp_path):
    from daqsm.output_lock import claim_qsm_set

    out = tmp_path / "q.nii.gz"
    out.write_bytes(b"old map")
    (tmp_path / "q_config.json").write_text("{}\n")  # written by an earlier version with the map
    with pytest.raises(Exception, match="use --overwrite"):
        with claim_qsm_set("-o", out, overwrite=False):
            pass
    with claim_qsm_set("-o", out, overwrite=True) as qset:
        qset.start_writing()
        assert not (tmp_path / "q_config.json").exists()
