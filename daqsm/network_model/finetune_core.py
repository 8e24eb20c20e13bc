"""Step 5's core on arrays: `finetune_volume(model, target, params) -> FinetuneResult`; writes nothing.

The file shell (daqsm/network_model/finetuning.py: read and check inputs once, lock, sidecars, atomic
writes) and the Python API (`daqsm.finetune`) both call this function.

Objective (daqsm.network_model.losses): L = NDI + lambda_tv * TV [+ prior term], minimised over the
network's weights on the brain's bounding box (a margin of 2**(depth-1) voxels), by Adam with a linear
learning-rate ramp, starting from the pre-trained target model.

lambda_tv: `params.lambda_tv` 'auto' picks it per case from the data (daqsm.network_model.tv_weight:
nonlinear TV's discrepancy rule mapped to network units); a number overrides it.

Keeping the pre-trained prior (`params.prior`, `params.trainable`): at the right lambda the objective's
own minimiser is TV's answer, so a network that converges erases what pre-training learned
(docs/physics.md). 'map' adds prior_weight * mean_mask((chi - chi_0) label_scale)^2, a pull towards the
pre-trained map chi_0; 'weights' adds prior_weight * sum (w - w_0)^2 / n_weights (L2-SP, Li et al.
ICML 2018); `trainable` 'decoder' updates only the decoder convolutions and the output layer, 'norm'
only the batch normalisations' gamma / beta (the DSBN target affine).

Stop (daqsm.network_model.stopping.StoppingRule): the discrepancy test stops at the first iteration
whose NDI reaches tau * max(noise energy, the lambda rule's target): the target counts the residual
floor (model error) the data cannot be fitted below, so the test fires at 1 mm too; else a flat loss,
else the iteration budget.

BN runs in inference mode (the target domain's moving statistics), so iteration 0 is exactly the
pre-trained prediction and the result does not depend on background padding.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from daqsm.errors import InputError

TRAINABLE = ("all", "decoder", "norm")


@dataclass
class FinetuneResult:
    """What fine-tuning produced, in memory.

    Attributes:
        chi: float32 (x, y, z) susceptibility in ppm on the target's full grid, 0 outside the mask
            (None when the run stopped on a non-finite loss).
        record: the sidecar's 'FineTuning' entry and companions (iterations, stop reason, noise,
            lambda_tv and its rule, initial / final terms, box, phase scale).
        log: one dict per logged iteration (step, loss terms, elapsed_s); row 0 is the start.
        model: the fine-tuned keras model.
        status: 'ok' or 'nan' (stopped on a non-finite loss; chi is None).
    """

    chi: np.ndarray | None
    record: dict
    log: list
    model: object
    status: str = "ok"
    messages: list = field(default_factory=list)


class MemoryLog:
    """The loop's log in memory (`training_loop.run_loop` writes to it); the shell saves it as CSV."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, step: int, terms: dict) -> None:
        self.rows.append({"step": int(step), **{k: float(v) for k, v in terms.items()}})

    def close(self) -> None:
        pass


