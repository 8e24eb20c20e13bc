"""When to stop fine-tuning (step 5) without ground truth: the discrepancy principle, else a flat loss.

Fine-tuning minimises NDI + lambda_tv * TV on one measured field. Run long enough, the network
fits the noise of the field too; the discrepancy principle (Morozov) stops at the first iterate
whose data residual is as small as the noise alone would leave. Here:

    noise level   sigma_w: std of W * noise of the field (ppm), estimated from the data
                  (daqsm.qc.noise.estimate_noise_ppm);
    noise energy  E = (ref / s)^2 * 2 (1 - exp(-s^2 sigma_w^2 / 2)), the expected value of the
                  normalised NDI term (daqsm.network_model.losses.ndi_loss, s = phase scale in rad/ppm,
                  ref = NDI_REFERENCE_RAD_PER_PPM) when D * chi is the true field: for small
                  angles ref^2 * sigma_w^2;
    rule          stop at the first iteration with NDI <= tau * max(E, T) (tau = 1 by default).

Model error (issue 21): the field of an RC2-like simulation or of real data holds more than white noise
(intra-voxel dephasing, background remnants), so no map reaches E and a noise-only test never fires
at 1 mm. With `--lambda-tv auto` the lambda rule (daqsm.network_model.tv_weight) also returns T, the
generalised discrepancy target of nonlinear TV's scan: max(E, 1.3 x the residual floor the data cannot
be fitted below), in the same normalised NDI units; step 5 passes max(E, T) as `noise_energy` here
(`--stop-model-error`, default on), so the test fires where the data are fitted as well as the
objective's classic minimiser fits them. T does not grow with `--residual-factor` (the weight's kappa):
Adam fits the data before it smooths the map, so a target of kappa E stopped the network early
(daqsm.network_model.tv_weight).

Noise estimate (daqsm/qc/noise.py, shared with nonlinear TV's alpha rule): the finest diagonal
Haar coefficient of W * field over 2x2x2 blocks inside the mask, sigma = median(|d|) / 0.6745
(Donoho and Johnstone, Biometrika 1994;81:425): white noise keeps its std, a field smooth over 2
voxels cancels, the median ignores the few blocks on sharp edges. The estimate assumes white field
noise; a background-field removal that smooths the field (SHARP
kernels) lowers it, and a model error above the noise (RC2's intra-voxel dephasing, an imperfect
background removal) keeps the residual above E: then the target T above (or the flat-loss criterion,
`reason` 'converged', or the iteration budget, 'done') stops the run.
"""
from __future__ import annotations

import math

from daqsm.network_model.losses import NDI_REFERENCE_RAD_PER_PPM


def noise_energy(sigma_w_ppm: float, phase_rad_per_ppm: float,
                 reference_rad_per_ppm: float = NDI_REFERENCE_RAD_PER_PPM) -> float:
    """Expected normalised NDI term of the true chi when W * noise has std sigma_w (module docstring)."""
    s = float(phase_rad_per_ppm)
    return (reference_rad_per_ppm / s) ** 2 * 2.0 * (1.0 - math.exp(-0.5 * (s * sigma_w_ppm) ** 2))


class StoppingRule:
    """Discrepancy principle on the NDI term, else a flat total loss (the best loss of the last window improves
    on the best before it by less than rel_tol).

    Args:
        noise_energy: E in normalised NDI units (None: no discrepancy test).
        tau: stop when ndi <= tau * E.
        window: iterations per window of the flat-loss test.
        rel_tol: stop when the best loss of the last window improved on the best loss before it by less
            than this fraction (0: off).
        min_iterations: never stop before this iteration (the learning-rate warm-up).
    """

    def __init__(self, noise_energy: float | None = None, tau: float = 1.0, window: int = 30,
                 rel_tol: float = 1e-3, min_iterations: int = 0):
        self.noise_energy, self.tau = noise_energy, float(tau)
        self.window, self.rel_tol, self.min_iterations = int(window), float(rel_tol), int(min_iterations)
        self.history: list[float] = []

    def check(self, terms: dict) -> str | None:
        """Feed one iteration's terms ('loss', 'ndi'); returns 'discrepancy', 'converged' or None."""
        self.history.append(float(terms["loss"]))
        if len(self.history) < self.min_iterations:
            return None
        if self.noise_energy is not None and self.noise_energy > 0 and terms["ndi"] <= self.tau * self.noise_energy:
            return "discrepancy"
        if self.rel_tol > 0 and len(self.history) >= 2 * self.window:
            # best loss of the last window against the best before it, not window means: an Adam spike
            # (+3-5 % for 18 iterations at 1 mm) lifted the recent mean to the one before while the loss
            # still fell ~1 % per window, and the test stopped 4.2 % above the best iterate
            recent = min(self.history[-self.window:])
            before = min(self.history[:-self.window])
            if before - recent < self.rel_tol * abs(before):
                return "converged"
        return None

    def replay(self, rows) -> tuple[int, str] | None:
        """Feed logged iterations in order (dicts with 'step', 'loss', 'ndi'; not the start row): the first
        (step, reason) the rule stops at, else None. How benchmarks apply the rule to a run made without it."""
        for row in rows:
            why = self.check(row)
            if why:
                return int(row["step"]), why
        return None
