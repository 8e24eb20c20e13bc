"""A missing required input is one line in one wording in every command (daqsm.config.require):
"OPTION: required (option or config key 'KEY'), got none[; or give ALTERNATIVE]" (issue 20, 4)."""
from __future__ import annotations

import re

import pytest

WORDING = re.compile(r"^(?P<prog>.+): error: (?P<option>\S+): required \(option or config key '(?P<key>\w+)'\), "
                     r"got none(; or give .+)?$")


def _main(command):
    from tests.test_fault_injection import _commands

    return _commands()[command]


#: (command, argv, the option named first): each argv lacks one required input
MISSING = [
    ("genchi", [], "SOURCE"),
    ("patches", [], "--source"),
    ("fieldmap", [], "-o/--output"),
    ("fieldmap", ["-o", "{tmp}/f.nii.gz"], "INPUT"),
    ("train", [], "--datasets_path"),
    ("finetune", [], "-o/--output"),
    ("finetune", ["-o", "{tmp}/q.nii.gz"], "--field"),
    ("infer", ["-o", "{tmp}/q.nii.gz"], "--field"),
    ("check", [], "--field"),
    ("baseline", ["tkd"], "--field"),
    ("export", [], "--model"),
    ("figures", ["slices"], "--recon"),
    ("simulate", [], "--source"),
    ("evaluate", [], "--recon"),
]


@pytest.mark.parametrize("command,argv,option", MISSING, ids=[f"{c}-{o}" for c, _a, o in MISSING])
def test_missing_input_is_one_line_in_one_wording(command, argv, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = _main(command)([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "warning" not in line.lower()]
    assert status == 2 and len(err) == 1, err
    match = WORDING.match(err[0])
    assert match, err[0]
    assert match["option"] == option, err[0]
    assert not list(tmp_path.iterdir()), "nothing written"
