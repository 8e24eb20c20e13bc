"""Step parameters: a frozen dataclass filled from defaults, a config file and `--key value` options.

Used by genChi.py (step 1) and genRDFPatchesSyn.py (step 3). Every dataclass field becomes one
command-line option (`elastic_alpha` -> `--elastic-alpha`; booleans get `--x/--no-x`; tuples take
several values). The precedence is: dataclass default < config file (JSON or YAML) < command line.
Unknown keys in a config file are rejected with the list of valid ones.

Field metadata (optional, `dataclasses.field(metadata=...)`):
    help:   text for --help;
    type:   element type when the default is None (e.g. float);
    nargs:  number of values for tuple fields (int, '+' by default);
    choices: allowed values (for str fields or tuple-of-str elements).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

from training_data.errors import InputError, choices_message


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _field_kind(field: dataclasses.Field):
    """(element type, is_tuple) of a config field, from its metadata or its default."""
    meta = field.metadata
    default = field.default
    if isinstance(default, tuple):
        elem = meta.get("type") or (type(default[0]) if default else str)
        return elem, True
    if default is None:
        return meta.get("type", str), bool(meta.get("nargs"))
    return type(default), False


def add_config_options(parser: argparse.ArgumentParser, cls, group_title: str = "parameters") -> None:
    """Add one option per dataclass field; values default to None (= not given on the command line)."""
    group = parser.add_argument_group(group_title, "override the defaults and the --config file")
    for field in dataclasses.fields(cls):
        elem, is_tuple = _field_kind(field)
        help_text = field.metadata.get("help", "")
        shown = field.default
        help_text = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        kwargs = {"dest": field.name, "default": None, "help": help_text}
        if elem is bool and not is_tuple:
            group.add_argument(option_name(field.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = elem
        kwargs["metavar"] = field.name.upper()
        if is_tuple:
            kwargs["nargs"] = field.metadata.get("nargs", "+")
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        group.add_argument(option_name(field.name), **kwargs)


def read_config_file(path) -> dict:
    """Read a JSON or YAML mapping of parameter names to values: the one config reader of all steps.

    .yaml/.yml files are YAML; anything else is tried as JSON, then YAML. An empty file is {}.
    """
    if not os.path.isfile(str(path)):
        raise InputError(f"config {path}: file not found")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        if str(path).lower().endswith((".yaml", ".yml")):
            raise ValueError("YAML by suffix")
        data = json.loads(text)
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:  # parse errors: one line naming the file
            raise InputError(f"config {path}: cannot parse as JSON or YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config {path}: expected a mapping of parameter names to values, found {type(data).__name__}")
    return data


def _coerce(field: dataclasses.Field, value, where: str):
    """Convert a config value to the field's type (lists become tuples)."""
    elem, is_tuple = _field_kind(field)
    if value is None:
        return None
    try:
        if is_tuple:
            values = value if isinstance(value, (list, tuple)) else [value]
            out = tuple(elem(v) for v in values)
            nargs = field.metadata.get("nargs")
            if isinstance(nargs, int) and len(out) != nargs:
                raise InputError(f"{where}: {field.name}: expected {nargs} values, got {len(out)}")
        elif elem is bool:
            if not isinstance(value, bool):
                raise TypeError("not a boolean")
            out = value
        elif elem is int and isinstance(value, float) and not value.is_integer():
            raise TypeError("not an integer")
        else:
            out = elem(value)
    except InputError:
        raise
    except (TypeError, ValueError):
        raise InputError(f"{where}: {field.name}: expected {elem.__name__}{'s' if is_tuple else ''}, "
                         f"got {value!r}") from None
    choices = field.metadata.get("choices")
    if choices:
        for item in (out if is_tuple else (out,)):
            if item not in choices:
                raise choices_message(f"{where}: {field.name}", item, choices)
    return out


def resolve_config(cls, config_path=None, overrides: dict | None = None):
    """Build the frozen dataclass: defaults < config file < overrides (None values are ignored).

    Args:
        cls: the step's frozen dataclass.
        config_path: optional JSON/YAML file.
        overrides: field name -> value (e.g. vars() of parsed arguments; unknown names ignored).

    Returns:
        An instance of `cls` (its __post_init__ validates the values).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict = {}
    if config_path:
        data = read_config_file(config_path)
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(f"{config_path}: unknown parameter(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(fields)}")
        for key, value in data.items():
            values[key] = _coerce(fields[key], value, str(config_path))
    for key, value in (overrides or {}).items():
        if key in fields and value is not None:
            values[key] = _coerce(fields[key], value, option_name(key))
    return cls(**values)


def config_to_dict(config) -> dict:
    """Plain JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_config(config, path) -> str:
    """Write the resolved config as JSON atomically; returns the path."""
    from training_data.volume_io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(config_to_dict(config), fh, indent=2)
        fh.write("\n")
    return str(path)

