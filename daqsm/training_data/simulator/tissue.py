"""Per-label tissue properties at 7 T (RC2 label convention): susceptibility, M0 and R2*.

Labels (QSM Challenge 2.0, Marques et al., MRM 2021;86:526): 1 caudate, 2 globus pallidus,
3 putamen, 4 red nucleus, 5 dentate nucleus, 6 substantia nigra + subthalamic nucleus, 7 thalamus,
8 white matter, 9 grey matter, 10 CSF, 11 blood (veins), 12 fat, 13 bone, 14 air, 15 muscle,
16 calcification. 0 (unlabelled) is treated as air.

Susceptibility (ppm): `CHIREF_PPM` are the RC2 `chiref` values (SusceptibilityValues.mat of the
RC2 phantom). Variants:
    Sim2  chiref as is (GM - WM = 50 ppb) and the calcification;
    Sim1  lower contrast: the WM and GM deviations from CSF are scaled by `gm_wm_contrast`
          (default 0.5: WM -0.0055, GM 0.0195 ppm, GM - WM = 25 ppb); no calcification (the
          simulator relabels it to the surrounding tissue).

Magnitude: M0 is the spoiled-GRE steady state of the RC2 protocol (TR 50 ms, flip 15 deg),
PD * sin(a) (1 - E1) / (1 - cos(a) E1), E1 = exp(-TR/T1), normalised so that WM = 1; the T1, PD and
R2* values at 7 T below are rounded literature-typical values (design choices, documented here,
not fitted to any data set). R2* carries the texture as well: dR2*/dchi = `R2STAR_HZ_PER_PPM`
(iron couples the two; ~350 Hz/ppm at 7 T is a rounded design value).
"""
from __future__ import annotations

import math

import numpy as np

from daqsm.errors import choices_message

LABEL_NAMES = {
    1: "caudate", 2: "globus pallidus", 3: "putamen", 4: "red nucleus", 5: "dentate nucleus",
    6: "substantia nigra + STN", 7: "thalamus", 8: "white matter", 9: "grey matter", 10: "CSF",
    11: "blood", 12: "fat", 13: "bone", 14: "air", 15: "muscle", 16: "calcification",
}
CALCIFICATION = 16
AIR = 14
#: Labels that count as brain tissue (those that may lie in the brain mask).
BRAIN_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16)

#: RC2 reference susceptibilities (ppm), label -> chiref.
CHIREF_PPM = {1: 0.044, 2: 0.1305, 3: 0.038, 4: 0.10, 5: 0.152, 6: 0.111, 7: 0.02, 8: -0.03,
              9: 0.02, 10: 0.019, 11: 0.19, 12: 0.019, 13: -2.1, 14: 9.2, 15: 0.0, 16: -3.3}

#: Texture standard deviation per label (ppb), in the 5-15 ppb range of docs/physics.md.
TEXTURE_STD_PPB = {1: 10.0, 2: 15.0, 3: 10.0, 4: 12.0, 5: 15.0, 6: 12.0, 7: 8.0, 8: 8.0,
                   9: 10.0, 10: 5.0, 11: 10.0}
TEXTURE_STD_RANGE_PPB = (5.0, 15.0)

# 7 T relaxation and proton density (rounded literature-typical values; design choices).
T1_S = {1: 1.7, 2: 1.2, 3: 1.6, 4: 1.1, 5: 1.2, 6: 1.2, 7: 1.5, 8: 1.2, 9: 2.0, 10: 4.4,
        11: 2.1, 12: 0.6, 13: 0.5, 14: 1.0, 15: 1.6, 16: 0.5}
PD = {1: 0.82, 2: 0.75, 3: 0.80, 4: 0.75, 5: 0.75, 6: 0.75, 7: 0.75, 8: 0.69, 9: 0.80, 10: 1.0,
      11: 0.85, 12: 0.90, 13: 0.05, 14: 0.0, 15: 0.70, 16: 0.10}
R2STAR_HZ = {1: 50.0, 2: 90.0, 3: 60.0, 4: 70.0, 5: 75.0, 6: 80.0, 7: 45.0, 8: 37.0, 9: 30.0,
             10: 10.0, 11: 80.0, 12: 40.0, 13: 300.0, 14: 0.0, 15: 35.0, 16: 150.0}
R2STAR_HZ_PER_PPM = 350.0
TR_S = 0.050
FLIP_DEG = 15.0

VARIANTS = ("Sim1", "Sim2")


def check_variant(variant: str) -> str:
    """Return the canonical variant name ('Sim1' or 'Sim2'); unknown names are an InputError."""
    for name in VARIANTS:
        if str(variant).lower() == name.lower():
            return name
    raise choices_message("variant", variant, VARIANTS)


def label_chi_ppm(variant: str = "Sim2", gm_wm_contrast: float = 0.5, chiref_ppm=None) -> dict[int, float]:
    """Susceptibility per label (ppm) for a variant (module doc); `chiref_ppm` replaces CHIREF_PPM."""
    variant = check_variant(variant)
    reference = dict(chiref_ppm or CHIREF_PPM)
    chi = dict(reference)
    if variant == "Sim1":
        csf = reference[10]
        for label in (8, 9):
            chi[label] = csf + gm_wm_contrast * (reference[label] - csf)
    return chi


def steady_state_m0(pd: float, t1_s: float, tr_s: float = TR_S, flip_deg: float = FLIP_DEG) -> float:
    """Spoiled GRE steady-state signal PD sin(a)(1 - E1)/(1 - cos(a) E1), E1 = exp(-TR/T1)."""
    a = math.radians(flip_deg)
    e1 = math.exp(-tr_s / t1_s)
    return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1)


def _lookup(table: dict[int, float], default: float = 0.0) -> np.ndarray:
    """Dense lookup array indexed by label (0..16)."""
    out = np.full(17, default, dtype=np.float32)
    for label, value in table.items():
        out[label] = value
    return out


def label_m0() -> dict[int, float]:
    """Effective M0 per label (steady state, WM = 1)."""
    wm = steady_state_m0(PD[8], T1_S[8])
    return {label: steady_state_m0(PD[label], T1_S[label]) / wm for label in PD}


def tissue_maps(labels: np.ndarray, mask: np.ndarray, texture_ppm: np.ndarray | None = None,
                variant: str = "Sim2", gm_wm_contrast: float = 0.5, chiref_ppm=None):
    """Susceptibility, M0 and R2* maps from a label volume.

    Args:
        labels: int (x, y, z) RC2 labels 0..16.
        mask: bool (x, y, z) brain mask; chi is zero outside it (only brain tissue is a source).
        texture_ppm: float32 (x, y, z) texture added to chi and (scaled) to R2*, or None.
        variant: 'Sim1' or 'Sim2' (label values, module doc).
        gm_wm_contrast: Sim1 scaling of the WM/GM deviations from CSF.
        chiref_ppm: per-label reference values replacing CHIREF_PPM (e.g. read from the RC2 .mat).

    Returns:
        chi_ppm, m0, r2star_hz: float32 (x, y, z) each.
    """
    labels = np.asarray(labels)
    chi = _lookup(label_chi_ppm(variant, gm_wm_contrast, chiref_ppm))[labels]
    m0 = _lookup(label_m0())[labels]
    r2star = _lookup(R2STAR_HZ)[labels]
    if texture_ppm is not None:
        chi += texture_ppm
        r2star += np.float32(R2STAR_HZ_PER_PPM) * texture_ppm
        np.maximum(r2star, 1.0, out=r2star, where=m0 > 0)
    chi *= mask
    return chi, m0, r2star