def centred_padding(shape, step: int) -> list:
    """[(before, after)] per axis to reach the next multiple of `step` (split evenly)."""
    pads = []
    for n in shape:
        extra = (-int(n)) % step
        pads.append((extra // 2, extra - extra // 2))
    return pads


def select_trainable(model, which: str) -> int:
    """Freeze all layers but the chosen subset; returns the number of trainable weights (scalars)."""
    if which not in TRAINABLE:
        raise InputError(f"trainable: expected one of {', '.join(TRAINABLE)}, got {which!r}")
    import keras

    for layer in model.layers:
        if which == "all":
            layer.trainable = True
        elif which == "decoder":
            layer.trainable = layer.name.startswith("dec") or layer.name == "out_conv"
        else:  # norm: the target domain's BN affine (gamma, beta); statistics stay frozen (inference mode)
            layer.trainable = isinstance(layer, keras.layers.BatchNormalization)
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def loop_seconds(max_minutes: float, spent_s: float) -> float:
    """Wall time left to the iterations of a `max_minutes` budget of which `spent_s` is gone (the scan,
    tracing): 0 means no limit; a spent budget still leaves one iteration (a tiny positive number)."""
    if not max_minutes:
        return 0.0
    return max(60.0 * float(max_minutes) - float(spent_s), 1e-9)


def check_params(params) -> None:
    """The number rules of step 5's parameters (the command and the API both get them)."""
    from daqsm.network_model.config import key_option
    from daqsm.network_model.tv_weight import parse_lambda_tv
    from daqsm.validate import check_config

    check_config(params, spell=key_option)  # the rules declared on FinetuneConfig's fields, choices included
    if params.iterations < (0 if getattr(params, "fast", False) else 1):  # --fast: 0 updates
        raise InputError(f"--iterations: expected an integer >= 1, got {params.iterations}")
    parse_lambda_tv(params.lambda_tv)


def finetune_volume(model, target, params, info: dict | None = None, monitor=None, monitor_every: int = 10,
                    say=None) -> FinetuneResult:
    """Fine-tune `model` on one target volume; nothing is written (module docstring).

    Args:
        model: the pre-trained target keras model (contract 3); it is updated in place.
        target: daqsm.network_model.target_data.TargetVolume (field ppm, mask, weight, geometry, phase).
        params: FinetuneConfig (the file fields are ignored here).
        info: describe_target_model(model) (depth, label_scale); computed when None.
        monitor: optional callable(iteration, chi) with chi float32 (x, y, z) ppm on the full grid,
            called every `monitor_every` updates and at 0 (benchmarks; the stop never sees it).
        say: callable(str) for one-line notes (the lambda rule's decision); default: none.

    Returns:
        FinetuneResult.

    Units:
        The field is in ppm; NDI compares exp(i s f) with exp(i s D chi), s = phase_rad_per_ppm
        (params.phase_rad_per_ppm or the target's 2 pi gamma_bar B0 TE) in rad/ppm.
    """
    from daqsm.tf_env import import_tensorflow, seed_everything

    tf = import_tensorflow()
    from daqsm.network_model.losses import finetune_terms, ndi_loss, tv_loss
    from daqsm.network_model.precision import check_precision, needs_loss_scale, with_precision
    from daqsm.network_model.stopping import StoppingRule, noise_energy
    from daqsm.network_model.target_data import phase_scale
    from daqsm.network_model.tiling import brain_box
    from daqsm.network_model.training_loop import make_optimizer, make_train_step, run_loop
    from daqsm.network_model.tv_weight import FALLBACK_ALPHA, LambdaChoice, choose_lambda_tv, lambda_from_alpha, parse_lambda_tv
    from daqsm.network_model.unet import describe_target_model
    from daqsm.qc.noise import estimate_noise_ppm
    from daqsm.training_data.dipole import dipole_operator_tf

    started = time.perf_counter()  # the max_minutes budget counts from here: the scan is part of it
    check_params(params)
    say = say or (lambda _line: None)
    messages: list = []
    phase = phase_scale(target, params.phase_rad_per_ppm)  # the one rule (target_data)
    precision = check_precision(params.precision)
    info = info or describe_target_model(model)
    if precision != "float32":  # the same weights, convolutions in reduced precision
        model = with_precision(model, precision)
    seed_everything(params.seed)
    divisor = 2 ** info["depth"]
    box = brain_box(target.mask, divisor)
    field_b, mask_b, weight_b = target.field_ppm[box], target.mask[box], target.weight[box]
    shape = field_b.shape
    geometry = target.geometry
    given = parse_lambda_tv(params.lambda_tv)
    if given is None and params.iterations == 0:  # --fast: no update, so no weight to choose
        choice = LambdaChoice(lambda_from_alpha(FALLBACK_ALPHA, float(phase), geometry.voxel_size_mm,
                                                info["label_scale"]), "not-run", FALLBACK_ALPHA, None,
                              "no fine-tuning (--fast): the lambda rule was not run")
    elif given is None:
        choice = choose_lambda_tv(field_b, mask_b, weight_b, geometry.voxel_size_mm, geometry.b0_dir, float(phase),
                                  info["label_scale"], params.dipole_pad, iterations=params.lambda_scan_iterations,
                                  progress=params.progress, residual_factor=params.residual_factor)
        if choice.rule != "discrepancy":
            say(choice.note)
        messages.append(choice.note)
    else:
        choice = LambdaChoice(given, "given", None, None, f"lambda_tv {given:g} given")
    lambda_tv = choice.lambda_tv

    pads = centred_padding(shape, divisor)
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, shape))

    def padded(a):
        return tf.constant(np.pad(a, pads)[None, ..., None], tf.float32)

    field_in, mask_in = padded(field_b), padded(mask_b)
    field_c = tf.constant(field_b[None], tf.float32)
    mask_c = tf.constant(mask_b[None], tf.float32)
    weight_c = tf.constant(weight_b[None], tf.float32)
    dipole = dipole_operator_tf(shape, geometry.voxel_size_mm, geometry.b0_dir, params.dipole_pad)
    label_scale = float(info["label_scale"])

    def predict():
        chi = model([field_in, mask_in], training=False)  # inference-mode BN (module docstring)
        return chi[(0, *crop, 0)][None]                   # (1, x, y, z): the box's grid

    n_trainable = select_trainable(model, params.trainable)
    chi_start = tf.constant(predict())
    start_weights = [tf.constant(v) for v in model.trainable_variables]

    def prior_term(chi):
        if params.prior == "map":
            diff = (chi - chi_start) * label_scale
            return tf.reduce_sum(tf.square(diff) * mask_c) / tf.reduce_sum(mask_c)
        if params.prior == "weights":
            return tf.add_n([tf.reduce_sum(tf.square(v - v0)) for v, v0 in
                             zip(model.trainable_variables, start_weights)]) / float(max(n_trainable, 1))
        return tf.constant(0.0)

    def loss_fn(_batch):
        chi = predict()
        ndi = tf.reduce_mean(ndi_loss(chi, field_c, weight_c, mask_c, dipole, phase))
        tv = tf.reduce_mean(tv_loss(chi, mask_c, label_scale))
        terms = finetune_terms(ndi, tv, lambda_tv)
        if params.prior != "none":
            prior = prior_term(chi)
            terms = {**terms, "loss": terms["loss"] + params.prior_weight * prior, "prior": prior}
        return terms

    sigma = params.noise_ppm if params.noise_ppm is not None else estimate_noise_ppm(field_b, mask_b, weight_b)
    energy = noise_energy(sigma, phase)  # recorded even when the rule is off (tau 0)
    target_ndi = max(energy, choice.ndi_target) if (params.stop_model_error and choice.ndi_target) else energy
    rule = StoppingRule(target_ndi if params.tau > 0 else None, params.tau, params.convergence_window,
                        params.convergence_tol, min_iterations=params.warmup_iterations)
    strategy = tf.distribute.get_strategy()
    optimizer = make_optimizer(params.learning_rate, params.lr_schedule, params.iterations,
                               warmup_steps=params.warmup_iterations, loss_scale=needs_loss_scale(precision))
    optimizer.build(model.trainable_variables)
    step_fn = make_train_step(strategy, model, optimizer, loss_fn)

    def full_map():
        chi_full = np.zeros(target.mask.shape, np.float32)
        chi_full[box] = predict()[0].numpy() * mask_b
        return chi_full

    if monitor is not None:
        train_step, updates = step_fn, [0]

        def step_fn(batch):  # noqa: F811 (the monitored step)
            terms = train_step(batch)
            updates[0] += 1
            if updates[0] % max(1, int(monitor_every)) == 0:
                monitor(updates[0], full_map())
            return terms

        monitor(0, full_map())
    evaluate = tf.function(loss_fn)
    initial = {k: float(v) for k, v in evaluate(None).items()}
    log = MemoryLog()
    log.write(0, {**initial, "elapsed_s": 0.0})
    t0 = time.perf_counter()
    result = run_loop(step_fn, itertools.repeat(None), tf.Variable(0, dtype=tf.int64), params.iterations, log,
                      convergence=rule, progress=params.progress, desc="fine-tuning",
                      max_seconds=loop_seconds(params.max_minutes, t0 - started))
    seconds = time.perf_counter() - t0
    if result.reason == "time":
        line = (f"max_minutes {params.max_minutes:g} reached after {result.step} iterations, before the stopping "
                "rule fired: the map is less converged than without the limit")
        say(line)
        messages.append(line)
    for layer in model.layers:  # the saved model is whole again
        layer.trainable = True
    if precision != "float32":
        model = with_precision(model, "float32")
    reason = "done" if result.reason == "running" else result.reason
    record = {"FineTuning": {"iterations": int(result.step), "stop_reason": reason,
                             "max_iterations": int(params.iterations), "noise_ppm": float(sigma),
                             "noise_estimated": params.noise_ppm is None, "noise_energy": energy,
                             "stop_ndi_target": target_ndi, "tau": params.tau, "initial": initial,
                             "lambda_tv": lambda_tv, "LambdaTV": choice.record(), "prior": params.prior,
                             "prior_weight": params.prior_weight, "trainable": params.trainable,
                             "trainable_weights": n_trainable, "seconds": round(seconds, 2),
                             "seconds_per_iteration": round(seconds / max(int(result.step), 1), 3),
                             "max_minutes": params.max_minutes,
                             "seconds_with_scan": round(time.perf_counter() - started, 2)},
              "Box": [[b.start, b.stop] for b in box], "PhaseRadPerPpm": float(phase)}
    if result.reason == "nan":
        record["FineTuning"]["stop_reason"] = "nan"
        return FinetuneResult(None, record, log.rows, model, "nan", messages)
    final = {k: float(v) for k, v in evaluate(None).items()}  # the map that is returned
    record["FineTuning"]["final"] = final
    record["FineTuning"]["residual_over_noise"] = (final["ndi"] / energy) if energy else None
    chi = full_map()
    if not np.all(np.isfinite(chi)):
        raise InputError("fine-tuning produced NaN/Inf values; nothing written (lower --learning_rate)")
    return FinetuneResult(chi, record, log.rows, model, "ok", messages)
