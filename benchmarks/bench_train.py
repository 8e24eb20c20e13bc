"""Benchmarks of steps 4 and 5 on CPU: HDF5 input-pipeline cost and seconds per fine-tuning iteration.

1. Training throughput (patches/s; a step = one source + one target batch, both counted) for
   64^3 patches and the default network (depth 4, base 16 filters, batch 2 per domain), with the
   real HDF5 pipeline (daqsm.network_model.data.patch_dataset, gzip chunks, one patch per read) vs the
   same steps on in-memory tensors. Target: ratio in-memory / HDF5 <= 1.15.
2. Seconds per fine-tuning iteration on a 160^3 volume (default network, NDI + TV, dipole_pad auto),
   from the elapsed_s column of the fine-tuning loss log (first iteration, with tracing, excluded).
   Target: <= 6 s on 2 CPU cores.

Command (from the repository root; results go to benchmarks/results_train.md by hand):
    TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=$PWD python benchmarks/bench_train.py --steps 8 --iterations 5
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np


def smooth(rng, shape, sigma=3.0):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.standard_normal(shape), sigma)
    return (x / np.abs(x).max()).astype(np.float32)


def ball(n, frac=0.4):
    idx = np.arange(n) - (n - 1) / 2
    return ((idx[:, None, None] ** 2 + idx[None, :, None] ** 2 + idx[None, None, :] ** 2) <= (frac * n) ** 2)


def write_patches(path, count, n, seed=0):
    import h5py

    from daqsm.training_data.dipole import forward_field

    rng = np.random.default_rng(seed)
    mask = np.repeat(ball(n, 0.45)[None].astype(np.float32), count, axis=0)
    chi = np.stack([smooth(rng, (n, n, n)) * 0.1 for _ in range(count)]) * mask
    field = forward_field(chi) * mask
    with h5py.File(path, "w") as h5:
        for name, items in (("source", {"field": field, "mask": mask, "chi": chi}),
                            ("target", {"field": field[::-1].copy(), "mask": mask, "weight": mask})):
            grp = h5.create_group(name)
            for key, arr in items.items():
                grp.create_dataset(key, data=arr, chunks=(1, n, n, n), compression="gzip")
            grp.attrs["voxel_size_mm"] = [1.0, 1.0, 1.0]
            grp.attrs["b0_dir"] = [0.0, 0.0, 1.0]
        h5["target"].attrs["b0_tesla"] = 3.0
        h5["target"].attrs["te_s"] = 0.025
    return field, mask, chi


def bench_throughput(steps, warmup, n=64, count=16, batch=2):
    import tensorflow as tf

    from daqsm.network_model.data import memory_dataset, patch_dataset, read_patch_group
    from daqsm.network_model.train_model.train import PretrainConfig, build_loss_fn
    from daqsm.network_model.training_loop import make_optimizer, make_train_step
    from daqsm.network_model.unet import DomainAdaptiveUNet
    from daqsm.training_data.dipole import dipole_operator_tf

    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "patches.h5")
    field, mask, chi = write_patches(path, count, n)
    cfg = PretrainConfig(batch_size=batch)
    strategy = tf.distribute.get_strategy()
    model = DomainAdaptiveUNet(cfg.depth, cfg.base_filters).build_for()
    opt = make_optimizer(1e-4)
    opt.build(model.trainable_variables)
    step = make_train_step(strategy, model, opt, build_loss_fn(model, dipole_operator_tf((n, n, n)), 20.0, cfg))
    src, tgt = read_patch_group(path, "source"), read_patch_group(path, "target")
    idx = np.arange(count)
    pipelines = {
        "hdf5": tf.data.Dataset.zip((patch_dataset(src, idx, batch), patch_dataset(tgt, idx, batch, seed=1))),
        "memory": tf.data.Dataset.zip((memory_dataset((field, mask, chi), batch),
                                       memory_dataset((field[::-1], mask, mask), batch, seed=1))),
    }
    rates = {}
    for rnd in range(2):  # interleave so a load change on the shared machine hits both
        for name, ds in pipelines.items():
            it = iter(ds)
            for _ in range(warmup):
                step(next(it))
            t0 = time.perf_counter()
            for _ in range(steps):
                float(step(next(it))["loss"])
            rates.setdefault(name, []).append(2 * batch * steps / (time.perf_counter() - t0))
    return {k: max(v) for k, v in rates.items()}, rates


def bench_finetune(iterations, n=160):
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.unet import build_target_model
    from daqsm.tf_env import seed_everything
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import write_volume

    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(1)
    mask = ball(n, 0.4).astype(np.uint8)
    chi = smooth(rng, (n, n, n)) * 0.1 * mask
    write_volume(os.path.join(tmp, "f.nii.gz"), forward_field(chi, pad="auto") * mask)
    write_volume(os.path.join(tmp, "m.nii.gz"), mask)
    seed_everything(0)
    build_target_model().save(os.path.join(tmp, "pre.keras"))
    out = os.path.join(tmp, "q.nii.gz")
    code = finetune.main(["--model", os.path.join(tmp, "pre.keras"), "--field", os.path.join(tmp, "f.nii.gz"),
                          "--mask", os.path.join(tmp, "m.nii.gz"), "--b0", "3", "--te", "0.025",
                          "--iterations", str(iterations), "--convergence_tol", "0", "-o", out,
                          "--progress", "false"])
    assert code == 0
    with open(os.path.join(tmp, "q_loss.csv"), newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) >= 1]
    t = [float(r["elapsed_s"]) for r in rows]
    return (t[-1] - t[0]) / (len(t) - 1), t[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--skip", choices=("throughput", "finetune"), default=None)
    args = parser.parse_args(argv)
    from daqsm.tf_env import import_tensorflow

    tf = import_tensorflow()
    print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}", flush=True)
    if args.skip != "throughput":
        best, all_rates = bench_throughput(args.steps, args.warmup)
        print(f"throughput patches/s (best of 2 rounds): {best}; all: {all_rates}; "
              f"ratio memory/hdf5 = {best['memory'] / best['hdf5']:.3f}", flush=True)
    if args.skip != "finetune":
        per_it, first = bench_finetune(args.iterations)
        print(f"fine-tuning 160^3: {per_it:.2f} s/iteration (first iteration incl. tracing {first:.1f} s)",
              flush=True)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
