"""All unit conversions of the project in one place: field maps in Hz or radians -> ppm of B0.

Units:
    susceptibility chi: ppm; local field: ppm of B0 (dimensionless x 1e-6);
    phase: radians accumulated at echo time TE; B0 in tesla, TE in seconds.
"""
from __future__ import annotations

import math

import numpy as np

from daqsm.errors import InputError, choices_message

#: Reduced gyromagnetic ratio of 1H, gamma / 2 pi, in Hz per tesla (CODATA 2018: 42.577 478 518 MHz/T).
GAMMA_BAR_HZ_PER_T = 42.577478e6

FIELD_UNITS = ("ppm", "ppb", "hz", "rad")


def hz_per_ppm(b0_tesla: float) -> float:
    """Frequency offset in Hz of 1 ppm at B0 (7 T: 298.04 Hz/ppm)."""
    _check_positive("b0_tesla", b0_tesla)
    return GAMMA_BAR_HZ_PER_T * b0_tesla * 1e-6


def rad_per_ppm(b0_tesla: float, te_s: float) -> float:
    """Phase in radians that 1 ppm accumulates at echo time TE: 2 pi gamma_bar B0 TE 1e-6.

    At 3 T and TE = 25 ms this is 20.06 rad/ppm.
    """
    _check_positive("te_s", te_s)
    return 2.0 * math.pi * hz_per_ppm(b0_tesla) * te_s


def to_ppm(field, unit: str, b0_tesla: float | None = None, te_s: float | None = None):
    """Convert a field map to ppm of B0.

    Args:
        field: array, local field in `unit`.
        unit: 'ppm', 'ppb', 'hz' (needs b0_tesla) or 'rad' (needs b0_tesla and te_s).
        b0_tesla: main field strength in tesla.
        te_s: echo time in seconds (phase input only).

    Returns:
        float32 array in ppm.
    """
    unit_key = str(unit).lower()
    if unit_key not in FIELD_UNITS:
        raise choices_message("units", unit, FIELD_UNITS)
    field = np.asarray(field, dtype=np.float32)
    if unit_key == "ppm":
        return field
    if unit_key == "ppb":
        return field * np.float32(1e-3)
    if b0_tesla is None:
        raise InputError(f"units {unit!r}: B0 is needed to convert to ppm (give --b0 in tesla)")
    if unit_key == "hz":
        return field / np.float32(hz_per_ppm(b0_tesla))
    if te_s is None:
        raise InputError("units 'rad': the echo time is needed to convert phase to ppm (give --te in seconds)")
    return field / np.float32(rad_per_ppm(b0_tesla, te_s))


def _check_positive(name: str, value) -> None:
    if value is None or not np.isfinite(value) or value <= 0:
        raise InputError(f"{name}: expected a positive finite number, got {value!r}")
