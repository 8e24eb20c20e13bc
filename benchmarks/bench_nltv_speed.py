"""Seconds per ADMM iteration of nonlinear TV (daqsm.training_data.tv_inversion.ndi_tv) on a brain-sized box.

The unit of work of step 5's lambda rule (its scan: 10 alphas x 20 iterations on the fine-tuning box) and
of the ndi-tv / tv baselines. Default box: the 1 mm built-in case's brain box, 161 x 197 x 161, FFT grid
`pad auto` (243 x 300 x 243), an ellipsoid mask, noise as the field. Results: benchmarks/results_baselines.md.

    python benchmarks/bench_nltv_speed.py [--shape 161 197 161] [--iterations 10] [--linear]
    # two versions, paired (A/B), e.g. a worktree of an older commit at OLD:
    farm-bench -n 3 --timeout 580 --vs "sh -c 'PYTHONPATH=OLD exec python benchmarks/bench_nltv_speed.py'" \\
        -- python benchmarks/bench_nltv_speed.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(161, 197, 161))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--pad", default="auto")
    parser.add_argument("--linear", action="store_true", help="linear TV (TV-ADMM) instead of nonlinear")
    args = parser.parse_args(argv)

    from daqsm.training_data.tv_inversion import NDITVParams, ndi_tv

    shape = tuple(args.shape)
    rng = np.random.default_rng(1)
    grid = np.mgrid[:shape[0], :shape[1], :shape[2]] - np.array(shape)[:, None, None, None] / 2
    mask = sum((g / (n / 2)) ** 2 for g, n in zip(grid, shape)) < 1
    field = (rng.standard_normal(shape).astype(np.float32) * 0.02) * mask
    params = NDITVParams(alpha=1e-3, iterations=args.iterations, b0_tesla=7.0, te_s=0.012, tol=0, linear=args.linear)
    start = time.perf_counter()
    ndi_tv(field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), params, pad=args.pad)
    print(f"{(time.perf_counter() - start) / args.iterations:.3f} s per iteration ({shape}, pad {args.pad}, "
          f"{'linear' if args.linear else 'nonlinear'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
