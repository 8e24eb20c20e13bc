"""Step 5 — per-dataset fine-tuning: pre-trained target model + one field map (ppm) -> QSM (ppm, NIfTI).

Minimises L = NDI + lambda_tv * TV (daqsm.network_model.losses) on the brain's bounding box (plus a
margin of 2**(depth-1) voxels), starting from the pre-trained target model (data contract 3), then
writes the susceptibility map (input affine kept, ppm, zero outside the mask), the fine-tuned model,
a loss log and a sidecar OUT.json with the chosen iteration and why the run stopped.

Stopping rule (daqsm/network_model/stopping.py; needs no ground truth): the discrepancy principle stops at
the first iteration whose NDI term reaches the noise energy estimated from the field (`tau`), else
a flat loss stops it (`convergence_window`, `convergence_tol`), else `iterations`. The learning
rate ramps up linearly over `warmup_iterations` (full-size Adam steps at once first degrade the
pre-trained map).

BN during fine-tuning: the target model's batch normalisations run in **inference mode** (the
target-domain moving statistics learned in pre-training); gamma/beta and all convolutions are
updated. With a single whole volume as the batch, batch statistics would change the network's
function at iteration 0 (the volume's statistics differ from the patches'), so fine-tuning would
start from a different map than the pre-trained prediction; frozen statistics keep the start equal to
it and make the result independent of how much background padding the volume has.

Padding: the network needs sizes divisible by 2**depth, so the field and mask are zero-padded
(centred); the mask zeroes the network output there. The output is cropped back to the original
grid **before** the dipole model, so the FFT sees the true geometry (voxel size, B0 direction) and
the padding never enters the loss; `dipole_pad` additionally zero-pads the FFT grid (default
'auto') so the dipole convolution is linear, not circular.

Output: OUT.nii.gz, OUT_model.keras, OUT_loss.csv, OUT_config.json, OUT.json (provenance sidecar,
daqsm/provenance.py: iterations, stop reason, noise estimate, residual / noise energy, model
SHA-256, geometry, kernel convention) and the QC map OUT_residual.nii.gz (ppm, daqsm/qc/residual.py)
with OUT_residual.json. `--bids true` names the QSM OUT_Chimap.nii.gz. The inputs pass daqsm-check's
checks (daqsm/training_data/input_check.py) first.

Usage:
    python network_model/model_finetune/train.py --model runs/pre/target_model.keras \\
        --field field.nii.gz --mask mask.nii.gz [--weight mag.nii.gz] [--units hz --b0 3 --te 0.025] \\
        [--iterations 300] -o qsm.nii.gz
    python network_model/model_finetune/train.py --model M.keras --case cases/Sim1Snr1 -o qsm.nii.gz
"""
from __future__ import annotations

import itertools
import math
import os
import sys
from dataclasses import dataclass

from daqsm.config import param
from daqsm.errors import InputError
from daqsm.network_model.config import write_resolved_config
from daqsm.validate import check_numbers

