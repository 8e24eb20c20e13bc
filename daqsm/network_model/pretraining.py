"""Step 4 — domain-adaptive pre-training: patch HDF5 (ppm) -> DSBN U-Net -> target model (.keras).

Each step runs one source batch (synthetic field, mask, chi label; BN domain 0) and one target
batch (measured field, mask, weight; BN domain 1) through the same network and minimises

    L = L1(source) + lambda_ndi * NDI(target) + lambda_tv * TV(target)

(daqsm.network_model.losses; NDI in radians with the phase scale from the `/target` attrs `b0_tesla`
and `te_s`, or `phase_rad_per_ppm`, normalised so the original weights 1 : 20 : 0.05 keep their
meaning at every B0 and TE; TV inside the mask per mask voxel). The log has each raw term and each
weighted term (`ndi_weighted` = lambda_ndi * ndi, `tv_weighted` = lambda_tv * tv). Source and target
batches may differ in size: large target crops (the field inside a patch has sources outside it,
so data consistency needs them) with `target_batch_size` crops per step. With `ndi_floor` the
data term is max(NDI - floor, 0) per crop (daqsm/network_model/pretrain_core.py): the log then
has `ndi` (raw), `ndi_floor` and `ndi_excess` side by side, and `ndi_weighted` = lambda_ndi * excess.

This module is the file shell around daqsm/network_model/pretrain_core.py (which `daqsm.pretrain`
calls on arrays, writing nothing): groups of the patch file that fit `in_memory_gb` are read once
into memory, larger ones per patch. The run folder holds `train_config.json` (resolved config;
`config.json` in a run folder of an earlier version, still read to resume and then replaced),
`log.csv`, `tensorboard/`, `checkpoints/` (resume after a kill: rerun the same command) and
`target_model.keras` (data contract 3). Long runs go in chunks: `--max_minutes M` stops after M
minutes with a checkpoint and the model of that step exported; the same command continues.

Usage:
    python network_model/train_model/train.py --datasets_path patches.h5 --run_dir runs/pre
    python network_model/train_model/train.py --config pretrain.yaml --batch_size 4
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass

from daqsm.config import param, require
from daqsm.errors import InputError, output_path
from daqsm.network_model.config import key_option, write_resolved_config
from daqsm.network_model.pretrain_core import (  # noqa: F401  (their home; names kept here for callers)
    build_loss_fn,
    check_options,
    check_replicas,
    check_run,
    make_validate,
    nonfinite_reason,
    phase_scale,
    target_batch,
)
from daqsm.outputs import config_companion, find_config_companion, legacy_config_companions, write_text_atomic

PROG = "train.py (step 4)"


@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of step 4 (every field is a config key and a `--key value` option)."""

    datasets_path: str = param("", 'patch HDF5 holding /source (synthetic, labelled)')
    targetdata_path: str = param("", 'patch HDF5 holding /target (may be the same file; empty = datasets_path)')
    run_dir: str = param("runs/pretrain", 'outputs, checkpoints, logs', flags=("-o",))
    depth: int = param(4, 'poolings; patch sizes must be divisible by 2**depth', check="int>=1")
    base_filters: int = param(16, 'filters of level 0 (doubling per level)', check="int>=1")
    input_scale: float = param(100.0, 'network input = field_ppm * input_scale (original x100)', check="positive")
    label_scale: float = param(100.0 / 3.0, 'network output = chi_ppm * label_scale (original x100/3)', check="positive")
    bn_momentum: float = param(0.99, 'Keras BN momentum (PyTorch 0.01)', check=(0.0, 1.0))
    batch_size: int = param(2, 'source patches per step (global, over replicas)', check="int>=1")
    target_batch_size: int = param(0, 'target crops per step; 0: batch_size', check="int>=0")
    epochs: int = param(6, 'passes over the larger training split', check="int>=1")
    steps_per_epoch: int = param(0, '0: the larger training split / batch_size', check="int>=0")
    max_steps: int = param(0, '0: epochs * steps_per_epoch; else stop (checkpointed) at this step', check="int>=0")
    learning_rate: float = param(1e-4, 'Adam learning rate', check="positive")
    lr_schedule: str = param("constant", 'learning-rate schedule', choices=("constant", "cosine", "exponential"))
    lr_decay_steps: int = param(0, '0: the run length', check="int>=0")
    lr_decay_rate: float = param(0.5, 'decay factor of the exponential schedule', check="positive")
    lambda_ndi: float = param(20.0, "weight of the NDI term (normalised to the original's 100*ppm argument)",
                              check="non_negative")
    lambda_tv: float = param(0.05, 'weight of the TV term (network units, inside the mask)', check="non_negative")
    phase_rad_per_ppm: float | None = param(None, 'None: rad_per_ppm(/target b0_tesla, te_s)', check="positive")
    dipole_pad: str = param("none", 'FFT padding of the patch dipole model (daqsm.training_data.dipole)')
    val_fraction: float = param(0.1, 'held-out patches per domain', check=(0.0, 0.9))
    validate_every: int = param(0, 'steps; 0: once per epoch', check="int>=0")
    checkpoint_every: int = param(0, 'steps; 0: once per epoch', check="int>=0")
    keep_checkpoints: int = param(3, 'checkpoints kept in run_dir/checkpoints', check="int>=1")
    seed: int = param(0, 'seed of the weights, shuffling and the validation split')
    strategy: str = param("default", 'tf.distribute strategy', choices=("default", "mirrored", "multiworker"))
    collective_timeout_s: float = param(300.0, 'multiworker: a collective waiting longer ends the run (0: no bound)',
                                        check="non_negative")
    precision: str = param("float32",
        'compute precision (daqsm/network_model/precision.py)', choices=("float32", "mixed_float16", "mixed_bfloat16"))
    ndi_floor: str = param("none", "target data term max(NDI - floor, 0) per crop: none | noise (ndi_floor_tau x "
                           "the NDI the crop's estimated noise leaves) | a number (normalised NDI)")
    ndi_floor_tau: float = param(1.0, 'factor on the noise floor (ndi_floor noise)', check="non_negative")
    in_memory_gb: float = param(2.0, 'read a patch group into memory once when it fits this (0: per-patch reads)',
                                check="non_negative")
    max_minutes: float = param(0.0, 'stop checkpointed after this wall time, rerun to continue (0: no limit)',
                               check="non_negative")
    resume: bool = param(True, "continue from the run folder's last checkpoint")
    progress: bool = param(True, 'progress bar (--quiet: none)', negation="quiet")


