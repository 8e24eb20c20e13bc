"""Fine-tuning's TV weight lambda_tv chosen per case from the data alone (RC2 stage 1), in network units.

Why a rule: a fixed lambda does not transfer (docs: "A regularisation weight does not transfer"). The
original's 0.002 belonged to its own TV sum, voxel size and weighting; here it is ~20x too weak on the
built-in 3 mm cases, and the weight that is right changes with the noise, the voxel size, B0 and TE.

The rule: nonlinear TV (daqsm.training_data.tv_inversion.ndi_tv, the fast classic solver of the *same*
objective: same field, weight W, dipole kernel, FFT padding and phase scale) is run over a log grid of
alpha (daqsm.qc.tv_alpha.scan_alpha, warm-started from the largest alpha down), alpha is
picked by the discrepancy rule with the model-error floor (tv_alpha.choose_alpha_discrepancy), and
mapped to the network's units exactly (`lambda_from_alpha`).

The mapping, written out. With u = s chi (s: phase scale, rad/ppm), nonlinear TV minimises
    J(u) = R(u) + alpha sum_i sum_voxels |G_i u| / h_i,    R = sum_mask W^2 |e^{i D u} - e^{i s f}|^2
and fine-tuning minimises (daqsm.network_model.losses; N = mask voxels, c = label_scale, ref = 100)
    L(chi) = (ref / s)^2 R / N  +  lambda c sum_i sum_pairs |Delta_i chi| / N.
Multiplying J by (ref / s)^2 / N gives L term by term when
    lambda = alpha ref^2 / (s c h),
so both objectives have the same minimiser (up to the TV of the mask's edge, which only NLTV counts).
Anisotropic voxels: the network's TV weighs the axes equally, NLTV by 1 / h_i; the mean of 1 / h_i
replaces 1 / h. The built-in 3 mm cases (7 T, TE 12 ms, s = 22.47, c = 100/3): lambda = 4.45 alpha, the
ratio measured in issue 21 (alpha ~ 0.225 lambda). At 1 mm the same alpha gives a 3x larger lambda.

Two targets, in network NDI units (noise residual E, residual floor R_floor: unfitted noise plus model
error):
- the weight's, max(kappa E, 1.3 R_floor) (kappa = `residual_factor`): alpha is the largest whose scan
  residual stays within it. kappa > 1 counts the model error the floor does not see (the true chi's own
  residual is 2.1-12.6 E on every case measured, benchmarks/results_baselines.md);
- the stop's, max(E, 1.3 R_floor), whatever kappa (`LambdaChoice.ndi_target`): the stopping rule
  (daqsm.network_model.stopping) stops when the network has fitted the data to the noise and the floor.
  Not kappa E: Adam fits the data before it smooths the map, so the network's NDI crosses kappa E long
  before its rmse stops falling (RC2-like Sim2Snr1 at 1 mm, kappa 3: NDI below 3 E at iteration 161,
  rmse 42.44 there and still falling to 39.17 at 250; benchmarks/results_ablation.md, session 13).

Where the rule cannot decide (no 2x2x2 block inside the mask for the noise estimate, or a residual
curve flat within 5 % over the grid) `FALLBACK_ALPHA` is mapped instead and the note says why.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from daqsm.errors import InputError
from daqsm.qc.tv_alpha import RESIDUAL_FACTOR

#: Phase scale of the original NDI argument (rad/ppm); the NDI normalisation reference (losses.py).
REFERENCE_RAD_PER_PPM = 100.0
#: Iterations per alpha of the scan (warm-started): enough for the residual ordering the rule reads. On the
#: four built-in 3 mm cases 20 picks the alpha 60 picks (10 does not on two of them) in 1/2-1/5 of the time
#: (benchmarks/results_finetune.md, "Scan iterations").
SCAN_ITERATIONS = 20
#: alpha mapped when the rule cannot decide: the geometric middle of tv_alpha.ALPHA_GRID's upper half,
#: inside the best alphas measured on the built-in cases (3 mm: 1e-2; test phantom: 3e-3 - 2e-2).
FALLBACK_ALPHA = 1e-2
#: A residual curve whose largest value is within this factor of its smallest does not decide.
FLAT_RATIO = 1.05


def lambda_from_alpha(alpha: float, phase_rad_per_ppm: float, voxel_size_mm, label_scale: float,
                      reference_rad_per_ppm: float = REFERENCE_RAD_PER_PPM) -> float:
    """Network lambda_tv with the same minimiser as nonlinear TV at `alpha` (module docstring).

    Args:
        alpha: NLTV weight (phase units, TV per mm, sums over voxels).
        phase_rad_per_ppm: s = 2 pi gamma_bar B0 TE, rad/ppm.
        voxel_size_mm: (3,) mm.
        label_scale: network units per ppm (the model's `label_scale`).
        reference_rad_per_ppm: NDI normalisation reference (losses.NDI_REFERENCE_RAD_PER_PPM).

    Returns:
        lambda_tv in the units of daqsm.network_model.losses.finetune_loss.
    """
    inv_h = float(np.mean([1.0 / float(h) for h in voxel_size_mm]))
    return float(alpha) * reference_rad_per_ppm**2 * inv_h / (float(phase_rad_per_ppm) * float(label_scale))


def alpha_from_lambda(lambda_tv: float, phase_rad_per_ppm: float, voxel_size_mm, label_scale: float,
                      reference_rad_per_ppm: float = REFERENCE_RAD_PER_PPM) -> float:
    """Inverse of `lambda_from_alpha`."""
    return float(lambda_tv) / lambda_from_alpha(1.0, phase_rad_per_ppm, voxel_size_mm, label_scale,
                                                reference_rad_per_ppm)


def residual_to_ndi(residual: float, phase_rad_per_ppm: float, mask_voxels: int,
                    reference_rad_per_ppm: float = REFERENCE_RAD_PER_PPM) -> float:
    """NLTV's summed residual R as the network's normalised NDI term: (ref / s)^2 R / N."""
    return (reference_rad_per_ppm / float(phase_rad_per_ppm)) ** 2 * float(residual) / max(int(mask_voxels), 1)


@dataclass(frozen=True)
class LambdaChoice:
    """The TV weight fine-tuning uses and why.

    Attributes:
        lambda_tv: network units.
        rule: 'discrepancy' (decided), 'fallback' (could not decide) or 'given' (--lambda-tv X).
        alpha: the NLTV alpha it maps from (None when given).
        ndi_target: the stop's discrepancy target max(E, 1.3 R_floor) in network NDI units, independent of
            kappa (module docstring; None when not scanned). The weight's own target is in the evidence
            ('weight_target_ndi').
        note: one line, why this lambda.
        evidence: the scan (alphas, residuals in NDI units, noise, floor, seconds) for the sidecar.
    """

    lambda_tv: float
    rule: str
    alpha: float | None
    ndi_target: float | None
    note: str
    evidence: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"lambda_tv": self.lambda_tv, "rule": self.rule, "alpha": self.alpha, "ndi_target": self.ndi_target,
                "note": self.note, **self.evidence}


def parse_lambda_tv(value) -> float | None:
    """'auto' -> None (choose per case); a number (or its text) -> that lambda; else an InputError."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"lambda_tv: expected 'auto' or a non-negative number, got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise InputError(f"lambda_tv: expected 'auto' or a non-negative number, got {value!r}")
    return number


def _nltv_params(phase_rad_per_ppm: float, iterations: int):
    """NDITVParams whose phase scale is `phase_rad_per_ppm` (B0 and TE enter only as their product)."""
    from daqsm.training_data.tv_inversion import NDITVParams
    from daqsm.training_data.units import rad_per_ppm

    return NDITVParams(b0_tesla=float(phase_rad_per_ppm) / rad_per_ppm(1.0, 1.0), te_s=1.0, iterations=iterations)


def choose_lambda_tv(field_ppm, mask, weight, voxel_size_mm, b0_dir, phase_rad_per_ppm: float, label_scale: float,
                     dipole_pad="auto", alphas=None, iterations: int = SCAN_ITERATIONS,
                     progress: bool = False, residual_factor: float = RESIDUAL_FACTOR) -> LambdaChoice:
    """The no-truth lambda_tv of one volume (module docstring).

    Args:
        field_ppm: float32 (x, y, z) local field in ppm (the box fine-tuning sees).
        mask: (x, y, z) 0/1. weight: (x, y, z) NDI weight W, or None (the mask).
        voxel_size_mm, b0_dir, dipole_pad: geometry and FFT padding of the fine-tuning's dipole model.
        phase_rad_per_ppm: the NDI phase scale s.
        label_scale: the model's network units per ppm.
        alphas: NLTV grid (default tv_alpha.ALPHA_GRID).
        iterations: ADMM iterations per alpha.
        progress: a progress bar over the scan (stderr).
        residual_factor: kappa of the weight's target max(kappa E, 1.3 R_floor) (tv_alpha.choose_alpha_discrepancy's
            tau): 1 is Morozov's noise level; larger counts model error the floor does not see. The stop's
            target does not depend on it.

    Returns:
        LambdaChoice.
    """
    from daqsm.qc import tv_alpha as nltv_alpha

    start = time.perf_counter()
    mask = np.asarray(mask) > 0
    voxels = int(mask.sum())

    def to_lambda(alpha):
        return lambda_from_alpha(alpha, phase_rad_per_ppm, voxel_size_mm, label_scale)

    try:
        scan = nltv_alpha.scan_alpha(field_ppm, mask, weight, voxel_size_mm, b0_dir,
                                     _nltv_params(phase_rad_per_ppm, iterations), alphas or nltv_alpha.ALPHA_GRID,
                                     pad=dipole_pad, keep_maps=False, progress=progress)
    except InputError as err:  # no noise estimate (no 2x2x2 block in the mask)
        lam = to_lambda(FALLBACK_ALPHA)
        return LambdaChoice(lam, "fallback", FALLBACK_ALPHA, None,
                            f"lambda_tv {lam:.4g} (fallback alpha {FALLBACK_ALPHA:g}): the rule cannot decide ({err})")
    ndi = [residual_to_ndi(r, phase_rad_per_ppm, voxels) for r in scan.residual]
    evidence = {"alphas": list(scan.alphas), "ndi_per_alpha": ndi, "noise_ppm": scan.noise_ppm,
                "noise_ndi": residual_to_ndi(scan.noise_residual, phase_rad_per_ppm, voxels),
                "scan_iterations": list(scan.iterations), "residual_factor": residual_factor,
                "seconds": round(time.perf_counter() - start, 1)}
    if max(scan.residual) <= FLAT_RATIO * min(scan.residual):
        lam = to_lambda(FALLBACK_ALPHA)
        return LambdaChoice(lam, "fallback", FALLBACK_ALPHA, None,
                            f"lambda_tv {lam:.4g} (fallback alpha {FALLBACK_ALPHA:g}): the rule cannot decide "
                            f"(residual flat within {100 * (FLAT_RATIO - 1):.0f} % over alpha "
                            f"{scan.alphas[0]:.3g}-{scan.alphas[-1]:.3g})", evidence)
    choice = nltv_alpha.choose_alpha_discrepancy(scan, tau=residual_factor)
    stop_target = nltv_alpha.choose_alpha_discrepancy(scan, tau=1.0).target  # kappa-free (module docstring)
    evidence["weight_target_ndi"] = residual_to_ndi(choice.target, phase_rad_per_ppm, voxels)
    lam = to_lambda(choice.alpha)
    note = f"lambda_tv {lam:.4g} from NLTV alpha {choice.alpha:.3g} by the discrepancy rule ({choice.note})"
    return LambdaChoice(lam, "discrepancy", choice.alpha, residual_to_ndi(stop_target, phase_rad_per_ppm, voxels),
                        note, evidence)
