"""Benchmark: runtime and accuracy of the classic inversions on the 2016 challenge data (160^3).

Command (from the repository root; the data stays in ../shared/data, nothing is copied):
    PYTHONPATH=$PWD nohup python benchmarks/bench_baselines.py --data ../shared/data/qsm2016 \
        > /tmp/bench_baselines.log 2>&1 &
Prints one Markdown table: method, parameters, seconds, ADMM iterations, NRMSE vs chi_33 (2016
definition, no demeaning), demeaned RC2 rmse, HFEN, XSIM and correlation vs chi_33 inside msk.
Input: phs_tissue (ppm), msk; B0 along the third axis; voxel size from the NIfTI header.
Timings are wall-clock on whatever machine runs it (record its core count and load with the numbers).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "qsm2016"))
    parser.add_argument("--methods", nargs="+", default=["tkd", "l2", "ndi-tv"])
    parser.add_argument("--iterations", type=int, default=None, help="ndi-tv iterations (default: NDITVParams)")
    parser.add_argument("--pad", default="auto", help="FFT zero padding of every method (default auto, as the functions)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        print(f"skipped: 2016 challenge data not found at {args.data}")
        return 0
    from evaluation import baselines as B
    from evaluation import metrics
    from training_data.volume_io import read_volume

    field = read_volume(os.path.join(args.data, "phs_tissue.nii.gz"))
    mask = read_volume(os.path.join(args.data, "msk.nii.gz")).data > 0.5
    chi_33 = read_volume(os.path.join(args.data, "chi_33.nii.gz")).data
    vs = field.voxel_size_mm
    b0 = (0.0, 0.0, 1.0)  # data/README.md: B0 along the third array axis
    print(f"# grid {field.data.shape}, voxel {tuple(round(v, 4) for v in vs)} mm, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}, pad {args.pad}", flush=True)
    print("| method | parameters | seconds | iterations | NRMSE vs chi_33 (%) | RC2 rmse (%) | HFEN | XSIM | corr |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    p = B.NDITVParams() if args.iterations is None else B.NDITVParams(iterations=args.iterations)
    runs = {"tkd": (f"threshold {B.TKD_THRESHOLD}", lambda: (B.tkd(field.data, mask, vs, b0, pad=args.pad), "-")),
            "l2": (f"lambda {B.L2_LAMBDA}", lambda: (B.l2_gradient(field.data, mask, vs, b0, pad=args.pad), "-")),
            "ndi-tv": (f"alpha {p.alpha}, mu {p.mu_grad or 10 * p.alpha:g}, mu_data {p.mu_data}, "
                       f"max it {p.iterations}, tol {p.tol}, B0 {p.b0_tesla} T, TE {p.te_s} s",
                       lambda: _tv(B, field.data, mask, vs, b0, p, args.pad))}
    for name in args.methods:
        params, run = runs[name]
        start = time.perf_counter()
        chi, iterations = run()
        seconds = time.perf_counter() - start
        row = (metrics.nrmse_2016(chi, chi_33, mask), metrics.nrmse_pair(chi, chi_33, mask)[0],
               metrics.hfen(chi, chi_33, mask), metrics.xsim(chi, chi_33, mask), metrics.correlation(chi, chi_33, mask))
        print(f"| {name} | {params} | {seconds:.1f} | {iterations} | " + " | ".join(f"{v:.4g}" for v in row) + " |",
              flush=True)
    return 0


def _tv(B, field, mask, vs, b0, params, pad):
    chi, info = B.ndi_tv(field, mask, None, vs, b0, params=params, pad=pad, return_info=True)
    return chi, f"{info['iterations']}{'' if info['converged'] else ' (max)'}"


if __name__ == "__main__":
    sys.exit(main())