def pretrain(cfg: PretrainConfig) -> int:
    """Run (or resume) step 4; returns the exit status (0 done, 1 stopped on a non-finite loss)."""
    require(cfg, ("datasets_path",), spell=key_option)
    check_options(cfg)
    output_path("--run_dir", cfg.run_dir, kind="folder")

    from daqsm.tf_env import import_tensorflow

    tf = import_tensorflow()

    from daqsm.network_model.data import load_patch_group, read_patch_group
    from daqsm.network_model.distributed import WorkerOutput, is_chief
    from daqsm.network_model.precision import check_device
    from daqsm.network_model.pretrain_core import run_schedule
    from daqsm.network_model.training_loop import make_strategy

    source = read_patch_group(cfg.datasets_path, "source")
    target = read_patch_group(cfg.targetdata_path or cfg.datasets_path, "target")
    phase = check_run(cfg, source, target)  # before anything is written (and before any TF op:
    check_device(cfg.precision)             # multiworker needs a fresh runtime)
    strategy = make_strategy(cfg.strategy, cfg.collective_timeout_s)
    chief = is_chief(strategy)
    check_replicas(cfg, strategy)
    # groups that fit are decoded once instead of one chunk per patch at every step
    source, target = (load_patch_group(g, cfg.in_memory_gb * 2**30) for g in (source, target))
    src_train, src_val, tgt_train, tgt_val, steps_per_epoch, total = run_schedule(cfg, source, target)

    ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")  # the chief's: every worker resumes from it
    if not cfg.resume and tf.train.latest_checkpoint(ckpt_dir):
        raise InputError(f"{cfg.run_dir}: holds checkpoints; use --resume true or another --run_dir")
    import contextlib

    from daqsm.output_lock import claim_output

    # one run per folder: a second one stops with "in use by PID N" instead of doubling the log (the
    # chief's folder; other workers write to their own temp folders)
    # the run folder is new, empty or one this command made (its marker), never a user's folder
    created = not os.path.isdir(cfg.run_dir)
    lock = claim_output("--run_dir", cfg.run_dir, kind="folder", command="daqsm-train") if chief \
        else contextlib.nullcontext()
    with lock:
        if chief and tf.train.latest_checkpoint(ckpt_dir):
            # a run folder of an earlier version holds config.json (daqsm.outputs.LEGACY_CONFIG_NAMES)
            check_resume_matches(cfg, find_config_companion(cfg.run_dir, "train", folder=True))
        try:
            with WorkerOutput(cfg.run_dir, strategy) as out:  # non-chief workers write to a removed temp folder
                return _train(cfg, tf, strategy, out, ckpt_dir, source, target, src_train, src_val, tgt_train,
                              tgt_val, phase, steps_per_epoch, total)
        except (InputError, OSError):
            # a new run that failed before its first checkpoint leaves no run folder; one with a
            # checkpoint stays (rerun the command to resume)
            if chief and created and os.path.isdir(cfg.run_dir) and not tf.train.latest_checkpoint(ckpt_dir):
                import shutil

                shutil.rmtree(cfg.run_dir, ignore_errors=True)
            raise


