"""Dipole kernel and forward model against analytic results and identities."""
from __future__ import annotations

import numpy as np
import pytest

from daqsm.errors import InputError
from daqsm.training_data.dipole import dipole_kernel, fft_shape, forward_field, forward_field_tf


def sphere(n, radius_mm, voxel_size_mm=(1.0, 1.0, 1.0), supersample=3):
    """Partial-volume sphere (fraction of each voxel inside) centred in an n^3 grid, and coordinates."""
    vs = np.asarray(voxel_size_mm, float)
    centre = (n - 1) / 2
    grid = np.indices((n, n, n)).astype(float)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    chi = np.zeros((n, n, n))
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                r2 = sum(((grid[i] + o - centre) * vs[i]) ** 2 for i, o in enumerate((ox, oy, oz)))
                chi += r2 <= radius_mm**2
    coords = [(grid[i] - centre) * vs[i] for i in range(3)]
    return (chi / supersample**3).astype(np.float32), coords


def analytic_sphere_field(coords, radius_mm, b0_dir, delta_chi=1.0):
    """Outside a sphere: delta_chi/3 (R/r)^3 (3 cos^2 theta - 1); inside: 0 (Lorentz-corrected)."""
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    r = np.sqrt(sum(c**2 for c in coords))
    cos = sum(c * bi for c, bi in zip(coords, b)) / np.maximum(r, 1e-12)
    return delta_chi / 3 * (radius_mm / np.maximum(r, 1e-12)) ** 3 * (3 * cos**2 - 1), r


@pytest.mark.parametrize("voxel_size_mm, b0_dir, tolerance", [
    ((1.0, 1.0, 1.0), (0.0, 0.0, 1.0), 0.02),      # the bound
    ((1.0, 1.0, 1.0), (1.0, 0.0, 1.0), 0.03),      # oblique: more staircase error on the sphere
    ((1.0, 1.0, 1.5), (0.0, 0.0, 1.0), 0.03),      # anisotropic: 5 voxels of radius along z
])
def test_sphere_matches_analytic_dipole_field(voxel_size_mm, b0_dir, tolerance):
    radius = 8.0
    chi, coords = sphere(64, radius, voxel_size_mm)
    field = forward_field(chi, voxel_size_mm, b0_dir, pad=32)
    expected, r = analytic_sphere_field(coords, radius, b0_dir)
    outside = r >= 1.5 * radius
    rel_err = np.linalg.norm(field[outside] - expected[outside]) / np.linalg.norm(expected[outside])
    assert rel_err <= tolerance
    inside = r <= radius - 1.5
    assert abs(field[inside].mean()) < 0.02 * np.abs(expected[outside]).max()


def test_padding_is_what_makes_the_sphere_accurate():
    chi, coords = sphere(64, 8.0)
    expected, r = analytic_sphere_field(coords, 8.0, (0, 0, 1))
    outside = r >= 12
    errors = [np.linalg.norm(forward_field(chi, pad=p)[outside] - expected[outside]) / np.linalg.norm(expected[outside])
              for p in (None, 32)]
    assert errors[0] > 3 * errors[1]  # circular wrap-around without padding


def test_kernel_values_and_layout():
    k = dipole_kernel((8, 6, 10), (1.0, 2.0, 0.5), (0, 0, 1))
    assert k.shape == (8, 6, 6) and k.dtype == np.float32
    assert k[0, 0, 0] == 0.0
    assert k[0, 0, 1] == pytest.approx(1 / 3 - 1)          # k along B0
    assert k[1, 0, 0] == pytest.approx(1 / 3)              # k perpendicular to B0
    # voxel size divides k: for kx = 1/(8*1mm) and kz = 1/(10*0.5mm) the angle is set in mm^-1
    kx, kz = 1 / 8, 1 / 5
    assert k[1, 0, 1] == pytest.approx(1 / 3 - kz**2 / (kx**2 + kz**2), rel=1e-6)
    assert dipole_kernel((4, 4, 4), d0=1 / 3)[0, 0, 0] == pytest.approx(1 / 3)
    full = dipole_kernel((8, 6, 10), (1.0, 2.0, 0.5), (0.2, 0.3, 1), half_spectrum=False, dtype=np.float64)
    half = dipole_kernel((8, 6, 10), (1.0, 2.0, 0.5), (0.2, 0.3, 1), dtype=np.float64)
    np.testing.assert_allclose(full[..., :6], half, rtol=1e-6)
    # D(k) = D(-k): the real, self-adjoint operator the TF gradient relies on
    np.testing.assert_allclose(full, np.roll(full[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)), atol=1e-12)


def test_forward_field_matches_complex_fft_reference():
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((12, 10, 14)).astype(np.float32)
    vs, b0 = (0.8, 1.1, 1.6), (0.2, -0.4, 0.9)
    kernel = dipole_kernel(chi.shape, vs, b0, half_spectrum=False, dtype=np.float64)
    reference = np.real(np.fft.ifftn(kernel * np.fft.fftn(chi)))
    np.testing.assert_allclose(forward_field(chi, vs, b0), reference, atol=1e-5)


