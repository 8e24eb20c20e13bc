"""Forward dipole model speed on the CPU (issue: foundation benchmark).

Command (from the repo root, package installed):
    python benchmarks/bench_forward.py [--sizes 160 256] [--repeats 7]

Measures ms per volume (median of repeats, after a warm-up) for:
  tf_unpadded    daqsm.training_data.dipole.dipole_operator_tf, pad=None (what steps 2/4/5 call)
  tf_padded      same with pad="auto" (default of step 2)
  tf_bare_fft    tf.signal.rfft3d -> multiply -> irfft3d of the same size (the FFT limit)
  scipy_rfft     daqsm.training_data.dipole.forward_field (numpy/scipy path), pad=None
  numpy_complex  np.fft.fftn -> multiply by the full kernel -> ifftn -> real (the naive reference)
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[160, 256])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from daqsm.training_data.dipole import dipole_kernel, dipole_operator_tf, forward_field

    print("| size | tf_unpadded | tf_padded (auto) | tf_bare_fft | scipy_rfft | numpy_complex "
          "| tf_unpadded / bare | numpy / tf_unpadded |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        shape = (n, n, n)
        chi_np = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        chi = tf.constant(chi_np)
        op = dipole_operator_tf(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), pad=None)
        op_pad = dipole_operator_tf(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), pad="auto")
        kernel = tf.constant(dipole_kernel(shape), tf.complex64)
        full_kernel = dipole_kernel(shape, half_spectrum=False)
        def bare():
            return tf.signal.irfft3d(tf.signal.rfft3d(chi) * kernel, fft_length=shape).numpy()

        row = {
            "tf_unpadded": timed(lambda: op(chi).numpy(), args.repeats),
            "tf_padded": timed(lambda: op_pad(chi).numpy(), max(3, args.repeats // 2)),
            "tf_bare_fft": timed(bare, args.repeats),
            "scipy_rfft": timed(lambda: forward_field(chi_np), args.repeats),
            "numpy_complex": timed(lambda: np.real(np.fft.ifftn(full_kernel * np.fft.fftn(chi_np))).astype(np.float32),
                                   max(3, args.repeats // 2)),
        }
        print(f"| {n}^3 | {row['tf_unpadded']:.0f} | {row['tf_padded']:.0f} | {row['tf_bare_fft']:.0f} | "
              f"{row['scipy_rfft']:.0f} | {row['numpy_complex']:.0f} | {row['tf_unpadded'] / row['tf_bare_fft']:.2f} | "
              f"{row['numpy_complex'] / row['tf_unpadded']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