# options that may change when a run is resumed: how long it runs and how it reports, not what it learns
RESUMABLE = {"run_dir", "resume", "progress", "epochs", "max_steps", "keep_checkpoints", "validate_every",
             "checkpoint_every", "strategy", "collective_timeout_s", "max_minutes", "in_memory_gb"}


PATCH_PRINTS = "patch_files.json"  # size and digest of the patch files the run started with


def check_resume_matches(cfg: PretrainConfig, config_path: str | None) -> None:
    """A resumed run keeps the config and the patch files it started with (else: one line naming the keys).
    `config_path`: the run's resolved config (daqsm.outputs.find_config_companion); None: none was written."""
    from daqsm.config import config_to_dict

    if config_path is None:
        return
    try:
        with open(config_path, encoding="utf-8") as fh:
            before = json.load(fh)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as err:
        raise InputError(f"{config_path}: cannot read the run's config to resume ({err}); "
                         "use another --run_dir") from None
    now = config_to_dict(cfg)
    before = before if isinstance(before, dict) else {}
    def same(key) -> bool:
        if key in ("datasets_path", "targetdata_path") and before[key] and now[key]:  # one file, two spellings
            return os.path.realpath(str(before[key])) == os.path.realpath(str(now[key]))
        return before[key] == now[key]

    differ = sorted(k for k in now if k not in RESUMABLE and k in before and not same(k))
    try:
        with open(os.path.join(os.path.dirname(config_path), PATCH_PRINTS), encoding="utf-8") as fh:
            started = json.load(fh)
    except (OSError, ValueError):
        started = None  # a run of an earlier version: only the config is compared
    if started is not None and started != patch_fingerprints(cfg):
        differ.append("patch file contents")
    if differ:
        raise InputError(f"--run_dir {cfg.run_dir}: resuming with a different {', '.join(differ)} than the run "
                         "started with; give the same values, or another --run_dir to start a new run")


def patch_fingerprints(cfg: PretrainConfig) -> dict:
    """Size and digest of the first and last MiB of each patch file: a replaced file is noticed at resume."""
    import hashlib

    prints = {}
    for path in dict.fromkeys(p for p in (cfg.datasets_path, cfg.targetdata_path or cfg.datasets_path) if p):
        digest = hashlib.sha1()
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
        prints[os.path.basename(path)] = [size, digest.hexdigest()]
    return prints


