"""The one dipole kernel of the project and the forward model f = D * chi (steps 2, 4, 5, baselines).

Kernel (continuous, k-space): D(k) = 1/3 - (k . b)^2 / |k|^2, with k_i = fftfreq(n_i, d=voxel_i)
(cycles/mm) and b the unit B0 direction in voxel axes. On the Nyquist plane of an even axis the
kernel is the average over the two signs of that frequency, so that D(k) = D(-k) holds exactly.
D(0) = 0 by default (the field is defined up to a constant); 1/3 is available through `d0`.

Layout: the kernel is **not** fft-shifted (DC at index [0, 0, 0]). With `half_spectrum=True` it
is the rfft half-spectrum along the last axis, shape (nx, ny, nz // 2 + 1), to multiply
`rfftn(chi)`; otherwise the full (nx, ny, nz) spectrum.

Padding: circular convolution wraps the field of one side onto the other. `pad` zero-pads the
spatial axes at their end before the FFT and crops afterwards:
    None or 0   no padding (original method);
    "fast"      only up to the next 2,3,5-smooth FFT size;
    int N       N voxels per axis side (2N per axis), then up to the next fast size;
    "auto"      a quarter of each axis per side (1.5x per axis), then up to the next fast size.

Units: chi in ppm gives the field in ppm of B0.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from daqsm.errors import InputError
from daqsm.training_data.geometry import check_voxel_size, normalise_b0_dir

PAD_CHOICES = ("none", "fast", "auto")


def fft_shape(shape, pad=None) -> tuple[int, int, int]:
    """Grid size used for the FFT of a volume of `shape` under a padding spec (see module doc)."""
    shape = tuple(int(n) for n in shape)
    if pad is None or (isinstance(pad, str) and pad.lower() == "none"):
        return shape
    if isinstance(pad, str):
        key = pad.lower()
        if key == "fast":
            extra = (0, 0, 0)
        elif key == "auto":
            extra = tuple(2 * ((n + 3) // 4) for n in shape)
        else:
            try:
                voxels = int(pad)
            except ValueError:
                raise InputError(f"pad: expected none, fast, auto or a number of voxels, got {pad!r}") from None
            return fft_shape(shape, voxels)
    else:
        if int(pad) < 0:
            raise InputError(f"pad: expected a non-negative number of voxels, got {pad}")
        if int(pad) == 0:
            return shape
        from daqsm.validate import quantity

        quantity("pad", "pad", int(pad))  # the one table of ranges (daqsm/validate.py)
        extra = (2 * int(pad),) * 3
    grid = tuple(scipy.fft.next_fast_len(n + e, real=True) for n, e in zip(shape, extra))
    check_fft_memory(grid, pad)
    return grid


# bytes per voxel of the padded grid while a forward model or an inversion runs: a few float64 and
# complex128 copies (the QC residual measures about 81)
FFT_BYTES_PER_VOXEL = 96


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def check_fft_memory(grid, pad) -> None:
    """Refuse, before allocating, a padded FFT grid that cannot fit in the memory available."""
    need = float(np.prod(np.asarray(grid, dtype=np.float64))) * FFT_BYTES_PER_VOXEL
    have = available_memory_bytes()
    if have is not None and need > have:
        raise InputError(f"pad {pad}: the FFT grid {tuple(grid)} needs about {need / 2**30:.3g} GiB, more than "
                         f"the {have / 2**30:.3g} GiB available; choose a smaller pad")


@functools.lru_cache(maxsize=16)
def _kernel_cached(shape, voxel_size_mm, b0_dir, d0, half_spectrum, dtype_name):
    kx = np.fft.fftfreq(shape[0], d=voxel_size_mm[0])
    ky = np.fft.fftfreq(shape[1], d=voxel_size_mm[1])
    if half_spectrum:
        kz = np.fft.rfftfreq(shape[2], d=voxel_size_mm[2])
    else:
        kz = np.fft.fftfreq(shape[2], d=voxel_size_mm[2])
    ks = [kx[:, None, None], ky[None, :, None], kz[None, None, :]]
    # Nyquist planes of even axes stand for +k and -k at once: averaging D over both signs keeps
    # D(k) = D(-k) (a real, self-adjoint operator) for an oblique B0. It removes the cross terms
    # k_i k_j b_i b_j that involve a Nyquist component; axis-aligned B0 is unaffected.
    not_nyquist = [np.ones_like(k) for k in ks]
    for axis, (n, k) in enumerate(zip(shape, ks)):
        if n % 2 == 0:
            not_nyquist[axis] = (np.abs(k) < 0.5 / voxel_size_mm[axis] * (1 - 1e-9)).astype(np.float64)
    k2 = sum(k**2 for k in ks)
    kb2 = sum((ks[i] * b0_dir[i]) ** 2 for i in range(3))
    for i in range(3):
        for j in range(i + 1, 3):
            kb2 = kb2 + 2 * ks[i] * ks[j] * b0_dir[i] * b0_dir[j] * not_nyquist[i] * not_nyquist[j]
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = 1.0 / 3.0 - kb2 / k2
    kernel[0, 0, 0] = d0
    kernel = kernel.astype(np.dtype(dtype_name))
    kernel.setflags(write=False)
    return kernel


def dipole_kernel(shape, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), d0: float = 0.0,
                  half_spectrum: bool = True, dtype=np.float32) -> np.ndarray:
    """Continuous k-space dipole kernel on an FFT grid (read-only, cached).

    Args:
        shape: (nx, ny, nz) FFT grid size (after any padding).
        voxel_size_mm: voxel size in mm along the three array axes.
        b0_dir: B0 direction in voxel axes (normalised here).
        d0: value at k = 0 (0 by default, 1/3 as in SEPIA / qsm-forward).
        half_spectrum: rfft layout (nx, ny, nz//2+1) if True, else full (nx, ny, nz).
        dtype: float32 or float64.

    Returns:
        Real array D(k), DC at [0, 0, 0] (not fft-shifted).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"kernel shape: expected 3 positive sizes, got {shape}")
    return _kernel_cached(shape, check_voxel_size(voxel_size_mm), normalise_b0_dir(b0_dir),
                          float(d0), bool(half_spectrum), np.dtype(dtype).name)


