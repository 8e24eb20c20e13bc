"""ONNX export of a default-size target model: export time, onnxruntime vs Keras difference and speed.

    python benchmarks/bench_onnx.py [--size 96] [--depth 4] [--base-filters 16]

Random weights with randomised BN statistics (the export must carry the target-domain statistics);
the difference is max |ONNX - Keras| in ppm on a random field in a ball mask. Results: results_onnx.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-filters", type=int, default=16)
    args = p.parse_args()
    import keras
    import onnxruntime as ort

    from daqsm.network_model.export import check_volume, export_onnx
    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(0)
    model = build_target_model(args.depth, args.base_filters)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "_bn" in layer.name:
            g, b, m, v = layer.get_weights()
            layer.set_weights([1 + 0.2 * rng.standard_normal(g.shape), 0.1 * rng.standard_normal(b.shape),
                               0.2 * rng.standard_normal(m.shape), 0.5 + rng.random(v.shape)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        start = time.perf_counter()
        export_onnx(model, path)
        export_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 1e6
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        field, mask = check_volume((args.size,) * 3, seed=1)
        want = np.asarray(model([field, mask], training=False))
        start = time.perf_counter()
        want = np.asarray(model([field, mask], training=False))
        keras_s = time.perf_counter() - start
        session.run(None, {"field_ppm": field, "mask": mask})
        start = time.perf_counter()
        got = session.run(None, {"field_ppm": field, "mask": mask})[0]
        ort_s = time.perf_counter() - start
    print(f"depth {args.depth}, base filters {args.base_filters}, {model.count_params()} parameters, "
          f"volume {args.size}^3: export {export_s:.1f} s, {size_mb:.1f} MB, max |ONNX - Keras| "
          f"{float(np.max(np.abs(got - want))):.2e} ppm (max |chi| {float(np.max(np.abs(want))):.3g}); "
          f"one pass: keras {keras_s:.2f} s, onnxruntime {ort_s:.2f} s")


if __name__ == "__main__":
    main()
