"""Benchmark: peak memory of daqsm-infer's QC residual, whole grid vs the brain box (issue 23).

Command (from the repository root; results in benchmarks/results_infer.md, "QC residual" table):

    nice python benchmarks/bench_qc.py --cases grid320 box320 box512

Each case runs in its own subprocess (peak resident memory = its own ru_maxrss). Input: a grid of
N^3 float32 zeros holding a small brain, a ball of radius 40 voxels (a 1 mm neonate-sized mask on
a large field of view) with a smooth chi and its field; the residual uses fine-tuning's definition
(daqsm/qc/residual.py) with pad 'auto'. 'grid' computes it on the whole grid (main
before issue 23), 'box' as daqsm-infer does now (daqsm.network_model.infer.qc_in_brain_box). The
baseline is the process's peak after the inputs are built.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {"grid320": (320, "grid"), "box320": (320, "box"), "box512": (512, "box")}


def run_case(n: int, mode: str) -> dict:
    import numpy as np

    sys.path.insert(0, ROOT)
    from daqsm.network_model.infer import qc_in_brain_box
    from daqsm.qc.residual import residual_map_ppm, residual_summary

    r = 40
    grid = np.zeros((n, n, n), np.float32)
    c = n // 2
    ax = np.arange(-r, r + 1, dtype=np.float32)
    ball = (ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2) <= r * r
    mask = np.zeros((n, n, n), bool)
    mask[c - r:c + r + 1, c - r:c + r + 1, c - r:c + r + 1] = ball
    chi = grid.copy()
    chi[mask] = 0.05
    field = grid.copy()
    field[mask] = 0.01
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "grid":
        residual = residual_map_ppm(chi, field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), "auto", None)
        summary = residual_summary(residual, field, mask, None)
    else:
        residual, summary = qc_in_brain_box(chi, field, mask, None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "mode": mode, "seconds": round(seconds, 2), "baseline_gb": round(base / 2**20, 2),
            "peak_gb": round(peak / 2**20, 2), "qc_gb": round((peak - base) / 2**20, 2),
            "rms": summary["ResidualRmsPpm"] if "ResidualRmsPpm" in summary else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--case-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case_json:
        n, mode = CASES[args.case_json]
        print(json.dumps(run_case(n, mode)))
        return 0
    print("| case | grid | QC computed on | seconds | peak RSS before QC | peak RSS | QC's own peak |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        out = subprocess.run([sys.executable, __file__, "--case-json", name], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        where = "whole grid (before)" if r["mode"] == "grid" else "brain box (now)"
        print(f"| {name} | {r['n']}^3 | {where} | {r['seconds']} | {r['baseline_gb']} GB | {r['peak_gb']} GB | "
              f"{r['qc_gb']} GB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
