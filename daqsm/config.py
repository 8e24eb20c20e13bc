"""The one config layer of every command: frozen dataclass defaults < config file < command line.

Each dataclass field is one parameter, reachable three ways with the same spelling rules:
    config file (JSON or YAML) key `learning_rate` (or `learning-rate`);
    options `--learning-rate VALUE` and `--learning_rate VALUE` (the original keys, e.g.
    `--datasets_path`, keep working);
    booleans as bare flags: `--overwrite` means true, `--no-overwrite` false, and the older
    `--overwrite true|false` (also `--overwrite=true`) still works, a positional argument after it
    or not: `ArgumentParser` reads a `true`/`false` word after any boolean option itself, so a bare
    flag never swallows the positional that follows it (every command's parser is one).
Tuples take one or several values (`--patch-size 64` or `--patch-size 64 64 48` or `[64,64,48]`).
Values are parsed like YAML scalars and converted to the field's type when the config is
resolved, so a bad value is one InputError line (exit status 2), never an argparse usage dump.
Unknown config-file keys are refused with a "did you mean"; the resolved config is written next
to the outputs (`write_config`) under the one companion name (daqsm.outputs.config_companion).

Field metadata (`dataclasses.field(metadata=...)`, or `param(default, help, ...)`):
    help:     text for --help (every option has one);
    type:     element type when the hint alone does not say (e.g. a bare `tuple`);
    nargs:    exact number of values of a tuple field;
    choices:  allowed values;
    aliases:  older names of the same parameter (e.g. ("b0",) -> `--b0` and config key b0);
    flags:    extra option strings (e.g. ("-o",));
    negation: name of an option that sets a boolean to false (e.g. "quiet" for progress);
    check:    the number rule (daqsm.validate.rule_of): "positive", "int>=1", "range>0", (0.0, 1.0), ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import types
import typing

from daqsm.errors import InputError, choices_message
from daqsm.validate import check_value, rule_of

MISSING = dataclasses.MISSING


#: the words `--flag WORD` accepts (case-insensitive), the older spelling of booleans (the YAML 1.1
#: booleans the value parser took before)
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser where every boolean option (no value: a bare flag, its `--no-` form,
    store_true) also takes the older `--flag true|false` / `--flag=true|false`.

    A bare flag takes no value, so it cannot swallow a positional argument after it; the word after
    a boolean option, when it is `true` or `false`, is read here and turned into the flag itself or
    the option of the same parameter that sets the other value (or nothing: a store_true left at its
    default). A `true`/`false` after an option that takes values stays that option's value.
    Subcommand parsers (add_subparsers) are of this class too.
    """

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._read_bool_words(args), namespace)

    def _read_bool_words(self, args: list) -> list:
        out, i = [], 0
        while i < len(args):
            token = args[i]
            if not isinstance(token, str) or token == "--":
                out.extend(args[i:])
                break
            name, eq, word = token.partition("=") if token.startswith("--") else (token, "", "")
            action = self._option_string_actions.get(name)
            if not eq:
                word = args[i + 1] if i + 1 < len(args) else None
            if action is not None and action.nargs == 0 and _sets(action) is not None and isinstance(word, str) \
                    and word.lower() in BOOL_WORDS:
                out.extend(self._bool_spelling(action, name, BOOL_WORDS[word.lower()]))
                i += 1 if eq else 2
                continue
            out.append(token)
            i += 1
        return out

    def _bool_spelling(self, action, name: str, value: bool) -> list:
        """The option strings that give `value` to the parameter of `action` (none: its default)."""
        if _sets(action) is value:
            return [name]
        for other in self._actions:
            if other.dest == action.dest and other.option_strings and _sets(other) is value:
                return [other.option_strings[0]]
        return []


def _sets(action) -> bool | None:
    """The boolean a value-less option stores (None: not a boolean option, e.g. --help)."""
    if isinstance(action, _Flag):
        return True
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool(action.const)
    if isinstance(action, argparse._StoreConstAction) and action.const in BOOL_WORDS:
        return BOOL_WORDS[action.const]
    return None


