"""Where one fine-tuning iteration's time goes at 1 mm: the network's forward and backward against the NDI's FFTs.

Loads the shipped model and one case folder, cuts the brain box as daqsm-finetune does (padded to 2**depth),
and times, each as a `tf.function` after one warm-up call (mean of 3): the NDI data term's gradient with
respect to chi for each FFT padding given; the network's forward + backward with the TV term; the forward
alone. Results: benchmarks/results_finetune.md ("A larger learning rate at 1 mm").

Command (WS: the work folder of train_shipped_model.py; quiet machine):
    python benchmarks/bench_finetune_step.py WS/targets/Sim2Snr1 auto fast none
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _mean_seconds(fn, repeats: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    import numpy as np
    import tensorflow as tf

    from daqsm.network_model.finetune_core import centred_padding
    from daqsm.network_model.finetuning import load_target_model
    from daqsm.network_model.losses import ndi_loss, tv_loss
    from daqsm.network_model.shipped import default_model_path
    from daqsm.network_model.target_data import load_case, phase_scale
    from daqsm.network_model.tiling import brain_box
    from daqsm.training_data.dipole import dipole_operator_tf, fft_shape

    case, pads = argv[0], argv[1:] or ["auto"]
    target = load_case(case, None, None, check=True)
    model, info = load_target_model(default_model_path())
    box = brain_box(target.mask, 2 ** info["depth"])
    field, mask = target.field_ppm[box].astype(np.float32), (target.mask[box] > 0).astype(np.float32)
    padding = centred_padding(field.shape, 2 ** info["depth"])
    crop = tuple(slice(b, b + n) for (b, _), n in zip(padding, field.shape))
    field_in = tf.constant(np.pad(field, padding)[None, ..., None])
    mask_in = tf.constant(np.pad(mask, padding)[None, ..., None])
    field_c, mask_c = tf.constant(field[None]), tf.constant(mask[None])
    phase, g = float(phase_scale(target, None)), target.geometry
    print(f"box {field.shape}, network input {tuple(field_in.shape[1:4])}")
    chi = tf.Variable(tf.zeros_like(field_c))
    for pad in pads:
        dipole = dipole_operator_tf(field.shape, g.voxel_size_mm, g.b0_dir, pad)

        @tf.function
        def ndi_gradient():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(ndi_loss(chi, field_c, mask_c, mask_c, dipole, phase))
            return tape.gradient(loss, chi)

        print(f"NDI gradient, pad {pad} (FFT grid {fft_shape(field.shape, pad)}): {_mean_seconds(ndi_gradient):.3f} s")

    @tf.function
    def network_gradient():
        with tf.GradientTape() as tape:
            out = model([field_in, mask_in], training=False)[(0, *crop, 0)][None]
            loss = tf.reduce_mean(tf.square(out)) + tf.reduce_mean(tv_loss(out, mask_c, info["label_scale"]))
        return tape.gradient(loss, model.trainable_variables)

    print(f"network forward + backward with TV: {_mean_seconds(network_gradient):.3f} s")
    forward = tf.function(lambda: model([field_in, mask_in], training=False))
    print(f"network forward: {_mean_seconds(forward):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