PROG = "model_finetune/train.py (step 5)"


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of step 5 (every field is a config key and a `--key value` option)."""

    model: str = param("", 'pre-trained target model (.keras) or step-4 run folder; default: the shipped model '
                       '(daqsm/models/, docs/model-card.md)')
    case: str = param("", 'case folder (contract 1) instead of field/mask/weight')
    field: str = param("", 'local field map (NIfTI, .mat v5/v7.3, .h5, .npy; FILE:VAR picks a variable)')
    mask: str = param("", 'brain mask (0/1), same grid')
    weight: str = param("", 'optional NDI weight / magnitude (normalised to max 1 in the mask)')
    units: str = param("ppm", 'field units: ppm, ppb, hz or rad')
    b0_tesla: float | None = param(None, 'B0 in tesla (hz/rad input, and the NDI phase scale)', aliases=("b0",))
    te_s: float | None = param(None,
        'echo time of the weighting echo in seconds (rad input, phase scale)', aliases=("te",))
    phase_rad_per_ppm: float | None = param(None, 'explicit NDI phase scale; else 2 pi gamma_bar b0 te')
    voxel_size_mm: tuple[float, float, float] | None = param(None, "override the file's voxel size")
    b0_dir: tuple[float, float, float] | None = param(None, 'override (voxel axes); else from the affine')
    iterations: int = param(300, 'at most')
    fast: bool = param(False, "no fine-tuning: the pre-trained network's map with the same QC residual and sidecar "
                       "(seconds)")
    learning_rate: float = param(1e-3, 'measured: demo Sim2Snr1 rmse 49.0 at 150 it. vs 52.1 with 1e-4')
    lr_schedule: str = param("constant", 'learning-rate schedule', choices=("constant", "cosine", "exponential"))
    warmup_iterations: int = param(10, 'linear learning-rate ramp at the start')
    lambda_tv: float = param(0.002, 'TV weight (network units; original 0.002 SNR1, 0.001 SNR2)')
    dipole_pad: str = param("auto", 'FFT zero-padding of the dipole model (daqsm.training_data.dipole)')
    tau: float = param(1.0, 'discrepancy principle: stop when NDI <= tau * noise energy; 0: off')
    noise_ppm: float | None = param(None, 'std of W * field noise (ppm); None: estimated from the field')
    convergence_window: int = param(20, 'iterations per window of the flat-loss test')
    convergence_tol: float = param(1e-3, 'stop when a window improves the loss by less than this (relative); 0: off')
    output: str = param("",
        'output QSM NIfTI (ppm); also OUT_model.keras, OUT_loss.csv, OUT_config.json, OUT.json', flags=("-o",))
    bids: bool = param(False, 'name the QSM the BIDS way: OUT_Chimap.nii.gz (daqsm/provenance.py)')
    overwrite: bool = param(False, 'replace existing outputs')
    seed: int = param(0, "seed of the weights' initial state and any randomness")
    progress: bool = param(True, 'progress bar (--quiet: none)', negation="quiet")
    precision: str = param("float32",
        'compute precision; OUT_model.keras stays float32', choices=("float32", "mixed_float16", "mixed_bfloat16"))


def output_paths(output: str) -> dict:
    """Companion files of OUT.nii.gz: OUT_model.keras, OUT_loss.csv, OUT_config.json, OUT.json (sidecar),
    OUT_residual.nii.gz (QC residual map, ppm) and its sidecar OUT_residual.json."""
    from daqsm.outputs import qsm_set

    return qsm_set(output)  # the one companion rule (steps 5, infer, baselines)


def load_target_model(path: str):
    """Load an exported target model of this package (contract 3): (model, depth and scales)."""
    from daqsm.network_model.model_info import load_model_file
    from daqsm.network_model.unet import describe_target_model

    model = load_model_file(path)
    try:
        info = describe_target_model(model)
    except (ValueError, KeyError) as err:
        raise InputError(f"model {path}: not a target model of this package ({err})") from None
    return model, info


def centred_padding(shape, step: int) -> list:
    """[(before, after)] per axis to reach the next multiple of `step` (split evenly)."""
    pads = []
    for n in shape:
        extra = (-int(n)) % step
        pads.append((extra // 2, extra - extra // 2))
    return pads


def load_inputs(cfg: FinetuneConfig):
    from daqsm.network_model.target_data import load_case, load_files
    from daqsm.training_data.input_check import check_case, check_files

    if cfg.case:
        if cfg.field or cfg.mask:
            raise InputError("give either --case or --field/--mask, not both")
        check_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)  # daqsm-check's checks, before any heavy work
        return load_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
    if not cfg.field or not cfg.mask:
        raise InputError("input: give --field and --mask (or --case DIR)")
    check_files(cfg.field, cfg.mask, cfg.weight or None, cfg.units, cfg.b0_tesla, cfg.te_s, cfg.voxel_size_mm, cfg.b0_dir)
    return load_files(cfg.field, cfg.mask, cfg.weight or None, cfg.units, cfg.b0_tesla, cfg.te_s,
                      cfg.voxel_size_mm, cfg.b0_dir)


def finetune(cfg: FinetuneConfig, monitor=None, monitor_every: int = 10) -> int:
    """Run step 5; returns the exit status (0, or 1 when stopped on a non-finite loss).

    Args:
        cfg: the resolved config.
        monitor: optional callable(iteration, chi) with chi float32 (x, y, z) ppm on the full grid,
            called after every `monitor_every` updates (benchmarks compare iterates with a ground
            truth here; the stopping rule never sees it).
    """
    if not cfg.output:
        raise InputError("output: give the QSM file with -o OUT.nii.gz")
    if cfg.bids:
        from dataclasses import replace

        from daqsm.provenance import bids_chimap_path

        cfg = replace(cfg, output=bids_chimap_path(cfg.output), bids=False)
    from daqsm.output_lock import check_qsm_set, claim_qsm_set

    inputs = [cfg.case] if cfg.case else [cfg.field, cfg.mask, cfg.weight]
    check_qsm_set("-o", cfg.output, cfg.overwrite, inputs)  # the whole set, before any work
    check_numbers(cfg, {"b0_tesla": "positive", "te_s": "positive", "phase_rad_per_ppm": "positive",
                        "voxel_size_mm": "positive", "b0_dir": "finite", "convergence_window": "int>=1"},
                  spell=lambda k: "--" + k.replace("_", "-"))
    if cfg.iterations < 1:
        raise InputError(f"iterations: expected >= 1, got {cfg.iterations}")
    if cfg.fast:  # the pre-trained map: zero updates, everything else (QC, sidecar) as fine-tuning writes it
        from dataclasses import replace

        cfg = replace(cfg, iterations=0)
    for name in ("learning_rate", "tau", "convergence_tol", "lambda_tv"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value <= 0):
            raise InputError(f"{name}: expected a {'positive' if name == 'learning_rate' else 'non-negative'} "
                             f"number, got {value}")
    if cfg.noise_ppm is not None and not (math.isfinite(cfg.noise_ppm) and cfg.noise_ppm >= 0):
        raise InputError(f"noise_ppm: expected a non-negative number of ppm, got {cfg.noise_ppm}")
    if cfg.warmup_iterations < 0:
        raise InputError(f"warmup_iterations: expected >= 0, got {cfg.warmup_iterations}")
    if not cfg.model:  # the shipped pre-trained model, verified against its manifest
        from dataclasses import replace

        from daqsm.network_model.shipped import default_model_path

        cfg = replace(cfg, model=default_model_path())
    from daqsm.network_model.precision import check_precision

    check_precision(cfg.precision)
    with claim_qsm_set("-o", cfg.output, cfg.overwrite, inputs) as qset:
        return _finetune(cfg, qset, monitor, monitor_every)


def _finetune(cfg: FinetuneConfig, qset, monitor, monitor_every: int) -> int:
    """The fine-tuning itself, inside the lock of the output's whole set (daqsm.output_lock.QsmSet)."""
    from daqsm.network_model.precision import check_precision, needs_loss_scale, with_precision

    paths = qset.paths
    precision = check_precision(cfg.precision)
    target = load_inputs(cfg)
    if getattr(target, "geometry_note", None):
        print(f"{PROG}: warning: {target.geometry_note}", file=sys.stderr)
    phase = cfg.phase_rad_per_ppm or target.phase_rad_per_ppm
    if phase is None or not (phase > 0 and math.isfinite(phase)):
        raise InputError("phase scale unknown: give --b0 TESLA and --te SECONDS (or --phase_rad_per_ppm)")

    from daqsm.tf_env import import_tensorflow, seed_everything

    tf = import_tensorflow()
    import numpy as np

    from daqsm.network_model.losses import finetune_terms, ndi_loss, tv_loss
    from daqsm.network_model.model_info import save_model_atomic, spatial_divisor, write_model_info
    from daqsm.network_model.precision import check_device
    from daqsm.network_model.stopping import StoppingRule, noise_energy
    from daqsm.network_model.tiling import brain_box
    from daqsm.network_model.training_loop import LossLog, make_optimizer, make_train_step, run_loop
    from daqsm.qc.noise import estimate_noise_ppm
    from daqsm.training_data.dipole import dipole_operator_tf
    from daqsm.training_data.formats.sidecar import write_sidecar
    from daqsm.training_data.volume_io import write_volume

    check_device(precision)
    model, info = load_target_model(cfg.model)
    if precision != "float32":  # the same weights, convolutions in reduced precision
        model = with_precision(model, precision)
    seed_everything(cfg.seed)
    divisor = 2 ** info["depth"]
    # the brain's bounding box plus a margin (module docstring); the output goes back on the full grid
    box = brain_box(target.mask, divisor)
    field_b, mask_b, weight_b = target.field_ppm[box], target.mask[box], target.weight[box]
    shape = field_b.shape
    pads = centred_padding(shape, divisor)
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, shape))

    def padded(a):
        return tf.constant(np.pad(a, pads)[None, ..., None], tf.float32)

    field_in, mask_in = padded(field_b), padded(mask_b)
    field_c = tf.constant(field_b[None], tf.float32)
    mask_c = tf.constant(mask_b[None], tf.float32)
    weight_c = tf.constant(weight_b[None], tf.float32)
    dipole = dipole_operator_tf(shape, target.geometry.voxel_size_mm, target.geometry.b0_dir, cfg.dipole_pad)

    def predict():
        chi = model([field_in, mask_in], training=False)  # inference-mode BN (module docstring)
        return chi[(0, *crop, 0)][None]                   # (1, x, y, z): the box's grid

    def loss_fn(_batch):
        chi = predict()
        ndi = tf.reduce_mean(ndi_loss(chi, field_c, weight_c, mask_c, dipole, phase))
        tv = tf.reduce_mean(tv_loss(chi, mask_c, info["label_scale"]))
        return finetune_terms(ndi, tv, cfg.lambda_tv)

    sigma = cfg.noise_ppm if cfg.noise_ppm is not None else estimate_noise_ppm(field_b, mask_b, weight_b)
    energy = noise_energy(sigma, phase)  # recorded even when the rule is off (tau 0)
    rule = StoppingRule(energy if cfg.tau > 0 else None, cfg.tau, cfg.convergence_window, cfg.convergence_tol,
                        min_iterations=cfg.warmup_iterations)
    strategy = tf.distribute.get_strategy()
    optimizer = make_optimizer(cfg.learning_rate, cfg.lr_schedule, cfg.iterations,
                               warmup_steps=cfg.warmup_iterations, loss_scale=needs_loss_scale(precision))
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
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    from daqsm.outputs import temp_path

    # named after the log (daqsm/outputs.py): the next run on this set removes what a killed run left
    tmp_log = temp_path(paths["log"])
    os.remove(tmp_log)
    evaluate = tf.function(loss_fn)
    initial = {k: float(v) for k, v in evaluate(None).items()}
    log = LossLog(tmp_log)
    log.write(0, initial)
    result = run_loop(step_fn, itertools.repeat(None), tf.Variable(0, dtype=tf.int64), cfg.iterations, log,
                      convergence=rule, progress=cfg.progress, desc="fine-tuning")
    if result.reason == "nan":
        os.remove(tmp_log)
        print(f"{PROG}: stopped: non-finite loss at iteration {result.step}; nothing written "
              "(lower --learning_rate or check the field units)", file=sys.stderr)
        return 1
    final = {k: float(v) for k, v in evaluate(None).items()}  # the map that is written
    chi = full_map()
    if not np.all(np.isfinite(chi)):
        os.remove(tmp_log)
        raise InputError(f"model {cfg.model}: fine-tuning produced NaN/Inf values; nothing written")
    # the QSM goes last: a run killed before it leaves an incomplete set that the rerun replaces, and
    # an --overwrite rerun removes the old QSM first, so it never stands beside new companions
    qset.start_writing()
    save_model_atomic(model if precision == "float32" else with_precision(model, "float32"), paths["model"])
    write_model_info(paths["model"], target.geometry.voxel_size_mm, target.geometry.b0_dir,
                     spatial_divisor(model), fine_tuned_on=str(cfg.case or cfg.field))
    os.replace(tmp_log, paths["log"])
    write_resolved_config(cfg, paths["config"])
    reason = "done" if result.reason == "running" else result.reason
    what = "fine-tuned"
    if cfg.iterations == 0:  # --fast
        reason, what = "fast: pre-trained network, no fine-tuning", "pre-trained"
    qc = write_residual(paths, chi, target, cfg.dipole_pad, float(phase), sigma, cfg, what)
    record = {"Units": "ppm", "Description": f"susceptibility map, {what} domain-adaptive network (step 5)",
              "FineTuning": {"iterations": int(result.step), "stop_reason": reason,
                             "max_iterations": int(cfg.iterations), "noise_ppm": float(sigma),
                             "noise_estimated": cfg.noise_ppm is None, "noise_energy": energy, "tau": cfg.tau,
                             "initial": initial, "final": final,
                             "residual_over_noise": (final["ndi"] / energy) if energy else None},
              "Box": [[b.start, b.stop] for b in box], "PhaseRadPerPpm": float(phase), "QC": qc}
    if getattr(target, "geometry_sources", None):  # where voxel size, B0 direction and affine came from
        record["GeometrySources"] = target.geometry_sources
    write_sidecar(paths["qsm"], provenance_record(cfg, target, what), record)
    qset.commit(lambda qsm: write_volume(qsm, chi, target.affine, target.header))  # last: the set is complete
    ratio = f", ndi / noise energy {final['ndi'] / energy:.3g}" if energy else ""
    print(f"{PROG}: stopped ({reason}) after {result.step} iterations: loss {initial['loss']:.5g} -> "
          f"{final['loss']:.5g} (ndi {initial['ndi']:.5g} -> {final['ndi']:.5g}{ratio}); wrote {paths['qsm']}")
    return 0