def param(default, help: str, **metadata):  # noqa: A002 - the dataclass metadata key is `help`
    """A dataclass field with its help text (and optional type / nargs / choices / aliases / flags), and
    `check`, its number rule declared once (daqsm.validate.rule_of), applied wherever a config is resolved."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def option_name(field_name: str) -> str:
    """The dashed option of a field: `learning_rate` -> `--learning-rate`."""
    return "--" + field_name.replace("_", "-")


def _spec(field: dataclasses.Field, hint) -> tuple:
    """(element type, is_tuple, exact count or None, optional) of a field."""
    optional = False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    meta = field.metadata
    if hint is tuple or origin is tuple:
        elem = meta.get("type")
        if elem is None and args:
            elem = args[0]
        if elem is None and isinstance(field.default, tuple) and field.default:
            elem = type(field.default[0])
        count = meta.get("nargs") if isinstance(meta.get("nargs"), int) else None
        if count is None and args and args[-1] is not Ellipsis:
            count = len(args)
        return elem or str, True, count, optional or field.default is None
    return meta.get("type", hint), False, None, optional or field.default is None


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _default_text(field: dataclasses.Field) -> str:
    default = field.default
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


def add_config_options(parser: argparse.ArgumentParser, cls, group_title: str | None = "parameters",
                       config_option: bool = False) -> None:
    """Add one option per dataclass field (default None = not given) and, if asked, `--config FILE`.

    `parser` must be a daqsm.config.ArgumentParser (it reads the older `--flag true|false`).
    """
    if not isinstance(parser, ArgumentParser):
        raise TypeError("add_config_options: build the parser with daqsm.config.ArgumentParser "
                        "(it reads `--flag true|false` of the boolean options)")
    if config_option:
        parser.add_argument("--config", metavar="FILE",
                            help="JSON or YAML file of parameters (the keys below); options given here override it")
    group = parser.add_argument_group(group_title, "override the defaults and the --config file") \
        if group_title else parser
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        elem, is_tuple, count, _ = _spec(field, hints[field.name])
        meta = field.metadata
        names = [field.name, *meta.get("aliases", ())]
        strings = list(meta.get("flags", ()))
        for name in names:
            for option in (option_name(name), f"--{name}"):
                if option not in strings:
                    strings.append(option)
        help_text = meta.get("help", "")
        if "choices" in meta:
            help_text += f"; one of {', '.join(map(str, meta['choices']))}"
        help_text = f"{help_text} (default: {_default_text(field)})".strip()
        metavar = "PATH" if elem is str and not meta.get("choices") and field.name.endswith(
            ("path", "output", "model", "dir")) else field.name.split("_")[-1].upper()
        if elem is bool and not is_tuple:
            # a bare flag; `--x true|false` is read by ArgumentParser (a value here would eat a positional)
            group.add_argument(*strings, dest=field.name, default=None, const="true", nargs=0, action=_Flag,
                               help=help_text)
            negations = [f"--no-{n.replace('_', '-')}" for n in names]
            if meta.get("negation"):
                negations.append(option_name(meta["negation"]))
            group.add_argument(*negations, dest=field.name, action="store_const", const="false",
                               help=argparse.SUPPRESS)
            continue
        group.add_argument(*strings, dest=field.name, default=None, metavar=metavar, help=help_text,
                           nargs="+" if is_tuple else None)


class _Flag(argparse.Action):
    """A boolean option, bare: true (`--x false` becomes its `--no-x` in ArgumentParser)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const)