def forward_field(chi_ppm, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=None,
                  d0: float = 0.0) -> np.ndarray:
    """Field (ppm) of a susceptibility map (ppm) by FFT dipole convolution, numpy/scipy (CPU).

    Args:
        chi_ppm: (..., x, y, z) susceptibility in ppm; the last three axes are spatial.
        voxel_size_mm, b0_dir, d0: see `dipole_kernel`.
        pad: padding spec (module doc).

    Returns:
        float32 (..., x, y, z) local field in ppm of B0.
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    shape = chi.shape[-3:]
    full = fft_shape(shape, pad)
    kernel = dipole_kernel(full, voxel_size_mm, b0_dir, d0)
    spectrum = scipy.fft.rfftn(chi, s=full, axes=(-3, -2, -1), workers=-1)
    field = scipy.fft.irfftn(spectrum * kernel, s=full, axes=(-3, -2, -1), workers=-1)
    return np.ascontiguousarray(field[..., : shape[0], : shape[1], : shape[2]], dtype=np.float32)


def forward_field_tf(chi_ppm, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=None,
                     d0: float = 0.0):
    """TensorFlow forward model, differentiable, same result as `forward_field`.

    tf.signal.rfft3d has no registered gradient in TF 2.21; the operator chi -> crop(A pad(chi)),
    A = irfft(D rfft(.)), is self-adjoint (D real and even in k), so its gradient is the same
    operator applied to the upstream gradient (`tf.custom_gradient`).

    Args:
        chi_ppm: float32 tensor (..., x, y, z) in ppm; static spatial shape needed.
        voxel_size_mm, b0_dir, d0, pad: as `forward_field`.

    Returns:
        float32 tensor (..., x, y, z), field in ppm.
    """
    import tensorflow as tf

    chi = tf.convert_to_tensor(chi_ppm, dtype=tf.float32)
    shape = tuple(int(n) for n in chi.shape[-3:])
    return dipole_operator_tf(shape, voxel_size_mm, b0_dir, pad, d0)(chi)


def _self_adjoint_convolution_tf(kernel, shape, full):
    """x (..., x, y, z) -> crop(irfft(kernel * rfft(pad(x)))) with itself as its gradient (the kernel is
    real and even in k, so the operator is self-adjoint); `kernel` broadcasts against rfft3d(x)."""
    import tensorflow as tf

    padding = [[0, f - n] for n, f in zip(shape, full)]

    def apply(x):
        if any(p[1] for p in padding):
            x = tf.pad(x, [[0, 0]] * (len(x.shape) - 3) + padding)
        y = tf.signal.irfft3d(tf.signal.rfft3d(x) * kernel, fft_length=full)
        return y[..., : shape[0], : shape[1], : shape[2]]

    @tf.custom_gradient
    def operator(x):
        return apply(x), apply

    return operator


def dipole_operator_tf(shape, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=None,
                       d0: float = 0.0):
    """Build the TF forward operator for one grid, with its kernel held as a constant.

    Returns:
        A function tensor (..., x, y, z) ppm -> tensor (..., x, y, z) ppm, differentiable.
    """
    import tensorflow as tf

    shape = tuple(int(n) for n in shape)
    full = fft_shape(shape, pad)
    kernel = tf.constant(dipole_kernel(full, voxel_size_mm, b0_dir, d0), dtype=tf.complex64)
    return _self_adjoint_convolution_tf(kernel, shape, full)


def dipole_operator_stack_tf(shape, geometries, pad=None, d0: float = 0.0):
    """The TF forward operator for crops of one grid but several geometries (mixed-protocol targets).

    Args:
        shape: spatial shape (x, y, z) of every crop.
        geometries: list of (voxel_size_mm, b0_dir), one kernel each.
        pad, d0: as `dipole_operator_tf`.

    Returns:
        A function (x (batch, x, y, z) ppm, which (batch,) int32 index into `geometries`) -> (batch, x, y, z)
        ppm: crop b is convolved with kernel which[b]. Differentiable in x (self-adjoint, as
        `forward_field_tf`); the kernels are held once, as a constant stack.
    """
    import tensorflow as tf

    shape = tuple(int(n) for n in shape)
    full = fft_shape(shape, pad)
    kernels = tf.constant(np.stack([dipole_kernel(full, vs, b0, d0) for vs, b0 in geometries]), dtype=tf.complex64)

    def operator(x, which):
        kernel = tf.gather(kernels, tf.cast(which, tf.int32))  # (batch, kx, ky, kz): one per crop
        return _self_adjoint_convolution_tf(kernel, shape, full)(x)

    return operator