def test_numpy_and_tensorflow_agree_anisotropic_oblique():
    rng = np.random.default_rng(1)
    chi = (0.1 * rng.standard_normal((2, 20, 24, 18))).astype(np.float32)
    vs, b0 = (0.6, 1.0, 1.8), (0.3, -0.2, 0.93)
    for pad in (None, "fast", 5, "auto"):
        np_field = forward_field(chi, vs, b0, pad=pad)
        tf_field = forward_field_tf(chi, vs, b0, pad=pad).numpy()
        assert np.abs(np_field - tf_field).max() <= 1e-5


def test_oblique_b0_equals_rotated_object():
    """B0 along x on chi equals B0 along z on chi with axes x and z swapped (and swapped back)."""
    rng = np.random.default_rng(2)
    chi = rng.standard_normal((10, 12, 16)).astype(np.float32)
    vs = (0.7, 1.0, 1.3)
    along_x = forward_field(chi, vs, (1, 0, 0))
    swapped = np.transpose(chi, (2, 1, 0))
    along_z = forward_field(swapped, vs[::-1], (0, 0, 1))
    np.testing.assert_allclose(along_x, np.transpose(along_z, (2, 1, 0)), atol=1e-6)
    # and B0 reversed gives the same field (the kernel depends on (k.b)^2)
    np.testing.assert_allclose(forward_field(chi, vs, (0.3, 0.1, 0.9)), forward_field(chi, vs, (-0.3, -0.1, -0.9)), atol=1e-6)


def test_tf_gradient_is_the_adjoint():
    """<A x, y> = <x, A^T y>: the custom gradient must be the true adjoint (with padding and crop)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((9, 10, 11)), tf.float32)
    y = tf.constant(rng.standard_normal((9, 10, 11)), tf.float32)
    vs, b0 = (1.0, 0.9, 1.2), (0.1, 0.2, 1.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        inner = tf.reduce_sum(forward_field_tf(x, vs, b0, pad=4) * y)
    adjoint_y = tape.gradient(inner, x)
    # finite difference along a random direction
    direction = tf.constant(rng.standard_normal((9, 10, 11)), tf.float32)
    eps = 1e-2
    plus = tf.reduce_sum(forward_field_tf(x + eps * direction, vs, b0, pad=4) * y)
    minus = tf.reduce_sum(forward_field_tf(x - eps * direction, vs, b0, pad=4) * y)
    fd = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(float(tf.reduce_sum(adjoint_y * direction)), float(fd), rtol=1e-3)


def test_kernel_stack_convolves_each_crop_with_its_own_geometry():
    """Mixed-protocol targets (step 4): crop b through kernel which[b] equals the one-geometry
    operator of that crop, values and gradient (the gradient is the same self-adjoint operator)."""
    import tensorflow as tf

    from daqsm.training_data.dipole import dipole_operator_stack_tf

    rng = np.random.default_rng(4)
    geometries = [((1.0, 1.0, 1.0), (0.0, 0.0, 1.0)), ((1.0, 0.9, 1.2), (0.0, 0.2588, 0.9659))]
    x = tf.constant(rng.standard_normal((3, 9, 10, 11)), tf.float32)
    y = tf.constant(rng.standard_normal((3, 9, 10, 11)), tf.float32)
    which = tf.constant([1, 0, 1], tf.int32)
    stack = dipole_operator_stack_tf((9, 10, 11), geometries, pad=4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = stack(x, which)
        inner = tf.reduce_sum(out * y)
    grad = tape.gradient(inner, x)
    for b, k in enumerate(which.numpy()):
        vs, b0 = geometries[k]
        np.testing.assert_allclose(out[b].numpy(), forward_field_tf(x[b], vs, b0, pad=4).numpy(), atol=1e-5)
        np.testing.assert_allclose(grad[b].numpy(), forward_field_tf(y[b], vs, b0, pad=4).numpy(), atol=1e-5)
    # the two kernels differ: the same crop through the other kernel is another field
    assert np.abs(out[0].numpy() - forward_field_tf(x[0], *geometries[0], pad=4).numpy()).max() > 0.05


def test_fft_shape_choices():
    assert fft_shape((160, 160, 160), None) == (160, 160, 160)
    assert fft_shape((161, 97, 64), "fast") == (162, 100, 64)
    assert fft_shape((64, 64, 64), 32) == (128, 128, 128)
    assert all(f >= 1.5 * n for f, n in zip(fft_shape((160, 150, 33), "auto"), (160, 150, 33)))
    with pytest.raises(InputError, match="pad"):
        fft_shape((8, 8, 8), "lots")
    with pytest.raises(InputError, match="B0 direction"):
        dipole_kernel((4, 4, 4), b0_dir=(0, 0, 0))
