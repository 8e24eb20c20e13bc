"""Pre-training speed recipes on a real patch file: source patches per second, all variants in ONE process.

Variants (same network, same patch file, seeds fixed; interleaved rounds so a load change on the
shared machine hits every variant):
    today     per-patch HDF5 reads (daqsm.network_model.data.patch_dataset), float32, the demo's batch
    memory    the groups read once into memory (load_patch_group), float32
    bf16      memory + mixed_bfloat16 (daqsm/network_model/precision.py)
    bN        memory + N source patches per step (the one target crop per step unchanged)
    bN-bf16   both
Each variant starts from the same weights (seed) and sees the same batches as the others of its batch
size, so the mean loss of the timed steps compares accuracy per step (float32 against bfloat16).

Command (the demo's patch file: `daqsm-demo -o demo_out`, or its steps 1-3):
    TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=$PWD python benchmarks/bench_pretrain_speed.py \\
        --patches demo_out/step3_patches.h5 --steps 6 --rounds 2 --batches 2 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", required=True)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8], help="source batch sizes (first: today's)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base_filters", type=int, default=12)
    parser.add_argument("--target_batch_size", type=int, default=1)
    parser.add_argument("--no-bf16", action="store_true")
    args = parser.parse_args(argv)

    from daqsm.tf_env import import_tensorflow

    tf = import_tensorflow()
    from daqsm.network_model.data import load_patch_group, read_patch_group
    from daqsm.network_model.pretrain_core import build_trainer, check_run, make_batches
    from daqsm.network_model.pretraining import PretrainConfig

    print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}", flush=True)
    on_file = {g: read_patch_group(args.patches, g) for g in ("source", "target")}
    in_memory = {g: load_patch_group(info, 8 * 2**30) for g, info in on_file.items()}
    base = PretrainConfig(datasets_path=args.patches, depth=args.depth, base_filters=args.base_filters,
                          batch_size=args.batches[0], target_batch_size=args.target_batch_size,
                          learning_rate=1e-3, lr_schedule="constant", val_fraction=0.0)
    variants = {"today": (base, on_file), "memory": (base, in_memory)}
    for b in args.batches:
        for bf16 in (False, True) if not args.no_bf16 else (False,):
            if b == args.batches[0] and not bf16:
                continue
            name = (f"b{b}" if b != args.batches[0] else "") + ("-bf16" if bf16 else "")
            variants[name.strip("-")] = (replace(base, batch_size=b, precision="mixed_bfloat16" if bf16 else "float32"),
                                         in_memory)
    strategy = tf.distribute.get_strategy()
    runs = {}
    for name, (cfg, groups) in variants.items():
        phase = check_run(cfg, groups["source"], groups["target"])
        idx = {g: np.arange(groups[g].count) for g in groups}
        trainer = build_trainer(cfg, tf, strategy, groups["source"], groups["target"], [], [], phase, 1000)
        batches = make_batches(cfg, tf, strategy, trainer, groups["source"], groups["target"], idx["source"],
                               idx["target"], 1000)
        t0 = time.perf_counter()
        trainer.step_fn(next(batches))  # tracing
        runs[name] = {"cfg": cfg, "trainer": trainer, "batches": batches, "rates": [], "losses": [],
                      "first_s": time.perf_counter() - t0}
    for _ in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            losses = [float(run["trainer"].step_fn(next(run["batches"]))["loss"]) for _ in range(args.steps)]
            seconds = time.perf_counter() - t0
            run["rates"].append(run["cfg"].batch_size * args.steps / seconds)
            run["losses"] += losses
    today = max(runs["today"]["rates"])
    print(f"load after: {os.getloadavg()}\n")
    print("| variant | source batch | precision | input | s/step (best) | source patches/s (rounds) | best | x today | "
          "mean loss of the timed steps |")
    print("|---|---:|---|---|---:|---|---:|---:|---:|")
    for name, run in runs.items():
        cfg, best = run["cfg"], max(run["rates"])
        print(f"| {name} | {cfg.batch_size} | {cfg.precision} | {'file' if name == 'today' else 'memory'} | "
              f"{cfg.batch_size / best:.2f} | {', '.join(f'{r:.2f}' for r in run['rates'])} | {best:.2f} | "
              f"{best / today:.2f} | {np.mean(run['losses']):.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
