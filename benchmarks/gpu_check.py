"""GPU check of every learning step at the method's full size, float32 and mixed precision (< 3 min on a GPU).

    python benchmarks/gpu_check.py                       # full size, writes benchmarks/results_gpu.json
    python benchmarks/gpu_check.py --size tiny -o /tmp/gpu_check.json   # proves the script on a CPU

What is measured, each with `precision` float32 and the mixed policy of the device
(mixed_float16 on a GPU, mixed_bfloat16 on a CPU, where TensorFlow has no float16 MaxPool3D kernel):

- pre-training (step 4): patches/s at 128^3, batch 2 source + 2 target patches per step (counted as 4
  patches, as benchmarks/bench_train.py does), the full loss (L1 + NDI + TV) and an Adam update,
  depth 4, 16 base filters: `pretrain_patches_per_s`;
- fine-tuning (step 5): seconds per iteration (NDI + TV on the whole volume, dipole_pad auto, Adam) on
  a 160^3 grid and on the RC2 grid 164 x 205 x 205 (network input padded to a multiple of 16, the loss
  on the true grid, as model_finetune/train.py does): `finetune_s_per_iteration_160`, `..._rc2`;
- inference: seconds for 164 x 205 x 205, overlapping 96^3 tiles (the default) and one whole pass:
  `infer_s_tiled_rc2`, `infer_s_whole_rc2`.
- steps 1-3 (data): seconds per synthetic map (step 1), per field map (step 2, GPU FFT when
  present) and for the patch file of those maps (step 3), on the built-in phantom at 1 mm.

Warm-up iterations (tracing, cuDNN autotuning) are excluded; the median of the timed ones is kept.
Volumes are synthetic (smooth random chi in an ellipsoid, its field): speed does not depend on content.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class CheckSize:
    patch: int = 128
    grid_160: tuple = (160, 160, 160)
    grid_rc2: tuple = (164, 205, 205)
    depth: int = 4
    base_filters: int = 16
    tile: int = 96
    overlap: int = 32
    warmup: int = 2
    timed: int = 5
    data_maps: int = 4
    data_resolution_mm: float = 1.0


SIZES = {"full": CheckSize(),
         "tiny": CheckSize(patch=16, grid_160=(24, 24, 24), grid_rc2=(20, 26, 26), depth=2, base_filters=4,
                           tile=16, overlap=4, warmup=1, timed=2, data_maps=2, data_resolution_mm=6.0)}


def _volume(shape, seed: int = 0):
    """Smooth chi (ppm) in an ellipsoid mask and its field (ppm), float32."""
    from scipy.ndimage import gaussian_filter

    from daqsm.training_data.dipole import forward_field

    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (sum(g**2 for g in grid) <= 0.8).astype(np.float32)
    chi = gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32) * 0.3 * mask
    return chi, (forward_field(chi) * mask).astype(np.float32), mask


def _median_time(fn, warmup: int, timed: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def check_pretrain(size: CheckSize, precision: str) -> float:
    import tensorflow as tf

    from daqsm.network_model.precision import needs_loss_scale, precision_policy
    from daqsm.network_model.train_model.train import PretrainConfig, build_loss_fn
    from daqsm.network_model.training_loop import make_optimizer, make_train_step
    from daqsm.network_model.unet import DomainAdaptiveUNet
    from daqsm.training_data.dipole import dipole_operator_tf

    n = size.patch
    chi, field, mask = zip(*[_volume((n, n, n), seed) for seed in range(2)])
    as_t = [tf.constant(np.stack(a)[..., None]) for a in (field, mask, chi)]
    batch = ((as_t[0], as_t[1], as_t[2]), (as_t[0] * 1.1, as_t[1], as_t[1]))
    with precision_policy(precision):
        model = DomainAdaptiveUNet(size.depth, size.base_filters).build_for()
        optimizer = make_optimizer(1e-4, loss_scale=needs_loss_scale(precision))
        optimizer.build(model.trainable_variables)
    cfg = PretrainConfig(depth=size.depth, base_filters=size.base_filters)
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer,
                           build_loss_fn(model, dipole_operator_tf((n, n, n)), 20.0, cfg))
    seconds = _median_time(lambda: float(step(batch)["loss"]), size.warmup, size.timed)
    return 4.0 / seconds


def check_finetune(size: CheckSize, shape, precision: str) -> float:
    import tensorflow as tf

    from daqsm.network_model.losses import ndi_loss, tv_loss
    from daqsm.network_model.precision import needs_loss_scale, with_precision
    from daqsm.network_model.training_loop import make_optimizer, make_train_step
    from daqsm.network_model.unet import build_target_model
    from daqsm.training_data.dipole import dipole_operator_tf

    _, field, mask = _volume(shape)
    divisor = 2**size.depth
    pads = [((-n) % divisor // 2, (-n) % divisor - (-n) % divisor // 2) for n in shape]
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, shape))
    field_in = tf.constant(np.pad(field, pads)[None, ..., None])
    mask_in = tf.constant(np.pad(mask, pads)[None, ..., None])
    field_c, mask_c = tf.constant(field[None]), tf.constant(mask[None])
    model = with_precision(build_target_model(size.depth, size.base_filters), precision)
    dipole = dipole_operator_tf(shape, pad="auto")

    def loss_fn(_):
        chi = model([field_in, mask_in], training=False)[(0, *crop, 0)][None]
        ndi = tf.reduce_mean(ndi_loss(chi, field_c, mask_c, mask_c, dipole, 20.0))
        return {"loss": ndi + 0.002 * tf.reduce_mean(tv_loss(chi, mask_c, 100.0 / 3.0))}

    optimizer = make_optimizer(1e-4, loss_scale=needs_loss_scale(precision))
    optimizer.build(model.trainable_variables)
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer, loss_fn)
    return _median_time(lambda: float(step(None)["loss"]), size.warmup, size.timed)


def check_infer(size: CheckSize, precision: str) -> dict:
    from daqsm.network_model import tiling
    from daqsm.network_model.precision import with_precision
    from daqsm.network_model.unet import build_target_model

    _, field, mask = _volume(size.grid_rc2)
    predict = tiling.keras_predictor(with_precision(build_target_model(size.depth, size.base_filters), precision))
    divisor = 2**size.depth
    tiled = _median_time(lambda: tiling.predict_tiled(predict, field, mask, size.tile, size.overlap, divisor),
                         1, max(1, size.timed // 2))
    whole = _median_time(lambda: tiling.predict_whole(predict, field, mask, divisor), 1, max(1, size.timed // 2))
    return {"infer_s_tiled_rc2": tiled, "infer_s_whole_rc2": whole}


def check_data_steps(size: CheckSize, workdir: Path) -> dict:
    """Steps 1-3 on the built-in phantom: seconds per map (steps 1, 2) and for the patch file (step 3)."""
    from daqsm.evaluation.demo import write_builtin_source
    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu

    chi_path, mask_path = write_builtin_source(workdir / "source", size.data_resolution_mm, 0)
    timings = {}
    for key, fn, argv in (
            ("step1_s_per_map", genChi.main, [chi_path, "--mask", mask_path, "-n", size.data_maps,
                                              "-o", workdir / "chi.h5", "--quiet"]),
            ("step2_s_per_map", qsmFmapCal_gpu.main, [workdir / "chi.h5", "-o", workdir / "fields.h5"]),
            ("step3_s", genRDFPatchesSyn.main, ["--source", workdir / "chi.h5", "--source-fields",
                                                workdir / "fields.h5", "--patch-size", size.patch,
                                                "-o", workdir / "patches.h5", "--quiet"])):
        t0 = time.perf_counter()
        if fn([str(a) for a in argv]):
            raise SystemExit(f"gpu_check: {key} failed")
        timings[key] = (time.perf_counter() - t0) / (size.data_maps if key != "step3_s" else 1)
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("-o", "--output", default=str(Path(__file__).with_name("results_gpu.json")))
    parser.add_argument("--skip-data-steps", action="store_true", help="only steps 4, 5 and inference")
    args = parser.parse_args(argv)
    from daqsm.tf_env import import_tensorflow

    tf = import_tensorflow()
    size = SIZES[args.size]
    gpus = tf.config.list_physical_devices("GPU")
    mixed = "mixed_float16" if gpus else "mixed_bfloat16"
    record = {"size": args.size, "settings": asdict(size), "device": "GPU" if gpus else "CPU",
              "gpus": [d.name for d in gpus], "tensorflow": tf.__version__, "results": {}}
    t_start = time.perf_counter()
    if not args.skip_data_steps:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            record["results"]["data"] = check_data_steps(size, Path(tmp))
        print(f"steps 1-3: {record['results']['data']}", flush=True)
    for precision in ("float32", mixed):
        res = {"pretrain_patches_per_s": check_pretrain(size, precision),
               "finetune_s_per_iteration_160": check_finetune(size, size.grid_160, precision),
               "finetune_s_per_iteration_rc2": check_finetune(size, size.grid_rc2, precision),
               **check_infer(size, precision)}
        record["results"][precision] = res
        print(f"{precision}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()), flush=True)
    record["total_s"] = time.perf_counter() - t_start
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output + ".part"
    with open(tmp_out, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp_out, args.output)
    print(f"gpu_check: {record['device']}, {record['total_s']:.0f} s in all; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