def _train(cfg, tf, strategy, out, ckpt_dir, source, target, src_train, src_val, tgt_train, tgt_val, phase,
           steps_per_epoch, total) -> int:
    """The part of `pretrain` that runs on every worker; writes go to `out` (the run folder on the chief)."""
    from daqsm.network_model.distributed import check_same_step, is_lost_peer, lost_worker_message
    from daqsm.network_model.model_info import save_model_atomic, write_model_info
    from daqsm.network_model.pretrain_core import build_trainer, make_batches
    from daqsm.network_model.training_loop import LossLog, run_loop
    from daqsm.network_model.unet import export_target_model

    trainer = build_trainer(cfg, tf, strategy, source, target, src_val, tgt_val, phase, total)
    model, step_var = trainer.model, trainer.step_var
    checkpoint = tf.train.Checkpoint(step=step_var, model=model, optimizer=trainer.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, out.join("checkpoints"), max_to_keep=cfg.keep_checkpoints)
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise InputError(f"{latest}: does not match this network (depth/base_filters/precision "
                             f"changed?): {str(err).splitlines()[0][:200]}") from None
        print(f"{PROG}: resuming from {latest} (step {int(step_var.numpy())})", file=sys.stderr)
    check_same_step(strategy, step_var)
    if out.chief:
        # written only now that the schedule, the patches and the checkpoint are known to fit: a rejected
        # resume leaves the run's config as it was
        write_resolved_config(cfg, config_companion(out.path, "train", folder=True))
        for older in legacy_config_companions(out.path, "train", folder=True):  # one config per run folder
            if os.path.lexists(older):
                os.remove(older)
        write_text_atomic(out.join(PATCH_PRINTS), json.dumps(patch_fingerprints(cfg)) + "\n")

    batches = make_batches(cfg, tf, strategy, trainer, source, target, src_train, tgt_train, steps_per_epoch)
    step_fn, validate = trainer.step_fn, trainer.validate

    log = LossLog(out.join("log.csv"), out.join("tensorboard"))
    log.truncate_after(int(step_var.numpy()))
    try:
        result = run_loop(step_fn, batches, step_var, total, log, manager=manager,
                          checkpoint_every=cfg.checkpoint_every or steps_per_epoch, validate=validate,
                          validate_every=cfg.validate_every or steps_per_epoch, progress=cfg.progress and out.chief,
                          desc="pre-training", healthy=lambda: nonfinite_reason(model, {}),
                          max_seconds=60.0 * cfg.max_minutes)
    except tf.errors.OpError as err:
        if strategy.num_replicas_in_sync < 2 or not is_lost_peer(err):
            raise
        message = lost_worker_message(err, strategy, int(step_var.numpy()) + 1, tf.train.latest_checkpoint(ckpt_dir))
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    if result.reason == "nan":
        terms = ", ".join(f"{k}={v:.4g}" for k, v in result.terms.items())
        loss_ok = math.isfinite(result.terms.get("loss", float("nan")))
        what = (nonfinite_reason(model, result.terms) if loss_ok else None) or "non-finite loss"
        print(f"{PROG}: stopped: {what} at step {result.step} ({terms}); nothing exported; "
              f"last checkpoint: {manager.latest_checkpoint or 'none'} (lower learning_rate or check the "
              "patches)", file=sys.stderr)
        return 1
    bad = nonfinite_reason(model, result.terms)
    if bad:  # the loss is checked before each update; the last update or the validation can still be NaN
        print(f"{PROG}: stopped: {bad} at step {result.step}; nothing exported; last checkpoint: "
              f"{manager.latest_checkpoint or 'none'} (lower learning_rate or check the patches)", file=sys.stderr)
        return 1
    if not out.chief:
        return 0  # only the chief exports (its checkpoints are the ones a restart reads)
    model_path = out.join("target_model.keras")
    if result.reason == "time":
        print(f"{PROG}: max_minutes {cfg.max_minutes:g} reached at step {result.step} of {total} "
              "(checkpointed; the exported model is this step's): rerun the same command to continue", file=sys.stderr)
    elif result.step < total:
        print(f"{PROG}: stopped at step {result.step} of {total}", file=sys.stderr)
    save_model_atomic(export_target_model(model, domain=1), model_path)
    # the training geometry beside the model, so inference can warn on a different one
    if target.mixed:  # inference warns only on a geometry none of the protocols had
        write_model_info(model_path, None, None, 2**cfg.depth, step=result.step,
                         training_protocols=[p.as_json() for p in target.protocols])
    else:
        write_model_info(model_path, target.voxel_size_mm, target.b0_dir, 2**cfg.depth, step=result.step)
    terms = ", ".join(f"{k}={v:.4g}" for k, v in result.terms.items())
    print(f"{PROG}: step {result.step}/{total} {terms}; target model: {model_path}")
    return 0
