"""Time and peak memory of the RC2-like simulator: four cases at 1 mm (issue: target simulation).

Command (repo root, package installed):
    python benchmarks/bench_simulate.py [--data ../shared/data] [--resolution 1.0]

Runs `python -m training_data.simulate` in a subprocess for the built-in phantom and, when the
shared data is present, for the RC2 segmentation, and reports wall seconds and the subprocess's
peak resident memory (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_case(source: str, resolution: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "training_data.simulate", "--source", source, "-o", out,
                        "--resolution", str(resolution), "--quiet"], check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        seconds = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak_kb, before) / 1024 / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--resolution", type=float, default=1.0)
    args = parser.parse_args(argv)
    sources = ["builtin"]
    if (Path(args.data) / "rc2_phantom" / "SegmentedModel.nii.gz").exists():
        sources.append(str(Path(args.data) / "rc2_phantom"))
    print("| source | four cases, seconds | peak memory (GB) |\n|---|---:|---:|")
    for source in sources:
        seconds, peak_gb = run_case(source, args.resolution)
        print(f"| {source} | {seconds:.1f} | {peak_gb:.2f} |", flush=True)


if __name__ == "__main__":
    main()
