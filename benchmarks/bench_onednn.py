"""oneDNN on against off: seconds per training step and peak memory of the project's U-Net on this CPU.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import, so each setting runs in its own process; the
settings alternate round by round so a load change on the shared machine hits both. Each process
builds the target network (contract 3: Conv3D + BatchNormalization + ReLU, as step 4 exports and
step 5 fine-tunes), times `--steps` gradient steps of an L1 loss on random inputs after one warm-up
step (tracing and kernel selection are not step time), and reports its peak RSS (VmHWM).

Commands (results in benchmarks/results_onednn.md):
    # step 4's source batch: 2 patches of 64^3, the demo's network (depth 3, 12 filters)
    python benchmarks/bench_onednn.py --shape 64 64 64 --batch 2 --depth 3 --base_filters 12
    # step 5 at 1 mm: one whole-brain box of the built-in 1 mm phantom (176 x 208 x 176 padded)
    python benchmarks/bench_onednn.py --shape 176 208 176 --batch 1 --depth 4 --base_filters 8 --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def one_setting(args) -> dict:
    import numpy as np

    from daqsm.network_model.unet import build_target_model
    from daqsm.tf_env import import_tensorflow, seed_everything

    tf = import_tensorflow()
    seed_everything(0)
    model = build_target_model(depth=args.depth, base_filters=args.base_filters)
    rng = np.random.default_rng(0)
    shape = (args.batch, *args.shape, 1)
    field = tf.constant(rng.normal(0, 0.05, shape).astype(np.float32))
    mask = tf.constant(np.ones(shape, np.float32))
    truth = tf.constant(rng.normal(0, 0.05, shape).astype(np.float32))
    optimizer = tf.keras.optimizers.Adam(1e-4)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(model([field, mask], training=True) - truth))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        float(step())
    seconds = (time.perf_counter() - t0) / args.steps
    with open("/proc/self/status") as status:
        peak_gb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**20
    return {"onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "s_per_step": seconds, "peak_rss_gb": peak_gb}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base_filters", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_setting(args)))
        return 0
    rows = []
    for _ in range(args.rounds):
        for setting in ("0", "1"):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
            out = subprocess.run([sys.executable, __file__, "--child", *(argv or sys.argv[1:])], env=env,
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for setting in ("0", "1"):
        mine = [r for r in rows if r["onednn"] == setting]
        print(f"TF_ENABLE_ONEDNN_OPTS={setting}: best {min(r['s_per_step'] for r in mine):.3f} s/step, "
              f"peak {max(r['peak_rss_gb'] for r in mine):.2f} GB")
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
