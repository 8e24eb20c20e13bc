"""Number rules are declared once, on the config fields (daqsm.config.param(check=...)), with the physical
ranges in one table (daqsm/validate.py RANGES), and hold wherever a config is resolved: options, config
files and the Python API (issue 20, 4; issue 23, 2)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from daqsm.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _configs():
    from tests.test_config import _commands

    return {name: cls for name, (_module, cls, _argv) in _commands().items()}


def test_no_rule_tables_at_call_sites():
    import daqsm.validate as validate

    assert not hasattr(validate, "check_numbers")
    users = [str(p.relative_to(REPO)) for p in (REPO / "daqsm").rglob("*.py") if "check_numbers(" in p.read_text()]
    assert not users, users


#: quantity field -> (a value out of the one table's range, text of the one-line refusal)
OUT_OF_RANGE = {"b0_tesla": (3000.0, "(0, 20]"), "te_s": (25.0, "(0, 1)"), "voxel_size_mm": ((0.01, 1.0, 1.0), "[0.05, 20]"),
                "b0_dir": ((0.0, 0.0, 0.0), "B0 direction")}


@pytest.mark.parametrize("quantity", sorted(OUT_OF_RANGE))
def test_every_command_refuses_a_quantity_out_of_range_alike(quantity):
    """The same quantity has the same valid range and message in every command (issue 23 names B0 dir)."""
    from daqsm.config import resolve_config

    value, text = OUT_OF_RANGE[quantity]
    seen = 0
    for command, cls in _configs().items():
        if quantity not in {f.name for f in dataclasses.fields(cls)}:
            continue
        seen += 1
        with pytest.raises(InputError, match=r"^--" + quantity.replace("_", "-") + ": ") as err:
            resolve_config(cls, None, {quantity: value})
        assert text in str(err.value), (command, str(err.value))
    assert seen >= 3, quantity


def test_declared_rules_apply_to_config_files_too(tmp_path):
    from daqsm.config import resolve_config
    from daqsm.network_model.pretraining import PretrainConfig

    path = tmp_path / "c.json"
    path.write_text('{"val_fraction": 0.95}')
    with pytest.raises(InputError, match=r"val_fraction: expected a number in \[0, 0.9\], got 0.95"):
        resolve_config(PretrainConfig, str(path))


def test_api_pretrain_gets_the_command_rules():
    """The Python API resolves the same config: a rule of step 4 holds before any patch is looked at."""
    import daqsm

    with pytest.raises(InputError, match="val_fraction: expected a number in"):
        daqsm.pretrain(patches={}, val_fraction=0.95)
    with pytest.raises(InputError, match="bn_momentum"):
        daqsm.pretrain(patches={}, bn_momentum=5.0)


def test_api_geometry_arguments_use_the_one_table():
    import daqsm

    chi = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"voxel_size_mm: expected a number in \[0.05, 20\]"):
        daqsm.field_maps(chi, voxel_size_mm=(100.0, 1.0, 1.0))
    with pytest.raises(InputError, match="b0_dir: expected a B0 direction"):
        daqsm.synthesize_maps(chi, np.ones_like(chi), 1, b0_dir=(0.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"target_te_s: expected a number in \(0, 1\)"):
        daqsm.make_patches([chi], [chi], [chi], target_te_s=25.0)


def test_a_config_built_directly_is_checked_like_a_resolved_one():
    """finetune_core.check_params (the API's and the command's) applies the declared rules and choices."""
    from daqsm.network_model.finetune_core import check_params
    from daqsm.network_model.finetuning import FinetuneConfig

    for changes, text in (({"learning_rate": 0.0}, "--learning_rate: expected a positive number"),
                          ({"tau": -1.0}, "--tau: expected a number >= 0"),
                          ({"warmup_iterations": -1}, "--warmup_iterations: expected an integer >= 0"),
                          ({"trainable": "some"}, "--trainable"), ({"b0_tesla": 3000.0}, "--b0_tesla")):
        with pytest.raises(InputError, match=text):
            check_params(dataclasses.replace(FinetuneConfig(), **changes))


#: config -> (field, a value its declared rule refuses, the rule's words): step 1's augmentation ranges,
#: step 3's sizes and the export's numbers, once checked in __post_init__ in their own words
DECLARED = [
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "elastic_alpha", -1.0, "expected a number >= 0"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "erode_vox", -1, "expected an integer >= 0"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "scale_range", 0.5, r"expected a number in \[0, 0.5\)"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "sources_probability", 1.5, r"expected a number in \[0, 1\]"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "gamma_range", (1.2, 0.8),
     r"expected a range \(min, max\) with 0 < min <= max"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "sources_count", (-1, 2),
     r"expected a range \(min, max\) with 0 <= min <= max"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "n_maps", 0, "expected an integer >= 1"),
    ("daqsm.training_data.synthesis:GenChiCommandConfig", "workers", -1, "expected an integer >= 0"),
    ("daqsm.training_data.patches:PatchCommandConfig", "patch_size", (8, 0, 8), "expected an integer >= 1"),
    ("daqsm.training_data.patches:PatchCommandConfig", "stride", (0,), "expected an integer >= 1"),
    ("daqsm.network_model.export:ExportConfig", "opset", 0, "expected an integer >= 1"),
    ("daqsm.network_model.export:ExportConfig", "check_size", (32, 0, 32), "expected an integer >= 1"),
]


def _class(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("spec,name,value,text", DECLARED, ids=[f"{s.split(':')[1]}-{n}" for s, n, _v, _t in DECLARED])
def test_rules_once_inline_are_declared_on_the_field(spec, name, value, text, tmp_path):
    """The rule is the field's (rule_of), so an option, a config file and a config built directly all get
    it in the config layer's words, naming the option or the file's key."""
    import json

    from daqsm.config import option_name, resolve_config
    from daqsm.validate import rule_of

    cls = _class(spec)
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    assert rule_of(field) is not None, name
    with pytest.raises(InputError, match=f"^{option_name(name)}: {text}"):
        resolve_config(cls, None, {name: value})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({name: value}))
    with pytest.raises(InputError, match=f"^config {path}: {name}: {text}"):
        resolve_config(cls, str(path))
    with pytest.raises(InputError, match=text):
        cls(**{name: value})
