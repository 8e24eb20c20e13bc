"""Benchmark: inference time (160^3) and peak memory of tiled inference (320^3) with a U-Net-sized model.

Command (from the repository root; results in benchmarks/results_infer.md):

    TF_CPP_MIN_LOG_LEVEL=2 nohup python benchmarks/bench_infer.py > benchmarks/out/bench_infer.log 2>&1 &

Options: --cases whole160 tiled160 tiled320 (default all), --tile 96 --overlap 32, --threads N.
Each case runs in its own subprocess so that its peak resident memory (resource.getrusage
ru_maxrss, kB on Linux) is its own; the subprocess reports the peak after building the model
(TensorFlow + model baseline) and after inference. Tiled and whole-volume outputs at 160^3 are
saved under benchmarks/out/ and compared (NRMSE inside the mask).

The model is built here because the project U-Net (daqsm/network_model/unet.py) is written in parallel:
a 3-D U-Net of the method's size - depth 4 (2^3 max-pooling), base 16 filters doubling per level,
two 3x3x3 convolutions + BatchNormalization + ReLU per level, nearest-neighbour upsampling, skip
concatenations, final 1x1x1 linear convolution, output x mask - with seeded random weights
(inference cost does not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT_DIR = os.path.join(ROOT, "benchmarks", "out")
CASES = {"whole160": (160, True), "tiled160": (160, False), "tiled320": (320, False)}


def build_unet(depth: int = 4, base: int = 16, seed: int = 0):
    """Two-input U-Net of the method's size (module doc), channels-last, any spatial size / 2**depth."""
    import keras
    from keras import layers

    from daqsm.tf_env import seed_everything

    seed_everything(seed)
    field = keras.Input((None, None, None, 1), name="field_ppm")
    mask = keras.Input((None, None, None, 1), name="mask")
    x = layers.Concatenate()([field, mask])

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv3D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    skips = []
    for level in range(depth):
        x = block(x, base * 2**level)
        skips.append(x)
        x = layers.MaxPooling3D(2)(x)
    x = block(x, base * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Concatenate()([layers.UpSampling3D(2)(x), skips[level]])
        x = block(x, base * 2**level)
    chi = layers.Conv3D(1, 1)(x)
    return keras.Model([field, mask], layers.Multiply()([chi, mask]))


def phantom(n: int):
    """Ellipsoid mask and a smooth dipole-like field (ppm), float32, built without large temporaries."""
    ax = (np.arange(n, dtype=np.float32) - n / 2) / (0.45 * n)
    mask = (ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2) <= 1
    field = np.empty((n, n, n), np.float32)
    for i in range(n):  # slice by slice: keeps the benchmark's own memory to one volume
        field[i] = 0.05 * np.sin(6 * ax[i]) * np.cos(5 * ax[:, None]) * np.sin(7 * ax[None, :]) * mask[i]
    return field, mask


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(name: str, tile: int, overlap: int) -> dict:
    """One case in this process; prints a JSON line."""
    from daqsm.tf_env import import_tensorflow

    import_tensorflow()
    from daqsm.network_model import tiling

    n, whole = CASES[name]
    model = build_unet()
    predict = tiling.keras_predictor(model)
    field, mask = phantom(n)
    # warm-up on one small tile: tracing and oneDNN kernel selection are not inference time
    predict(np.zeros((1, 32, 32, 32, 1), np.float32), np.ones((1, 32, 32, 32, 1), np.float32))
    base_mb = maxrss_mb()
    start = time.perf_counter()
    if whole:
        chi = tiling.predict_whole(predict, field, mask, 16)
        tiles = 1
    else:
        chi = tiling.predict_tiled(predict, field, mask, tile, overlap, 16)
        tiles = tiling.count_tiles(field.shape, tile, overlap, 16)
    seconds = time.perf_counter() - start
    if n <= 160:
        os.makedirs(OUT_DIR, exist_ok=True)
        np.save(os.path.join(OUT_DIR, f"{name}.npy"), chi)
    result = {"case": name, "n": n, "mode": "whole" if whole else "tiled", "tile": None if whole else tile,
              "overlap": None if whole else overlap, "tiles": tiles, "seconds": round(seconds, 1),
              "peak_rss_mb_before_inference": round(base_mb), "peak_rss_mb": round(maxrss_mb()),
              "params": int(model.count_params())}
    print("RESULT " + json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--tile", type=int, default=96)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF default)")
    p.add_argument("--_one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads)
    if args._one:
        run_case(args._one, args.tile, args.overlap)
        return 0
    results = []
    for name in args.cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--_one", name, "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (rc {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    paths = [os.path.join(OUT_DIR, f"{c}.npy") for c in ("whole160", "tiled160")]
    if all(os.path.exists(p) for p in paths):
        whole, tiled = (np.load(p) for p in paths)
        inside = phantom(160)[1]
        nrmse = np.linalg.norm(tiled[inside] - whole[inside]) / np.linalg.norm(whole[inside])
        print(json.dumps({"nrmse_tiled_vs_whole_160_percent": round(100 * float(nrmse), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
