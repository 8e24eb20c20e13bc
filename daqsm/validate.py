"""Checks of numeric options against their meaning, shared by every command's option resolution.

Each check takes the option's name (as the user typed it) and its value, raises InputError with
one line "NAME: expected ..., got VALUE" and returns the value. `check_numbers` applies a table of
rules to a config dataclass (or any object with attributes), skipping None values (= not given).
"""
from __future__ import annotations

import math
from typing import Iterable

from daqsm.errors import InputError


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a number, got {value!r}") from None
    return float(value)


def finite(name: str, value):
    """A finite number (no NaN, no Inf)."""
    if not math.isfinite(_number(name, value)):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return value


def positive(name: str, value):
    """A finite number > 0."""
    finite(name, value)
    if not float(value) > 0:
        raise InputError(f"{name}: expected a positive number, got {value!r}")
    return value


def non_negative(name: str, value):
    """A finite number >= 0."""
    finite(name, value)
    if not float(value) >= 0:
        raise InputError(f"{name}: expected a number >= 0, got {value!r}")
    return value


def in_range(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """A finite number in [low, high] (an open end excludes its bound)."""
    finite(name, value)
    v = float(value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{name}: expected a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return value


def integer_at_least(name: str, value, minimum: int = 1):
    """An integer >= minimum."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


# The one table of physical ranges: every command, config file and daqsm-check uses it (issue 23).
# quantity: (low, high, low_open, high_open, unit)
RANGES = {
    "b0_tesla": (0.0, 20.0, True, False, "tesla"),
    "te_s": (0.0, 1.0, True, True, "seconds"),
    "voxel_size_mm": (0.05, 20.0, False, False, "mm"),
    "seed": (0, 2**32 - 1, False, False, "(an integer seed)"),
    "pad": (0, 1024, False, False, "voxels"),
}
# config field names -> their quantity (the target's B0 is a B0, a baseline's voxel_size a voxel size)
QUANTITY_OF = {"b0_tesla": "b0_tesla", "target_b0_tesla": "b0_tesla", "te_s": "te_s", "target_te_s": "te_s",
               "voxel_size_mm": "voxel_size_mm", "voxel_size": "voxel_size_mm", "seed": "seed"}


def quantity(name: str, kind: str, value):
    """Check `value` against the table's range for `kind` (see RANGES); returns it."""
    low, high, low_open, high_open, unit = RANGES[kind]
    if kind in ("seed", "pad"):
        integer_at_least(name, value, low)
        if int(value) > high:
            raise InputError(f"{name}: expected an integer in [{low}, {high}] {unit}, got {value!r}")
        return value
    try:
        return in_range(name, value, low, high, low_open=low_open, high_open=high_open)
    except InputError as err:
        raise InputError(f"{err} ({unit})") from None


def b0_direction(name: str, value):
    """Three finite numbers, not all zero (a unit vector after normalising)."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        finite(name, item)
    if len(items) != 3 or not any(float(v) != 0 for v in items):
        raise InputError(f"{name}: expected 3 finite numbers, not all zero, got {value!r}")
    return value


def check_field_ranges(config, spell=lambda key: key) -> None:
    """The table's ranges for every field of `config` named in QUANTITY_OF (None = not given)."""
    import dataclasses

    for field in dataclasses.fields(config):
        kind = QUANTITY_OF.get(field.name)
        value = getattr(config, field.name)
        if kind is not None and value is not None:
            for item in value if isinstance(value, (tuple, list)) else (value,):
                quantity(spell(field.name), kind, item)
        elif field.name in ("b0_dir", "target_b0_dir") and value is not None:
            b0_direction(spell(field.name), value)


CHECKS = {"finite": finite, "positive": positive, "non_negative": non_negative, "int>=1": integer_at_least,
          "int>=0": lambda n, v: integer_at_least(n, v, 0)}


def check_numbers(config, rules: dict, spell=lambda key: key) -> None:
    """Apply {field: check name or (low, high)} to `config`'s attributes; None values are skipped.

    Tuples are checked element by element. `spell(field)` gives the name shown (e.g. `--d0`).
    """
    for key, rule in rules.items():
        value = getattr(config, key, None)
        if value is None:
            continue
        items: Iterable = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(rule, tuple):
                in_range(spell(key), item, *rule)
            elif rule in RANGES:
                quantity(spell(key), rule, item)
            else:
                CHECKS[rule](spell(key), item)