def provenance_record(cfg: FinetuneConfig, target, what: str) -> dict:
    """The sidecar's provenance keys (daqsm/provenance.py) for this run's outputs."""
    from daqsm.provenance import build_record
    from daqsm.training_data.formats.case_folder import read_info

    b0 = cfg.b0_tesla
    if cfg.case and b0 is None:
        b0 = read_info(cfg.case).get("b0_tesla")
    sources = [cfg.case] if cfg.case else [cfg.field, cfg.mask, cfg.weight]
    return build_record(f"{what} network (step 5)", "ppm", sources=sources, b0_tesla=b0,
                        b0_dir=target.geometry.b0_dir, voxel_size_mm=target.geometry.voxel_size_mm,
                        dipole_pad=cfg.dipole_pad, config=cfg, model=cfg.model)


def write_residual(paths: dict, chi, target, dipole_pad, phase: float, noise_ppm, cfg, what: str) -> dict:
    """QC residual map (daqsm/qc/residual.py) beside the QSM, with its sidecar; returns the summary."""
    from daqsm.qc.residual import residual_map_ppm, residual_summary
    from daqsm.training_data.formats.sidecar import write_sidecar
    from daqsm.training_data.volume_io import write_volume

    geometry = target.geometry
    residual = residual_map_ppm(chi, target.field_ppm, target.mask, target.weight, geometry.voxel_size_mm,
                                geometry.b0_dir, dipole_pad, phase)
    summary = residual_summary(residual, target.field_ppm, target.mask, target.weight, noise_ppm)
    summary["NoiseEstimated"] = cfg.noise_ppm is None
    write_volume(paths["residual"], residual, target.affine, target.header)
    write_sidecar(paths["residual"], provenance_record(cfg, target, what),
                  {"Description": f"weighted data-consistency residual W|exp(i s f) - exp(i s D*chi)|/s of "
                                  f"{os.path.basename(paths['qsm'])} (ppm)", "PhaseRadPerPpm": phase, "QC": summary})
    return summary
