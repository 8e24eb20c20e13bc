"""Benchmark of steps 1 and 3: seconds per synthetic 160^3 map, and patches written per second.

Command (from the repository root; results in benchmarks/results_synth.md):

    nohup env PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/bench_synth.py \
        --maps 10 --patch-maps 50 --workdir /tmp/bench_synth > /tmp/bench_synth.log 2>&1 &

Part 1 runs genChi (all augmentations on, sources in every sample) on the real COSMOS map
(../shared/data/qsm2016, or $QSM_SHARED_DATA) when present, else on a synthetic 160^3 blob, and
reports wall and CPU seconds per map (generation + gzip write). Part 2 makes `--patch-maps` maps,
adds their fields (daqsm.training_data.dipole.forward_field, not timed: that is step 2), then times
genRDFPatchesSyn (64^3 patches, stride 64, brain threshold 0.2, lzf; plus the real local field as a
target when present) and reports patches/s, file size and peak memory (max RSS of the child
process). Each command runs as a child process so its peak memory is its own. Fixed seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QSM_SHARED_DATA", ROOT.parent / "shared" / "data")) / "qsm2016"


def run_child(argv) -> dict:
    """Run a command; return wall seconds, child CPU seconds and child peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    # The child reports its own peak RSS (RUSAGE_CHILDREN would give the max over all children).
    wrapper = ("import resource, runpy, sys\nscript = sys.argv[1]\nsys.argv = sys.argv[1:]\ntry:\n"
               "    runpy.run_path(script, run_name='__main__')\nfinally:\n"
               "    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, argv)], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")][-1]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mib": int(peak.split()[1]) / 1024.0}


def source_files(workdir: Path) -> tuple[str, str, str]:
    if (DATA / "chi_cosmos.nii.gz").exists():
        return str(DATA / "chi_cosmos.nii.gz"), str(DATA / "msk.nii.gz"), "real COSMOS (qsm2016, 160^3)"
    import nibabel as nib
    import scipy.ndimage as ndi

    n = 160
    grid = np.indices((n, n, n), dtype=np.float32) - (n - 1) / 2
    mask = (grid[0] / 60) ** 2 + (grid[1] / 72) ** 2 + (grid[2] / 60) ** 2 <= 1
    chi = ndi.gaussian_filter(np.random.default_rng(0).standard_normal((n, n, n)), 3).astype(np.float32)
    chi = np.where(mask, 0.1 * chi / np.abs(chi).max(), 0).astype(np.float32)
    nib.save(nib.Nifti1Image(chi, np.eye(4)), workdir / "blob_chi.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), workdir / "blob_mask.nii.gz")
    return str(workdir / "blob_chi.nii.gz"), str(workdir / "blob_mask.nii.gz"), "synthetic 160^3 blob"


def add_fields(path: Path) -> float:
    """Append /field (ppm) to a genChi file as step 2 would (not part of the timings)."""
    import h5py

    from daqsm.training_data.dipole import forward_field

    t0 = time.perf_counter()
    with h5py.File(path, "a") as h5:
        n, shape = h5["chi"].shape[0], h5["chi"].shape[1:]
        vs = tuple(h5.attrs["voxel_size_mm"])
        dset = h5.create_dataset("field", (n,) + shape, np.float32, chunks=(1,) + shape, compression="lzf")
        for i in range(n):
            dset[i] = forward_field(h5["chi"][i], vs, tuple(h5.attrs["b0_dir"]), pad="fast")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=10, help="maps for the per-map timing (part 1)")
    parser.add_argument("--patch-maps", type=int, default=50, help="maps cut into patches (part 2; 0 skips it)")
    parser.add_argument("--workdir", default="/tmp/bench_synth")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    chi, mask, label = source_files(work)
    results = {"source": label, "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "loadavg_start": os.getloadavg()}
    genchi = ROOT / "training_data" / "genChi.py"
    common = [chi, "--mask", mask, "--quiet", "--overwrite", "--sources-probability", "1", "--seed", "0"]
    # Part 1: per-map time with every augmentation on (gzip level 1 write included).
    part1 = run_child([genchi, *common, "-n", args.maps, "-o", work / "maps_timing.h5"])
    part1_lzf = run_child([genchi, *common, "-n", args.maps, "-o", work / "maps_timing_lzf.h5", "--compression", "lzf"])
    results["genchi"] = {"maps": args.maps, "wall_s_per_map": part1["wall_s"] / args.maps,
                         "cpu_s_per_map": part1["cpu_s"] / args.maps, "peak_rss_mib": part1["peak_rss_mib"],
                         "wall_s_per_map_lzf": part1_lzf["wall_s"] / args.maps,
                         "file_mib_per_map": os.path.getsize(work / "maps_timing.h5") / 2**20 / args.maps,
                         "note": "wall includes ~3 s of process start-up and source loading, spread over the maps"}
    print(json.dumps(results, indent=1), flush=True)
    if args.patch_maps <= 0:  # part 1 only
        return 0
    # Part 2: patches of `patch-maps` maps.
    maps = work / "maps_patches.h5"
    gen = run_child([genchi, *common, "-n", args.patch_maps, "-o", maps, "--compression", "lzf"])
    results["genchi_patch_maps"] = {"maps": args.patch_maps, "wall_s": gen["wall_s"], "cpu_s": gen["cpu_s"],
                                    "peak_rss_mib": gen["peak_rss_mib"]}
    results["fields_s_untimed_step2"] = add_fields(maps)
    patch_argv = [ROOT / "genRDFPatchesSyn.py", "--source", maps, "-o", work / "patches.h5", "--overwrite", "--quiet"]
    if (DATA / "phs_tissue.nii.gz").exists():
        patch_argv += ["--target-field", DATA / "phs_tissue.nii.gz", "--target-mask", DATA / "msk.nii.gz",
                       "--target-b0-tesla", "3", "--target-te-s", "0.025"]
    part2 = run_child(patch_argv)
    import h5py

    with h5py.File(work / "patches.h5", "r") as h5:
        n_src, n_tgt = h5["source/field"].shape[0], h5["target/field"].shape[0]
    total = n_src + n_tgt
    size_gib = os.path.getsize(work / "patches.h5") / 2**30
    results["patches"] = {"maps": args.patch_maps, "source_patches": int(n_src), "target_patches": int(n_tgt),
                          "wall_s": part2["wall_s"], "cpu_s": part2["cpu_s"], "patches_per_s": total / part2["wall_s"],
                          "peak_rss_mib": part2["peak_rss_mib"], "file_gib": size_gib}
    scale = 500 / args.patch_maps
    results["extrapolated_500_maps"] = {
        "note": f"linear extrapolation x{scale:g} from the measured {args.patch_maps} maps (memory is per volume, "
                "so it does not grow with N)",
        "genchi_hours_wall": results["genchi"]["wall_s_per_map"] * 500 / 3600,
        "patch_s_wall": part2["wall_s"] * scale, "source_patches": int(n_src * scale),
        "patch_file_gib": size_gib * scale}
    results["loadavg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
