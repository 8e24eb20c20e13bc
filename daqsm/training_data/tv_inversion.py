"""Nonlinear (and linear) TV dipole inversion by ADMM: the classic solver of fine-tuning's own objective.

Home of the FANSI-style solver that both the baselines (daqsm.evaluation.baselines: `ndi-tv`, `tv`)
and step 5's per-case TV weight (daqsm.network_model.tv_weight, through daqsm.qc.tv_alpha)
use; it sits with the physics (the one dipole kernel, daqsm.training_data.dipole) so that the
learning side can use it without depending on the evaluation package. scipy.fft rfftn/irfftn in
float32/complex64; field in ppm, chi in ppm, zero outside the mask; the FFT grid is zero-padded
(`pad`, daqsm.training_data.dipole.fft_shape) as in the field simulation.

Reference:
    Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
    inversion with variational regularization (FANSI). Magn Reson Med 2018;80:814-821.
    Implemented here from the published splitting (see `ndi_tv`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.fft

from daqsm.errors import InputError, shape_mismatch
from daqsm.training_data.dipole import dipole_kernel, fft_shape


@dataclass(frozen=True)
class NDITVParams:
    """Defaults of the nonlinear TV inversion (phase units: rad, chi scaled by `phase_scale`).

    Defaults chosen on the 2016 challenge data (3 T, phase scale 20.06 rad/ppm), NRMSE vs chi_33 after
    40 iterations for alpha in {1e-4, 3e-4, 1e-2, 3e-2, 0.1, 0.3}: 246, 205, 104, 82, 76, 87 %; mu_grad
    in {1, 10, 100} x alpha: 75.7, 76.1, 79.1 %. High-SNR simulations need a smaller alpha (the noisy
    test phantom, field noise 0.002 ppm, does best near 3e-3): tune alpha per dataset.

    Attributes:
        alpha: TV weight (alpha1 in FANSI), in the phase-unit problem.
        mu_grad: gradient consistency weight of the z = grad(chi) split (mu1); None -> 10 * alpha.
        mu_data: consistency weight of the v = D chi split of the nonlinear data term (mu2).
        iterations: maximum ADMM iterations.
        tol: stop when ||chi_k - chi_{k-1}|| / ||chi_k|| falls below this.
        newton_steps: Newton iterations of the per-voxel nonlinear v-update.
        b0_tesla, te_s: set the phase scale 2 pi gamma_bar B0 TE (rad per ppm) that turns the field
            into the phase of exp(i.) (3 T, 25 ms: 20.06 rad/ppm, the 2016 challenge's setting). The
            command never assumes them: it reads them from --case or --b0/--te.
        linear: linear TV (TV-ADMM): the data term W^2 (D u - phi)^2 instead of W^2 |e^{iDu} - e^{i phi}|^2,
            its v-update closed form (the same splitting otherwise; Bilgic et al. 2014's TV-ADMM with a weight).
    """

    alpha: float = 0.1
    mu_grad: float | None = None
    mu_data: float = 1.0
    iterations: int = 150
    tol: float = 1e-3
    newton_steps: int = 4
    b0_tesla: float = 3.0
    te_s: float = 0.025
    linear: bool = False




# --- shared pieces ---------------------------------------------------------------------------


def _prepare(field_ppm, mask, pad):
    field = np.asarray(field_ppm, dtype=np.float32)
    if field.ndim != 3:
        raise InputError(f"field: expected a 3-D volume, found shape {field.shape}")
    if not np.all(np.isfinite(field)):
        raise InputError("field: expected finite values, found NaN/Inf")
    mask = np.asarray(mask).astype(bool)
    if mask.shape != field.shape:
        raise shape_mismatch("mask", mask.shape, "field", field.shape)
    return field * mask, mask, fft_shape(field.shape, pad)


def _rfft(x, full):
    return scipy.fft.rfftn(x, s=full, workers=-1).astype(np.complex64, copy=False)


def _irfft(x_hat, full, shape=None):
    out = scipy.fft.irfftn(x_hat, s=full, workers=-1).astype(np.float32, copy=False)
    return out if shape is None else out[: shape[0], : shape[1], : shape[2]]


def gradient_eigenvalues(full, voxel_size_mm) -> np.ndarray:
    """sum_i |E_i|^2 on the rfft grid for periodic forward differences (x[n+1] - x[n]) / h_i.

    E_i(k) = (exp(2 pi i k_i / N_i) - 1) / h_i, so |E_i|^2 = (2 - 2 cos(2 pi k_i / N_i)) / h_i^2.
    Returns float32 (nx, ny, nz // 2 + 1).
    """
    axes = []
    for axis, (n, h) in enumerate(zip(full, voxel_size_mm)):
        k = np.arange(n // 2 + 1 if axis == 2 else n)
        e2 = (2.0 - 2.0 * np.cos(2.0 * np.pi * k / n)) / h**2
        axes.append(e2.reshape([-1 if a == axis else 1 for a in range(3)]))
    return (axes[0] + axes[1] + axes[2]).astype(np.float32)


def _shifted_difference(x, axis: int, step: int, out) -> None:
    """out = x[n + step] - x[n] along `axis`, periodic (np.roll(x, -step, axis) - x without the rolled copy)."""
    n = x.shape[axis]

    def cut(lo, hi):
        return (slice(None),) * axis + (slice(lo, hi),)

    if step == 1:
        np.subtract(x[cut(1, n)], x[cut(0, n - 1)], out=out[cut(0, n - 1)])
        np.subtract(x[cut(0, 1)], x[cut(n - 1, n)], out=out[cut(n - 1, n)])
    else:  # step -1
        np.subtract(x[cut(0, n - 1)], x[cut(1, n)], out=out[cut(1, n)])
        np.subtract(x[cut(n - 1, n)], x[cut(0, 1)], out=out[cut(0, 1)])


def grad(x, voxel_size_mm, out=None) -> np.ndarray:
    """Periodic forward differences, float32 (3, x, y, z), per mm (into `out` when given)."""
    x = np.asarray(x)
    if out is None:
        out = np.empty((3,) + x.shape, np.result_type(x, np.float32))
    for a, h in enumerate(voxel_size_mm):
        _shifted_difference(x, a, 1, out[a])
        out[a] /= np.float32(h)
    return out


def grad_adjoint(g, voxel_size_mm, out=None, work=None) -> np.ndarray:
    """Adjoint of `grad`: sum_i (g_i[n-1] - g_i[n]) / h_i (into `out`, with `work` as scratch, when given)."""
    g = np.asarray(g)
    total = np.empty(g.shape[1:], np.result_type(g, np.float32)) if out is None else out
    term = np.empty_like(total) if work is None else work
    for a, h in enumerate(voxel_size_mm):  # summed in axis order, as sum() of the three terms did
        _shifted_difference(g[a], a, -1, total if a == 0 else term)
        if a == 0:
            total /= np.float32(h)
        else:
            term /= np.float32(h)
            total += term
    return total


def soft_threshold(z, threshold, out=None, work=None) -> np.ndarray:
    """sign(z) max(|z| - t, 0), as z - clip(z, -t, t): the same floats with two passes instead of four
    (into `out`, which may be z, with `work` holding the clipped values, when given)."""
    return np.subtract(z, np.clip(z, -threshold, threshold, out=work), out=out)


# --- nonlinear TV (FANSI-style ADMM) ---------------------------------------------------------


def ndi_data_term(phase_model, phase_meas, weight) -> float:
    """sum W^2 |exp(i a) - exp(i b)|^2 = sum W^2 (2 - 2 cos(a - b)), phases in radians."""
    return float(np.sum(np.asarray(weight, np.float64) ** 2 * (2.0 - 2.0 * np.cos(
        np.asarray(phase_model, np.float64) - phase_meas))))


def ndi_data_gradient(phase_model, phase_meas, weight) -> np.ndarray:
    """Gradient of `ndi_data_term` w.r.t. the model phase: 2 W^2 sin(a - b)."""
    return 2.0 * np.asarray(weight) ** 2 * np.sin(np.asarray(phase_model) - phase_meas)


def solve_v(target, phase_meas, weight2, mu_data, v0=None, steps: int = 4) -> np.ndarray:
    """Per-voxel argmin_v f(v) = W^2 |e^{iv} - e^{i phi}|^2 + mu/2 (v - target)^2 by monotone safeguarded Newton.

    Stationarity: 2 W^2 sin(v - phi) + mu (v - target) = 0. f is not convex: where the curvature
    2 W^2 cos(v - phi) + mu is small, a raw Newton step can leap by hundreds of radians (inside
    nonlinear TV that fed the dual and diverged the whole ADMM). So each step takes the Newton step
    only where it lowers f, else the gradient step 1 / (mu + 2 W^2) (the inverse Lipschitz constant
    of f', which never raises f); the warm start v0 is used only where it is already below f(target).
    The result is then never worse than v = target (to float32 rounding), which bounds it:
    mu/2 (v - target)^2 <= 4 W^2.
    """
    target = np.asarray(target, dtype=np.float32)
    weight2, phase_meas = (np.broadcast_to(a, target.shape) for a in (weight2, phase_meas))

    def objective(v, at=slice(None)):
        return weight2[at] * (2.0 - 2.0 * np.cos(v - phase_meas[at])) + (0.5 * mu_data) * (v - target[at]) ** 2

    v = target.copy()
    f = objective(v)
    if v0 is not None:
        v0 = np.asarray(v0, dtype=np.float32)
        f0 = objective(v0)
        v, f = np.where(f0 < f, v0, v), np.minimum(f0, f)
    lipschitz = mu_data + 2.0 * weight2
    slack = np.float32(1e-6) * (4.0 * weight2 + f)
    for _ in range(steps):
        diff = v - phase_meas
        g1 = 2.0 * weight2 * np.sin(diff) + mu_data * (v - target)
        g2 = 2.0 * weight2 * np.cos(diff) + mu_data
        newton = v - g1 / np.where(g2 > 0.1 * mu_data, g2, lipschitz)
        f_newton = objective(newton)
        # float32: an exact tie must not reject a converged Newton step
        reject = ~(f_newton <= f + slack)
        # the gradient step only where Newton was rejected (a few % of the voxels)
        gradient = v[reject] - g1[reject] / lipschitz[reject]
        v, f = newton, f_newton
        v[reject] = gradient
        f[reject] = objective(gradient, reject)
    return v.astype(np.float32, copy=False)


def ndi_tv(field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
           params: NDITVParams = NDITVParams(), pad="auto", return_info: bool = False, chi0=None,
           on_iteration=None):
    """Weighted nonlinear TV inversion by ADMM (FANSI-style; Milovic et al. 2018).

    Problem (phase units phi = s f, u = s chi, s = 2 pi gamma_bar B0 TE in rad/ppm):
        min_u ||W (exp(i D u) - exp(i phi))||_2^2 + alpha ||G u||_1   (anisotropic TV)
    Splits z = G u and v = D u with scaled duals; each iteration:
        u = IFFT[(mu_grad F(G^T(z - s_z)) + mu_data D F(v - s_v)) / (mu_grad |E|^2 + mu_data D^2)]
        z = soft(G u + s_z, alpha / mu_grad);  s_z += G u - z
        v = argmin W^2 |e^{iv} - e^{i phi}|^2 + mu_data/2 |v - (D u + s_v)|^2 (Newton, `solve_v`)
        s_v += D u - v
    Units: exp(i.) needs radians, hence the phase scale; the result is divided by it again.

    Args:
        field_ppm: float32 (x, y, z) local field, ppm.
        mask: (x, y, z) 0/1 brain mask.
        weight: (x, y, z) data weight >= 0 (e.g. magnitude), normalised to max 1 inside the mask;
            None -> the mask.
        params: NDITVParams.
        pad: FFT zero padding, as `tkd` (the padding has weight 0 in the data term).
        return_info: also return {"iterations", "converged", "seconds"}.
        chi0: optional float32 (x, y, z) start, ppm (warm start, e.g. the solution at a nearby alpha
            in an alpha scan); the splits start consistent with it (z = G u0, v = D u0).
        on_iteration: optional callable(iteration, relative change of u), after every iteration (a
            progress bar).

    Returns:
        float32 (x, y, z) chi in ppm (0 outside the mask) [, info].
    """
    start = time.perf_counter()
    p = params
    if not (p.alpha > 0 and p.mu_data > 0 and p.iterations >= 1 and p.tol >= 0):
        raise InputError(f"ndi-tv parameters: expected alpha, mu_data > 0 and iterations >= 1, got {p}")
    from daqsm.training_data.units import rad_per_ppm

    scale = np.float32(rad_per_ppm(p.b0_tesla, p.te_s))
    mu_grad = np.float32(p.mu_grad if p.mu_grad is not None else 10.0 * p.alpha)
    mu_data, alpha = np.float32(p.mu_data), np.float32(p.alpha)
    field, mask, full = _prepare(field_ppm, mask, pad)
    w = mask.astype(np.float32) if weight is None else check_weight(weight, mask)
    padding = [(0, f - n) for n, f in zip(field.shape, full)]
    phi = np.pad(field * scale, padding)
    w2 = np.pad(w * w, padding)
    kernel = dipole_kernel(full, voxel_size_mm, b0_dir)
    denom = mu_grad * gradient_eigenvalues(full, voxel_size_mm) + mu_data * kernel**2
    denom[0, 0, 0] = 1.0  # both numerator terms vanish at k = 0: mean fixed to 0
    weighted = np.flatnonzero(w2 > 0)  # flat indices: a gather, not a scan of the padded grid per use
    if chi0 is None:
        u = np.zeros_like(phi)
        z = np.zeros((3,) + full, np.float32)
        v = phi.copy()
    else:
        chi0 = np.asarray(chi0, np.float32)
        if chi0.shape != field.shape:
            raise shape_mismatch("chi0", chi0.shape, "field", field.shape)
        u = np.pad(chi0 * scale, padding)
        z = grad(u, voxel_size_mm)
        v = _irfft(_rfft(u, full) * kernel, full)
    s_z = np.zeros_like(z)
    s_v = np.zeros_like(phi)
    phi_w, w2_w, v_w = (np.take(a.reshape(-1), weighted) for a in (phi, w2, v))
    converged, it = False, 0
    # Work buffers reused every iteration, the updates written in place: each temporary of the padded
    # grid is a fresh mmap'd block whose pages the kernel faults in again (half the CPU time went to
    # the system at 1 mm). Every expression keeps its order of operations, so the floats are those of
    # the plain formulas in the docstring.
    data_kernel = mu_data * kernel
    threshold = alpha / mu_grad
    work3, work, adjoint, gu = np.empty_like(z), np.empty_like(phi), np.empty_like(phi), np.empty_like(z)
    v = np.array(v, np.float32)  # owned: updated in place
    for it in range(1, p.iterations + 1):
        np.subtract(z, s_z, out=work3)
        grad_adjoint(work3, voxel_size_mm, out=adjoint, work=work)
        adjoint *= mu_grad
        rhs = _rfft(adjoint, full)
        np.subtract(v, s_v, out=work)
        rhs += data_kernel * _rfft(work, full)
        rhs /= denom  # u_hat
        u_new = _irfft(rhs, full)
        rhs *= kernel
        du = _irfft(rhs, full)
        grad(u_new, voxel_size_mm, out=gu)
        np.add(gu, s_z, out=z)
        soft_threshold(z, threshold, out=z, work=work3)
        gu -= z
        s_z += gu
        # where W = 0 the v-update is v = D u + s_v exactly; Newton only on the weighted voxels
        np.add(du, s_v, out=v)
        v_t = np.take(v.reshape(-1), weighted)
        if p.linear:  # argmin W^2 (v - phi)^2 + mu/2 (v - t)^2
            v_w = (2.0 * w2_w * phi_w + mu_data * v_t) / (2.0 * w2_w + mu_data)
        else:
            v_w = solve_v(v_t, phi_w, w2_w, mu_data, v0=v_w, steps=p.newton_steps)
        v.reshape(-1)[weighted] = v_w
        du -= v
        s_v += du
        np.subtract(u_new, u, out=work)
        change = np.linalg.norm(work) / max(np.linalg.norm(u_new), 1e-12)
        u = u_new
        if on_iteration is not None:
            on_iteration(it, float(change))
        # not at iteration 1: from a warm start the splits are consistent with u0 and the duals 0, so the
        # first u-update returns u0 (less its mean) whatever alpha is: no change there says nothing
        if it > 1 and change < p.tol:
            converged = True
            break
    chi = (u[: field.shape[0], : field.shape[1], : field.shape[2]] / scale * mask).astype(np.float32)
    if return_info:
        return chi, {"iterations": it, "converged": converged, "seconds": time.perf_counter() - start}
    return chi


def check_weight(weight, mask) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float32)
    if w.shape != mask.shape:
        raise shape_mismatch("weight", w.shape, "mask", mask.shape)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("weight: expected finite values >= 0")
    peak = float(w[mask].max())
    if peak <= 0:
        raise InputError("weight: all zero inside the mask")
    return w * mask / np.float32(peak)
