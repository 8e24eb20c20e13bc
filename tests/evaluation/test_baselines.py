"""Classic inversions on a small sphere/ellipsoid phantom, operator identities, and the command."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from daqsm.evaluation import baseline_cli
from daqsm.evaluation import baselines as B
from daqsm.evaluation.metrics import nrmse_pair
from daqsm.training_data.dipole import dipole_kernel, forward_field
from daqsm.training_data.volume_io import read_volume, write_volume

N = 32


def phantom(n=N):
    """Ellipsoidal 'brain' (0.02 ppm) holding four spheres of different chi; returns chi, brain, spheres."""
    g = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    brain = (g[0] / (0.42 * n)) ** 2 + (g[1] / (0.36 * n)) ** 2 + (g[2] / (0.40 * n)) ** 2 <= 1
    chi = np.where(brain, 0.02, 0.0).astype(np.float32)
    spheres = np.zeros_like(brain)
    for centre, radius, value in (((-4, 0, 3), 3.5, 0.1), ((5, -3, -2), 3.0, -0.08), ((0, 6, -4), 3.0, 0.15)):
        inside = sum((g[a] - centre[a]) ** 2 for a in range(3)) <= radius**2
        chi[inside] = value
        spheres |= inside
    return chi, brain, spheres


def _interior(region, voxels=1):
    import scipy.ndimage as ndi

    return ndi.binary_erosion(region, iterations=voxels)


def test_tkd_tiny_threshold_recovers_noise_free_chi():
    chi, brain, spheres = phantom()
    field = forward_field(chi)  # circular forward model: its exact inverse is the circular one
    full = np.ones_like(brain)  # the whole field is known: only the threshold limits the inversion
    recon = B.tkd(field, full, threshold=1e-3, pad="none")
    inner = _interior(brain, 2)
    # mean fixed to 0 by D(0) = 0: compare demeaned maps
    err = (recon - recon[inner].mean()) - (chi - chi[inner].mean())
    # grid frequencies where D is exactly 0 (e.g. k = (1, 1, 1)) carry no information: a ~9 % floor
    assert np.abs(err[_interior(spheres)]).max() < 0.01  # ppm, < 7 % of the largest contrast (0.15)
    assert nrmse_pair(recon, chi, inner)[0] < 12.0
    # the default threshold biases the result (underestimation), the tiny one does not
    assert nrmse_pair(B.tkd(field, full, pad="none"), chi, inner)[0] > nrmse_pair(recon, chi, inner)[0]


def test_l2_approaches_truth_as_lambda_vanishes():
    chi, brain, _ = phantom()
    field = forward_field(chi)
    full = np.ones_like(brain)
    inner = _interior(brain, 2)
    errors = [nrmse_pair(B.l2_gradient(field, full, lambda_grad=lam), chi, inner)[0] for lam in (1e-1, 1e-3, 1e-6)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 12.0  # the same information floor as TKD (zeros of D on the grid)


def test_nonlinear_tv_beats_tkd_on_noisy_phantom():
    chi, brain, _ = phantom()
    rng = np.random.default_rng(0)
    field = (forward_field(chi) + rng.normal(0.0, 0.002, chi.shape).astype(np.float32)) * brain
    tkd_err = nrmse_pair(B.tkd(field, brain), chi, brain)[0]
    tv, info = B.ndi_tv(field, brain, params=B.NDITVParams(alpha=3e-3, iterations=100), return_info=True)
    tv_err = nrmse_pair(tv, chi, brain)[0]
    assert tv_err < 0.7 * tkd_err, (tv_err, tkd_err)
    assert np.all(tv[~brain] == 0) and tv.dtype == np.float32
    assert info["iterations"] <= 100


def _edge_source(n=N):
    """A 0.2 ppm sphere 4 voxels from the z = 0 face; its field from a 4x larger (non-periodic) grid."""
    g = np.indices((n, n, n)).astype(np.float32)
    chi = np.where(((g[0] - n / 2) ** 2 + (g[1] - n / 2) ** 2 + (g[2] - 4) ** 2) <= 9.0, 0.2, 0.0)
    return chi.astype(np.float32), forward_field(chi.astype(np.float32), pad=2 * n)


@pytest.mark.parametrize("method", ["tkd", "l2", "ndi-tv"])
def test_baselines_zero_pad_by_default(method):
    """The default FFT is zero-padded ('auto'): no wrapped-around copy of an edge source.

    A circular FFT puts the field of a source 4 voxels from one face next to the opposite face; the
    inversion then writes a spurious copy there. RMS chi in the 8 slices at the far face, in % of
    the source's 0.2 ppm (measured): TKD 1.87 unpadded vs 0.70 default, L2 1.34 vs 0.44, nonlinear
    TV (40 iterations) 1.93 vs 0.33.
    """
    chi, field = _edge_source()
    full = np.ones(chi.shape, bool)
    run = {"tkd": lambda **kw: B.tkd(field, full, **kw),
           "l2": lambda **kw: B.l2_gradient(field, full, **kw),
           "ndi-tv": lambda **kw: B.ndi_tv(field, full, params=B.NDITVParams(alpha=1e-4, iterations=40), **kw)}[method]

    def far_face_rms(recon):
        recon = recon - np.median(recon)  # the mean of chi is undetermined (D(0) = 0)
        return 100 * np.sqrt(np.mean(recon[:, :, -8:] ** 2)) / 0.2

    default, circular = run(), run(pad="none")
    np.testing.assert_array_equal(default, run(pad="auto"))
    assert far_face_rms(default) < 0.5 * far_face_rms(circular), (far_face_rms(default), far_face_rms(circular))


def test_command_pads_by_default():
    from daqsm.config import resolve_config

    args = baseline_cli.build_parser().parse_args(["tkd", "--field", "f", "--mask", "m", "-o", "o"])
    assert resolve_config(baseline_cli.BaselineConfig, None, vars(args)).pad == "auto"


def test_ndi_data_gradient_identity():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-4, 4, 50), rng.uniform(-4, 4, 50)
    w = rng.uniform(0, 1, 50)
    # |e^{ia} - e^{ib}|^2 = 2 - 2 cos(a - b)
    direct = np.sum(w**2 * np.abs(np.exp(1j * a) - np.exp(1j * b)) ** 2)
    assert B.ndi_data_term(a, b, w) == pytest.approx(direct, rel=1e-12)
    # d/da = 2 w^2 sin(a - b), by central differences
    h = 1e-6
    for i in (0, 17, 42):
        e = np.zeros(50)
        e[i] = h
        numeric = (B.ndi_data_term(a + e, b, w) - B.ndi_data_term(a - e, b, w)) / (2 * h)
        assert B.ndi_data_gradient(a, b, w)[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_solve_v_reaches_stationarity():
    rng = np.random.default_rng(2)
    phi = rng.uniform(-1, 1, 1000).astype(np.float32)
    target = (phi + rng.normal(0, 0.3, 1000)).astype(np.float32)
    w2 = rng.uniform(0, 1, 1000).astype(np.float32)
    v = B.solve_v(target, phi, w2, 1.0, steps=8)
    stationarity = 2 * w2 * np.sin(v - phi) + (v - target)
    assert np.abs(stationarity).max() < 1e-4


def _v_objective(v, phi, w2, target, mu):
    return w2 * (2.0 - 2.0 * np.cos(v - phi)) + 0.5 * mu * (v - target) ** 2


@pytest.mark.parametrize("warm", [False, True])
def test_solve_v_never_raises_the_objective_and_stays_near_its_minimiser(warm):
    # Far from phi (phase wraps, a warm start from another branch) a raw Newton step on the non-convex
    # per-voxel objective can leap by hundreds of radians; inside nonlinear TV that fed the dual and the
    # whole ADMM diverged (built-in 1 mm case, alpha 0.1: |chi| ~ 1e7 after 20 iterations).
    rng = np.random.default_rng(0)
    n = 200_000
    phi = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
    target = (phi + rng.uniform(-6, 6, n)).astype(np.float32)
    w2 = rng.uniform(0, 1, n).astype(np.float32)
    v0 = (target + rng.uniform(-3, 3, n)).astype(np.float32) if warm else None
    mu = 1.0
    v = B.solve_v(target, phi, w2, mu, v0=v0)
    start = v0 if warm else target
    f = _v_objective(v.astype(np.float64), phi, w2, target, mu)
    assert np.all(f <= _v_objective(start.astype(np.float64), phi, w2, target, mu) + 1e-5)
    assert np.all(f <= _v_objective(target.astype(np.float64), phi, w2, target, mu) + 1e-5)
    # hence |v - target| <= sqrt(8 W^2 / mu), the interval every minimiser lies in
    assert np.all(np.abs(v - target) <= np.sqrt(8.0 * w2 / mu) + 1e-4)
    # and, in this hard regime (targets up to 6 rad from phi), most voxels already stationary
    v8 = B.solve_v(target, phi, w2, mu, v0=v0, steps=8)
    stationarity = 2 * w2 * np.sin(v8 - phi) + mu * (v8 - target)
    assert np.mean(np.abs(stationarity) > 1e-3) < 0.1


def test_gradient_operators_match_k_space():
    rng = np.random.default_rng(3)
    shape, vs = (8, 10, 12), (1.0, 0.5, 2.0)
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.normal(size=(3,) + shape).astype(np.float32)
    assert np.sum(B.grad(x, vs) * y) == pytest.approx(np.sum(x * B.grad_adjoint(y, vs)), rel=1e-4)
    lhs = np.fft.rfftn(B.grad_adjoint(B.grad(x, vs), vs))
    rhs = B.gradient_eigenvalues(shape, vs) * np.fft.rfftn(x)
    assert np.allclose(lhs, rhs, atol=1e-3)


def test_a_warm_start_is_not_taken_for_convergence():
    """From chi0 the splits start consistent (z = G u0, v = D u0, duals 0), so the first u-update gives
    u0 back but for its mean: where that mean is ~0 the tolerance test fired at iteration 1 and the
    solve at the new alpha returned chi0 unchanged (the lambda rule's scan at 1 mm: every alpha below
    the second stopped after one iteration, one residual for all, alpha chosen 100x too large)."""
    chi, brain, _ = phantom(24)
    rng = np.random.default_rng(0)
    field = (forward_field(chi, (1, 1, 1)) + rng.normal(0, 0.002, chi.shape)).astype(np.float32) * brain
    params = B.NDITVParams(alpha=0.05, iterations=20, b0_tesla=7.0, te_s=0.012)
    start = B.ndi_tv(field, brain, params=params, pad="none")
    start = np.where(brain, start - start[brain].mean(), 0).astype(np.float32)  # zero mean: the stuck case
    smaller = B.NDITVParams(alpha=0.002, iterations=20, b0_tesla=7.0, te_s=0.012)
    chi_warm, info = B.ndi_tv(field, brain, params=smaller, pad="none", chi0=start, return_info=True)
    assert info["iterations"] > 1
    assert np.abs(chi_warm - start)[brain].max() > 1e-3  # it moved towards the smaller alpha's solution
    cold = B.ndi_tv(field, brain, params=replace(smaller, iterations=60), pad="none")
    assert np.linalg.norm((chi_warm - cold)[brain]) < np.linalg.norm((start - cold)[brain])


def test_gradient_and_soft_threshold_are_the_rolled_definitions_bit_for_bit():
    """The sliced differences and z - clip(z, -t, t) give exactly the floats of their textbook forms."""
    from daqsm.training_data.tv_inversion import soft_threshold

    rng = np.random.default_rng(4)
    shape, vs = (7, 9, 11), (1.0, 0.7, 1.3)
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.normal(size=(3,) + shape).astype(np.float32)
    rolled = np.stack([(np.roll(x, -1, axis=a) - x) / np.float32(h) for a, h in enumerate(vs)])
    np.testing.assert_array_equal(B.grad(x, vs), rolled)
    rolled_adjoint = sum((np.roll(y[a], 1, axis=a) - y[a]) / np.float32(h) for a, h in enumerate(vs))
    np.testing.assert_array_equal(B.grad_adjoint(y, vs), rolled_adjoint)
    t = np.float32(0.4)
    expected = np.sign(y) * np.maximum(np.abs(y) - t, 0.0)
    np.testing.assert_array_equal(soft_threshold(y, t), expected)
    in_place = y.copy()  # as the ADMM loop calls it
    soft_threshold(in_place, t, out=in_place, work=np.empty_like(y))
    np.testing.assert_array_equal(in_place, expected)


def test_shared_kernel_and_anisotropic_voxels():
    chi, brain, _ = phantom(24)
    vs, b0 = (1.0, 1.2, 0.8), (0.1, 0.2, 1.0)
    field = forward_field(chi, vs, b0)  # circular, inverted exactly by the circular L2
    recon = B.l2_gradient(field, np.ones_like(brain), vs, b0, lambda_grad=1e-6, pad="none")
    assert nrmse_pair(recon, chi, _interior(brain, 2))[0] < 12.0
    assert dipole_kernel((24, 24, 24), vs, b0) is dipole_kernel((24, 24, 24), vs, b0)  # one cached kernel


@pytest.mark.parametrize("method", ["tkd", "l2", "ndi-tv", "tv"])
def test_command_writes_ppm_with_affine(tmp_path, method):
    chi, brain, _ = phantom(24)
    affine = np.diag([1.1, 1.1, 1.2, 1.0])
    affine[:3, 3] = (5, -3, 2)
    f = write_volume(tmp_path / "field.nii.gz", forward_field(chi, (1.1, 1.1, 1.2)) * brain, affine)
    m = write_volume(tmp_path / "mask.nii.gz", brain.astype(np.uint8), affine)
    out = tmp_path / f"{method}.nii.gz"
    extra = ["--iterations", "5", "--b0", "3", "--te", "0.025"] if method in ("ndi-tv", "tv") else []
    assert baseline_cli.main([method, "--field", f, "--mask", m, "-o", str(out)] + extra) == 0
    vol = read_volume(out)
    assert np.allclose(vol.affine, affine) and vol.data.shape == chi.shape
    assert np.all(vol.data[~brain] == 0)


def test_command_bad_inputs_exit_2(tmp_path, capsys):
    chi, brain, _ = phantom(16)
    f = write_volume(tmp_path / "field.nii.gz", forward_field(chi))
    m = write_volume(tmp_path / "mask.nii.gz", brain.astype(np.uint8))
    small = write_volume(tmp_path / "small.nii.gz", np.ones((16, 16, 15), np.uint8))
    out = str(tmp_path / "out.nii.gz")
    base = ["--field", f, "--mask", m, "-o", out]
    for argv in (["tdk"] + base,                                  # unknown method
                 ["tkd", "--field", f, "--mask", small, "-o", out],  # shape mismatch
                 ["tkd", "--weight", f] + base,                   # weight only for ndi-tv
                 ["tkd", "--threshold", "0"] + base,              # bad threshold
                 ["l2", "--lambda", "-1"] + base,                 # bad lambda
                 ["ndi-tv", "--alpha", "0", "--b0", "3", "--te", "0.02"] + base,  # bad alpha
                 ["ndi-tv"] + base,                               # no B0 / TE: never a silent 3 T default
                 ["tv", "--b0", "3"] + base,                      # no TE
                 ["tkd", "--case", str(tmp_path)] + base,         # --case and --field
                 ["tkd", "--field", str(tmp_path / "none.nii.gz"), "--mask", m, "-o", out]):
        assert baseline_cli.main(argv) == 2, argv
        assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out.nii.gz").exists()
    assert baseline_cli.main(["tkd"] + base) == 0
    assert baseline_cli.main(["tkd"] + base) == 2  # exists, no --overwrite


def test_linear_tv_matches_nonlinear_tv_at_small_phase():
    """With a small phase (|s (f - D chi)| << 1) 2 - 2 cos x ~ x^2: linear and nonlinear TV agree."""
    chi, brain, _ = phantom(24)
    field = forward_field(chi) * brain
    params = B.NDITVParams(alpha=1e-4, iterations=60, b0_tesla=0.05, te_s=0.01)
    nonlinear = B.ndi_tv(field, brain, params=params)
    linear = B.ndi_tv(field, brain, params=B.NDITVParams(**{**params.__dict__, "linear": True}))
    assert nrmse_pair(linear, nonlinear, brain)[0] < 1.0
    assert nrmse_pair(linear, chi, brain)[0] < 60.0


def test_command_reads_b0_te_and_weight_from_the_case(tmp_path, capsys):
    """--case: B0, TE of the weighting echo, voxel size and magnitude weight come from the case (like-for-like)."""
    import json

    from daqsm.training_data.formats.case_folder import write_case

    chi, brain, _ = phantom(16)
    vs = (1.5, 1.5, 1.5)
    field = (forward_field(chi, vs) * brain).astype(np.float32)
    magnitude = np.stack([brain * 1.0, brain * 0.8], -1).astype(np.float32)
    folder = tmp_path / "case"
    write_case(folder, {"local_field": field, "mask": brain.astype(np.uint8), "magnitude": magnitude},
               {"b0_tesla": 7.0, "te_s": [0.004, 0.012], "voxel_size_mm": list(vs), "b0_dir": [0, 0, 1]},
               np.diag(list(vs) + [1.0]))
    out = tmp_path / "tv.nii.gz"
    assert baseline_cli.main(["ndi-tv", "--case", str(folder), "--iterations", "3", "-o", str(out)]) == 0
    record = json.loads((tmp_path / "tv.json").read_text())
    text = json.dumps(record)
    assert '"b0_tesla": 7.0' in text and '"te_s": 0.012' in text, text


@pytest.mark.realdata
def test_direct_inversions_on_2016_data(shared_data):
    """Regression on the 2016 challenge data (benchmarks/results_baselines.md: TKD 110.6 %, L2 81.3 %)."""
    from daqsm.evaluation.metrics import nrmse_2016

    folder = shared_data / "qsm2016"
    field = read_volume(folder / "phs_tissue.nii.gz")
    mask = read_volume(folder / "msk.nii.gz").data > 0.5
    chi_33 = read_volume(folder / "chi_33.nii.gz").data
    vs = field.voxel_size_mm
    tkd_err = nrmse_2016(B.tkd(field.data, mask, vs), chi_33, mask)
    l2_err = nrmse_2016(B.l2_gradient(field.data, mask, vs), chi_33, mask)
    assert tkd_err == pytest.approx(110.6, abs=1.0)
    assert l2_err == pytest.approx(81.3, abs=1.0)
