"""Time and peak memory of the RC2-like simulator: four cases at 1 mm (issue: target simulation).

Command (repo root, package installed):
    python benchmarks/bench_simulate.py [--data ../shared/data] [--resolution 1.0] [--keep-gibbs-ringing]
    python benchmarks/bench_simulate.py --gibbs-only [--data ../shared/data]   # the truth's Gibbs removal alone

Runs `python -m daqsm.training_data.simulator.simulate` in a subprocess for the built-in phantom and, when the
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


def run_case(source: str, resolution: float, keep_ringing: bool = False) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "daqsm.training_data.simulator.simulate", "--source", source, "-o", out,
                        "--resolution", str(resolution), "--quiet"] + ["--keep-gibbs-ringing"] * keep_ringing, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        seconds = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak_kb, before) / 1024 / 1024


def time_gibbs_removal(source: str, resolution: float) -> dict:
    """Wall and CPU seconds of `remove_gibbs_ringing` on one Sim2 truth (cropped in k-space, masked support)."""
    import numpy as np

    from daqsm.training_data.simulator import simulate as S
    from daqsm.training_data.simulator.gibbs import remove_gibbs_ringing
    from daqsm.training_data.simulator.gre import crop_kspace
    from daqsm.training_data.simulator.texture import texture_ppm
    from daqsm.training_data.simulator.tissue import BRAIN_LABELS, tissue_maps

    anatomy = S.load_builtin(S.RC2_NATIVE_MM * resolution) if source == "builtin" else S.load_rc2_phantom(source)
    shape, _, _ = S.output_grid(anatomy, resolution)
    brain = anatomy.mask & np.isin(anatomy.labels, BRAIN_LABELS)
    chi, _, _ = tissue_maps(anatomy.labels, brain, texture_ppm(anatomy.labels, anatomy.voxel_size_mm, 0), "Sim2",
                            chiref_ppm=anatomy.chiref_ppm)
    cropped = crop_kspace(chi, shape)
    mask = S.resample_labels(anatomy.mask.astype(np.uint8), shape) > 0
    wall, cpu = time.perf_counter(), time.process_time()
    remove_gibbs_ringing(cropped, mask)
    return {"grid": shape, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--keep-gibbs-ringing", action="store_true", help="simulate without the truth's Gibbs removal")
    parser.add_argument("--gibbs-only", action="store_true", help="time the truth's Gibbs removal alone (Sim2)")
    args = parser.parse_args(argv)
    sources = ["builtin"]
    if (Path(args.data) / "rc2_phantom" / "SegmentedModel.nii.gz").exists():
        sources.append(str(Path(args.data) / "rc2_phantom"))
    print(f"# cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}", flush=True)
    if args.gibbs_only:
        print("| source | output grid | Gibbs removal wall s | CPU s |\n|---|---|---:|---:|")
        for source in sources:
            t = time_gibbs_removal(source, args.resolution)
            print(f"| {source} | {t['grid']} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} |", flush=True)
        return
    print("| source | four cases, seconds | peak memory (GB) |\n|---|---:|---:|")
    for source in sources:
        seconds, peak_gb = run_case(source, args.resolution, args.keep_gibbs_ringing)
        print(f"| {source} | {seconds:.1f} | {peak_gb:.2f} |", flush=True)


if __name__ == "__main__":
    main()