def read_config_file(path) -> dict:
    """Read a JSON or YAML mapping of parameter names to values: the one config reader of all steps.

    .yaml/.yml files are YAML; anything else is tried as JSON, then YAML. An empty file is {}.
    """
    if not os.path.isfile(str(path)):
        raise InputError(f"config {path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as err:
        raise InputError(f"config {path}: expected UTF-8 text, found byte 0x{err.object[err.start]:02x} "
                         f"at offset {err.start}") from None
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


def _parse_text(value):
    """A command-line string as a YAML scalar or list (`1e-4` stays a number, `[1,2,3]` a list)."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads '1e-4' as text
            return float(parsed)
        except ValueError:
            return parsed
    return value if parsed is None and value.strip().lower() not in ("none", "null", "~") else parsed


def _scalar(field: dataclasses.Field, elem, value, where: str):
    if elem is str:
        if isinstance(value, (dict, list, tuple)):
            raise InputError(f"{where}: expected text, got {value!r}")
        return str(value)
    value = _parse_text(value)
    if elem is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if elem is int:
        if isinstance(value, float) and not math.isfinite(value):  # inf/nan: int() would raise
            raise InputError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if elem is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


def coerce(field: dataclasses.Field, hint, value, where: str):
    """Convert a command-line string (list for tuples) or a config-file value to the field's type."""
    elem, is_tuple, count, optional = _spec(field, hint)
    if isinstance(value, (list, tuple)) and len(value) == 1 and is_tuple:
        value = value[0]
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and optional:
        return None
    if value is None:
        if optional:
            return None
        raise InputError(f"{where}: a value is required")
    if is_tuple:
        if isinstance(value, str):
            value = _parse_text(value)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        flat = []
        for v in values:
            v = _parse_text(v)
            flat.extend(v if isinstance(v, list) else [v])
        out = tuple(_scalar(field, elem, v, where) for v in flat)
        if count is not None and len(out) != count:
            raise InputError(f"{where}: expected {count} values, got {len(out)}")
    else:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        out = _scalar(field, elem, value, where)
    check_value(where, rule_of(field), out)  # the field's declared rule (daqsm/validate.py)
    choices = field.metadata.get("choices")
    if choices:
        for item in (out if is_tuple else (out,)):
            if item not in choices:
                raise choices_message(where, item, choices)
    return out


def _canonical(cls) -> dict:
    """Every accepted key (field names, dashed names, aliases) -> the field name."""
    keys = {}
    for field in dataclasses.fields(cls):
        for name in (field.name, *field.metadata.get("aliases", ())):
            keys[name] = keys[name.replace("_", "-")] = field.name
    return keys


def unknown_key(where: str, key: str, valid) -> InputError:
    from daqsm.errors import did_you_mean

    return InputError(f"{where}: unknown key {key!r}{did_you_mean(key, list(valid))}")


def file_values(cls, config_path) -> dict:
    """The config file's values under field names (aliases and dashed keys accepted, unknown refused)."""
    keys = _canonical(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in read_config_file(config_path).items():
        if key not in keys:
            raise unknown_key(f"config {config_path}", key, names)
        out[keys[key]] = value
    return out


def resolve_config(cls, config_path=None, overrides: dict | None = None, spell=option_name):
    """Build the frozen dataclass: defaults < config file < overrides (None values are ignored).

    Args:
        cls: the step's frozen dataclass.
        config_path: optional JSON/YAML file.
        overrides: field name -> value (e.g. vars() of parsed arguments; other names ignored).
        spell: how an error names an override (default `--dashed-name`).

    Returns:
        An instance of `cls` (its __post_init__ validates the values).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    values: dict = {}
    if config_path:
        for key, value in file_values(cls, config_path).items():
            values[key] = coerce(fields[key], hints[key], value, f"config {config_path}: {key}")
    for key, value in (overrides or {}).items():
        if key in fields and value is not None:
            values[key] = coerce(fields[key], hints[key], value, spell(key))
    return cls(**values)


def input_option(field_name: str) -> str:
    """How `require` names a field by default: the output as `-o/--output`, others as option_name."""
    return "-o/--output" if field_name == "output" else option_name(field_name)


def require(config, names, spell=input_option, alternative: str | None = None) -> None:
    """Refuse the first empty one of `names` (fields) of a resolved config: the one wording of a missing
    input, "OPTION: required (option or config key 'KEY'), got none[; or give ALTERNATIVE]". Checked
    after the config file was read, since a file may hold the inputs (no argparse `required`)."""
    for name in names:
        value = getattr(config, name)
        if value is None or (isinstance(value, (str, tuple, list)) and not value):  # an empty list too
            tail = f"; or give {alternative}" if alternative else ""
            raise InputError(f"{spell(name)}: required (option or config key {name!r}), got none{tail}")


def config_to_dict(config) -> dict:
    """Plain JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_config(config, path, sort_keys: bool = False) -> str:
    """Write the resolved config as JSON atomically; returns the path."""
    from daqsm.outputs import write_text_atomic

    write_text_atomic(path, json.dumps(config_to_dict(config), indent=2, sort_keys=sort_keys) + "\n")
    return str(path)
