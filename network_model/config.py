"""Step configs: frozen dataclass defaults <- config file (JSON/YAML) <- `--key value` overrides.

Every dataclass field is a command-line option `--key value` (also spelled with dashes,
`--learning-rate` for `learning_rate`; values parsed like YAML scalars:
`--lr 1e-4`, `--patch_size [64,64,64]`, `--resume false`), unknown keys in a config file are
rejected with a "did you mean", and the resolved config is written next to the outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from training_data.errors import InputError
from training_data.volume_io import atomic_path


def load_config_file(path) -> dict:
    """Read a JSON or YAML mapping (training_data.step_config.read_config_file)."""
    from training_data.step_config import read_config_file

    return read_config_file(path)


def add_config_arguments(parser: argparse.ArgumentParser, cls, flags: dict | None = None,
                         helps: dict | None = None) -> None:
    """Add `--config` and one `--key` option per dataclass field (default None = not given).

    Args:
        parser: the script's parser.
        cls: the frozen config dataclass.
        flags: extra option strings per field, e.g. {"output": ["-o"]}.
        helps: help text per field (the default value is appended).
    """
    flags, helps = flags or {}, helps or {}
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML config file; options given here override it")
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        text = helps.get(f.name, "")
        # a bare boolean option means true (`--overwrite`); `--overwrite false` still works
        as_flag = {"nargs": "?", "const": "true"} if f.type in (bool, "bool") else {}
        # the dashed spelling too (`--learning-rate`), as in steps 1-3; config keys keep underscores
        dashed = [f"--{f.name.replace('_', '-')}"] if "_" in f.name else []
        parser.add_argument(*flags.get(f.name, []), f"--{f.name}", *dashed, dest=f.name, default=None, **as_flag,
                            metavar=f.name.split("_")[-1].upper() if f.name != "output" else "PATH",
                            help=f"{text} (default: {default})".strip())


def resolve_config(cls, args: argparse.Namespace | None = None, config_path=None, **overrides):
    """Build the config: dataclass defaults, then the config file, then command-line values.

    Raises:
        InputError: unknown key, or a value of the wrong type.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict = {}
    config_path = config_path or (getattr(args, "config", None) if args is not None else None)
    if config_path:
        file_values = load_config_file(config_path)
        for key in file_values:
            if key not in names:
                import difflib

                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise InputError(f"config {config_path}: unknown key {key!r}{hint}")
        values.update(file_values)
    if args is not None:
        values.update({k: getattr(args, k) for k in names if getattr(args, k, None) is not None})
    for key in overrides:
        if key not in names:
            raise InputError(f"unknown config key {key!r}")
    values.update(overrides)
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def write_resolved_config(config, path) -> str:
    """Write a config dataclass as JSON (atomically); returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(config), fh, indent=2, sort_keys=True)
            fh.write("\n")
    return str(path)


def _coerce(key: str, value, hint):
    """Convert a CLI string or a file value to the field's type (int, float, bool, str, tuple, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return _coerce(key, value, candidate)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0])
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"config key {key!r}: expected text, got {value!r}")
        return str(value)
    if isinstance(value, str) and hint in (int, float):
        try:  # YAML 1.1 reads '1e-4' as text
            value = float(value) if hint is float or not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise InputError(f"config key {key!r}: expected a number, got {value!r}") from None
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"config key {key!r}: cannot parse {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise InputError(f"config key {key!r}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] * (len(args) if args and args[-1] is not Ellipsis else 1)
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise InputError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
        item = args[0] if args else float
        return tuple(_coerce(key, v, item) for v in value)
    return value
