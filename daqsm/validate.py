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
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


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
            else:
                CHECKS[rule](spell(key), item)
