"""Config of steps 4 and 5 and inference: the one config layer of daqsm/config.py.

Kept as the names these scripts (and their tests) import: `add_config_arguments` adds `--config`
and one option per field; `resolve_config` applies defaults < config file < options.
"""
from __future__ import annotations

import argparse

from daqsm.config import add_config_options, file_values, read_config_file, write_config
from daqsm.config import resolve_config as _resolve
from daqsm.errors import InputError


def load_config_file(path) -> dict:
    """Read a JSON or YAML mapping (daqsm.config.read_config_file)."""
    return read_config_file(path)


def add_config_arguments(parser: argparse.ArgumentParser, cls, flags: dict | None = None,
                         helps: dict | None = None) -> None:
    """`--config FILE` plus one option per dataclass field (daqsm.config).

    `flags` and `helps` are accepted for older callers; new code puts them in the field metadata.
    """
    if flags or helps:
        raise TypeError("put flags and help texts in the dataclass field metadata (step_config.param)")
    add_config_options(parser, cls, group_title=None, config_option=True)


def resolve_config(cls, args: argparse.Namespace | None = None, config_path=None, **overrides):
    """Defaults, then the config file (`config_path` or args.config), then the given options.

    Raises:
        InputError: unknown key ("did you mean"), or a value of the wrong type.
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in names:
            raise InputError(f"unknown config key {key!r}")
    config_path = config_path or (getattr(args, "config", None) if args is not None else None)
    values = dict(vars(args)) if args is not None else {}
    values.update(overrides)
    return _resolve(cls, config_path, values, spell=key_option)


def key_option(key: str) -> str:
    """How steps 4-5 and inference name a value in errors: `--key`, the original scripts' spelling of
    the config key (which is also the Python API's keyword); `--dashed-key` is accepted as well."""
    return "--" + key


def write_resolved_config(config, path) -> str:
    """Write a config dataclass as JSON (atomically); returns the path."""
    return write_config(config, path, sort_keys=True)


__all__ = ["add_config_arguments", "file_values", "key_option", "load_config_file", "resolve_config",
           "write_resolved_config"]
