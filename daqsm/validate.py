"""Checks of numeric options against their meaning, shared by every command's option resolution.

Each check takes the option's name (as the user typed it) and its value, raises InputError with
one line "NAME: expected ..., got VALUE" and returns the value. The number rules of the steps are
declared once, on their config fields (`param(default, help, check=RULE)`, daqsm/config.py), and
applied where a config is resolved (daqsm.config.coerce, so options, config files and the Python API
alike) or to a whole instance by `check_config`; physical quantities name the one RANGES table.
"""
from __future__ import annotations

import math

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
               "voxel_size_mm": "voxel_size_mm", "voxel_size": "voxel_size_mm", "seed": "seed",
               "b0_dir": "b0_dir", "target_b0_dir": "b0_dir", "target_voxel_size_mm": "voxel_size_mm"}


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
        raise InputError(f"{name}: expected a B0 direction, a non-zero vector of 3 finite numbers, got {value!r}")
    return value


def ordered_range(name: str, value, low_open: bool = True):
    """Two finite numbers (min, max) with 0 < min <= max (low_open) or 0 <= min <= max: a range to draw from."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    bound = "0 < min" if low_open else "0 <= min"
    if len(items) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  for v in items):
        raise InputError(f"{name}: expected a range (min, max) with {bound} <= max, got {value!r}")
    low, high = (float(v) for v in items)
    if not (low <= high and (low > 0 if low_open else low >= 0)):
        raise InputError(f"{name}: expected a range (min, max) with {bound} <= max, got {value!r}")
    return value


CHECKS = {"finite": finite, "positive": positive, "non_negative": non_negative, "int>=1": integer_at_least,
          "int>=0": lambda n, v: integer_at_least(n, v, 0)}
#: rules on the whole tuple (not element by element)
WHOLE = {"b0_dir": b0_direction, "range>0": ordered_range,
         "range>=0": lambda n, v: ordered_range(n, v, low_open=False)}


def rule_of(field) -> object:
    """The number rule declared on a config field (`param(..., check=RULE)`), else its quantity by name.

    RULE: a key of RANGES (a physical quantity of the one table), of CHECKS (each element), of WHOLE
    (the tuple together: a B0 direction, an ordered (min, max) range), or (low, high) inclusive, or
    (low, high, low_open, high_open).
    A field named after a quantity (`b0_tesla`, `te_s`, `voxel_size_mm`, `seed`, ...; QUANTITY_OF) has
    that quantity's range without a declaration: the unit in the name says what it is.
    """
    return field.metadata.get("check") or QUANTITY_OF.get(field.name)


def check_value(name: str, rule, value):
    """Apply one rule (see rule_of) to `value`, element by element for a tuple/list; None passes."""
    if value is None or rule is None:
        return value
    if isinstance(rule, str) and rule in WHOLE:  # the numbers together
        return WHOLE[rule](name, value)
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(rule, tuple):
            low, high, *open_ends = rule
            in_range(name, item, low, high, **dict(zip(("low_open", "high_open"), open_ends)))
        elif rule in RANGES:
            quantity(name, rule, item)
        else:
            CHECKS[rule](name, item)
    return value


def check_config(config, spell=lambda key: key) -> None:
    """Every declared rule of a config dataclass instance (what the config layer checks on each given value)."""
    import dataclasses

    from daqsm.errors import choices_message

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        check_value(spell(field.name), rule_of(field), value)
        choices = field.metadata.get("choices")
        if choices and value is not None:  # a config built without the config layer
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if item not in choices:
                    raise choices_message(spell(field.name), item, choices)
