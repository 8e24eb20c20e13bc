"""Step 4's core on patches in memory: the loss, the data-term floor, the batches, one training run.

`pretrain_arrays(patches, cfg)` takes make_patches' dict and returns the target model and the loss
log without writing a file (`daqsm.pretrain` calls it). The file shell
(daqsm/network_model/pretraining.py: run folder, checkpoints, resume, log.csv, export) builds the
same pieces from a patch file and adds what a long run needs.

Data-term floor (issue 22): on a measured field even the true chi leaves NDI > 0 (noise, model error,
sources outside the crop), and the network learned to go below it (training NDI 0.0185 where the
truth's is 0.039), i.e. to fit noise. With `ndi_floor` the target term is max(NDI - floor, 0) per crop:
    'noise'  floor = ndi_floor_tau x the normalised NDI that the crop's own noise leaves
             (daqsm.qc.noise.estimate_noise_ppm on W x field, daqsm.network_model.stopping.noise_energy);
    a number one floor for every crop, in normalised NDI units (e.g. a measured truth level);
    'none'   the plain NDI (before issue 22).

Mixed-protocol targets (a format-3 patch file whose target crops come from several field strengths,
echo times, B0 directions or voxel sizes): every crop's data term uses its own dipole kernel and
phase scale. The phase scale is then a table (one entry per protocol) and each target batch carries
its crops' protocol indices as its last tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daqsm.errors import InputError

FLOOR_MODES = ("none", "noise")


def target_batch(cfg) -> int:
    """Target crops per step (`target_batch_size`, or `batch_size` when 0)."""
    return cfg.target_batch_size or cfg.batch_size


def parse_floor(value) -> str | float:
    """`ndi_floor` as 'none', 'noise' or a float >= 0 (InputError otherwise)."""
    text = str(value).strip().lower()
    if text in FLOOR_MODES:
        return text
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not (math.isfinite(number) and number >= 0):
        raise InputError(f"ndi_floor: expected none, noise or a number >= 0, got {value!r}")
    return number


def crop_phases(target, phase) -> np.ndarray:
    """Each target crop's phase scale (rad/ppm), float (count,), from `check_run`'s phase."""
    if target.mixed:
        return np.asarray(phase, np.float64)[np.asarray(target.protocol_index)]
    return np.full(target.count, float(phase))


def target_floors(cfg, target, phase) -> np.ndarray | None:
    """Per-crop floor of the target data term (module docstring), float32 (count,), or None when off.

    phase: `check_run`'s phase scale (a float, or the per-protocol table of a mixed group)."""
    mode = parse_floor(cfg.ndi_floor)
    if mode == "none":
        return None
    if mode != "noise":
        return np.full(target.count, float(mode), np.float32)
    from daqsm.network_model.stopping import noise_energy
    from daqsm.qc.noise import estimate_noise_ppm

    floors = np.zeros(target.count, np.float32)
    phases = crop_phases(target, phase)
    for i, (field, mask, weight) in enumerate(iter_target_patches(target)):
        try:
            sigma = estimate_noise_ppm(field, mask > 0, weight)
        except InputError:  # no 2x2x2 block inside the mask: nothing to estimate, no floor
            continue
        floors[i] = cfg.ndi_floor_tau * noise_energy(sigma, float(phases[i]))
    return floors


def phase_scale(cfg, target):
    """Radians per ppm for NDI: the config value, else from the target group's B0 and TE; for a
    mixed-protocol group a float64 array, one scale per protocol (`target.protocols`)."""
    from daqsm.training_data.units import rad_per_ppm

    if target.mixed:
        if cfg.phase_rad_per_ppm is not None:
            raise InputError(f"phase_rad_per_ppm: one value cannot serve the {len(target.protocols)} protocols of "
                             f"{target.path} /target; leave it unset (each crop's B0 and TE give its own)")
        unknown = [k for k, p in enumerate(target.protocols) if p.b0_tesla is None or p.te_s is None]
        if unknown:
            raise InputError(f"{target.path}: /target protocol {unknown[0]} of {len(target.protocols)} has no "
                             "b0_tesla/te_s; every protocol of a mixed-protocol file needs both")
        return np.asarray([rad_per_ppm(p.b0_tesla, p.te_s) for p in target.protocols], np.float64)
    if cfg.phase_rad_per_ppm is not None:  # positive: the field's declared rule (check_options)
        return float(cfg.phase_rad_per_ppm)
    if target.b0_tesla is None or target.te_s is None:
        raise InputError(f"{target.path}: /target has no b0_tesla/te_s attributes; "
                         "set phase_rad_per_ppm (radians per ppm, 2*pi*gamma_bar*B0*TE)")
    return rad_per_ppm(target.b0_tesla, target.te_s)


def check_options(cfg) -> None:
    """Every number against its meaning (the rules declared on PretrainConfig's fields, daqsm/validate.py),
    before any file is read or written; the command and the API's `pretrain_arrays` both call it."""
    from daqsm.network_model.config import key_option
    from daqsm.validate import check_config

    check_config(cfg, spell=key_option)


def check_run(cfg, source, target):
    """Patch sizes against the network, the run's numbers and schedule; returns the phase scale (rad/ppm;
    per protocol for a mixed-protocol target group, `phase_scale`).

    Runs no TensorFlow op (a multi-worker strategy needs a fresh runtime after it).
    """
    from daqsm.errors import choices_message
    from daqsm.network_model.training_loop import SCHEDULES
    from daqsm.network_model.unet import check_spatial_shape

    for info in (source, target):
        try:
            check_spatial_shape(info.patch_size, cfg.depth)
        except ValueError as err:
            raise InputError(f"{info.path}: /{info.group} patches {info.patch_size}: {err}") from None
    parse_floor(cfg.ndi_floor)
    phase = phase_scale(cfg, target)
    if str(cfg.lr_schedule).lower() not in SCHEDULES:
        raise choices_message("lr_schedule", cfg.lr_schedule, SCHEDULES)
    return phase


def check_replicas(cfg, strategy) -> None:
    """Both batch sizes must split evenly over the replicas."""
    for name, size in (("batch_size", cfg.batch_size), ("target_batch_size", target_batch(cfg))):
        if size % strategy.num_replicas_in_sync:
            raise InputError(f"{name} {size} must be divisible by the {strategy.num_replicas_in_sync} replicas")


def nonfinite_reason(model, terms: dict) -> str | None:
    """Why a trained model must not be exported: NaN/Inf weights or validation terms, else None."""
    bad_terms = [k for k, v in terms.items() if k.startswith("val_") and not np.isfinite(v)]
    if bad_terms:
        return f"non-finite validation loss ({', '.join(bad_terms)})"
    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight))):
            return f"non-finite weights in {weight.path if hasattr(weight, 'path') else weight.name}"
    return None


def iter_target_patches(target):
    """(field, mask, weight) numpy arrays of every target patch, in memory or read one at a time."""
    from daqsm.network_model.data import LoadedPatchGroup

    if isinstance(target, LoadedPatchGroup):
        yield from zip(*target.arrays)
        return
    import h5py

    with h5py.File(target.path, "r") as h5:
        grp = h5[target.group]
        for i in range(target.count):
            yield tuple(np.asarray(grp[k][i], np.float32) for k in target.keys)


def crop_physics(dipole, phase, target_batch_tensors, mixed: bool):
    """(dipole operator, phase scale) for one target batch: the run's own, or for a mixed-protocol run
    each crop's kernel and scale picked by the protocol index the batch carries last."""
    import tensorflow as tf

    if not mixed:
        return dipole, phase
    which = tf.cast(target_batch_tensors[-1], tf.int32)
    table = tf.constant(np.asarray(phase, np.float32))
    return (lambda x: dipole(x, which)), tf.gather(table, which)


def build_loss_fn(model, dipole, phase_rad_per_ppm, cfg, training: bool = True, floored: bool = False,
                  mixed: bool = False):
    """Per-replica loss of one (source, target) batch pair -> dict of scalar terms.

    A target batch is (field, mask, weight), then each crop's data-term floor (batch,) when `floored`,
    then its protocol index (batch,) when `mixed` (dipole: `dipole_operator_stack_tf`'s, phase: the
    per-protocol table).
    """
    from daqsm.network_model.losses import l1_loss, ndi_excess, ndi_loss, pretrain_terms, pretrain_terms_floored, tv_loss
    from daqsm.network_model.training_loop import replica_mean

    def loss_fn(batch):
        (s_field, s_mask, s_chi), target = batch
        t_field, t_mask, t_weight = target[:3]
        crop_dipole, crop_phase = crop_physics(dipole, phase_rad_per_ppm, target, mixed)
        chi_s = model([s_field, s_mask], domain=0, training=training)
        chi_t = model([t_field, t_mask], domain=1, training=training)
        l1 = replica_mean(l1_loss(chi_s, s_chi, s_mask, cfg.label_scale))
        ndi_per_crop = ndi_loss(chi_t, t_field, t_weight, t_mask, crop_dipole, crop_phase)
        tv = replica_mean(tv_loss(chi_t, t_mask, cfg.label_scale))
        if not floored:
            return pretrain_terms(l1, replica_mean(ndi_per_crop), tv, cfg.lambda_ndi, cfg.lambda_tv)
        floor = target[3]
        return pretrain_terms_floored(l1, replica_mean(ndi_per_crop), replica_mean(ndi_excess(ndi_per_crop, floor)),
                                      replica_mean(floor), tv, cfg.lambda_ndi, cfg.lambda_tv)

    return loss_fn


def make_validate(model, dipole, phase, cfg, source, target, src_val, tgt_val):
    """Validation on the held-out patches (inference-mode BN), or None when there are none."""
    import tensorflow as tf

    from daqsm.network_model.data import group_dataset
    from daqsm.network_model.losses import l1_loss, ndi_loss, pretrain_loss, tv_loss

    if len(src_val) == 0 or len(tgt_val) == 0:
        return None
    src_ds = group_dataset(source, src_val, cfg.batch_size, shuffle=False, repeat=False, drop_remainder=False)
    tgt_ds = group_dataset(target, tgt_val, target_batch(cfg), shuffle=False, repeat=False, drop_remainder=False,
                           extras=protocol_extras(target))

    @tf.function
    def src_terms(field, mask, chi):
        return l1_loss(model([field, mask], domain=0, training=False), chi, mask, cfg.label_scale)

    @tf.function
    def tgt_terms(field, mask, weight, *protocol):
        crop_dipole, crop_phase = crop_physics(dipole, phase, protocol, target.mixed)
        chi = model([field, mask], domain=1, training=False)
        return ndi_loss(chi, field, weight, mask, crop_dipole, crop_phase), tv_loss(chi, mask, cfg.label_scale)

    def validate():
        l1 = np.concatenate([src_terms(*b).numpy() for b in src_ds]).mean()
        pairs = [tgt_terms(*b) for b in tgt_ds]
        ndi = np.concatenate([p[0].numpy() for p in pairs]).mean()
        tv = np.concatenate([p[1].numpy() for p in pairs]).mean()
        return {"val_loss": pretrain_loss(l1, ndi, tv, cfg.lambda_ndi, cfg.lambda_tv), "val_l1": l1, "val_ndi": ndi,
                "val_tv": tv}

    return validate


@dataclass
class Trainer:
    """What one pre-training run holds: the network, its optimizer, the step counter, the compiled step."""

    model: object
    optimizer: object
    step_var: object
    step_fn: object
    validate: object
    floors: np.ndarray | None


def protocol_extras(target) -> tuple:
    """The per-crop tensors a target batch carries for a mixed-protocol group (its protocol index)."""
    return (np.asarray(target.protocol_index, np.float32),) if target.mixed else ()


def target_dipole(cfg, target):
    """The target group's dipole operator: one kernel, or a stack of one per protocol (mixed)."""
    from daqsm.training_data.dipole import dipole_operator_stack_tf, dipole_operator_tf

    if target.mixed:
        return dipole_operator_stack_tf(target.patch_size, [(p.voxel_size_mm, p.b0_dir) for p in target.protocols],
                                        cfg.dipole_pad)
    return dipole_operator_tf(target.patch_size, target.voxel_size_mm, target.b0_dir, cfg.dipole_pad)


def build_trainer(cfg, tf, strategy, source, target, src_val, tgt_val, phase, total: int) -> Trainer:
    """Network, optimizer and compiled step under `strategy` and the configured precision."""
    from daqsm.network_model.precision import needs_loss_scale, precision_policy
    from daqsm.network_model.training_loop import make_optimizer, make_train_step
    from daqsm.network_model.unet import DomainAdaptiveUNet
    from daqsm.tf_env import seed_everything

    seed_everything(cfg.seed)
    with strategy.scope(), precision_policy(cfg.precision):
        model = DomainAdaptiveUNet(cfg.depth, cfg.base_filters, 2, cfg.input_scale, cfg.label_scale,
                                   cfg.bn_momentum).build_for(target.patch_size)
        optimizer = make_optimizer(cfg.learning_rate, cfg.lr_schedule, cfg.lr_decay_steps or total,
                                   cfg.lr_decay_rate, loss_scale=needs_loss_scale(cfg.precision))
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    dipole = target_dipole(cfg, target)
    floors = target_floors(cfg, target, phase)
    loss_fn = build_loss_fn(model, dipole, phase, cfg, floored=floors is not None, mixed=target.mixed)
    step_fn = make_train_step(strategy, model, optimizer, loss_fn)
    validate = make_validate(model, dipole, phase, cfg, source, target, src_val, tgt_val)
    return Trainer(model, optimizer, step_var, step_fn, validate, floors)


def make_batches(cfg, tf, strategy, trainer: Trainer, source, target, src_train, tgt_train, steps_per_epoch: int):
    """Iterator over (source, target) batch pairs, reshuffled by the epoch the step counter is in."""
    from daqsm.network_model.data import group_dataset
    from daqsm.network_model.distributed import distribute_options

    epoch = int(trainer.step_var.numpy()) // steps_per_epoch  # reshuffle differently after a resume
    src_ds = group_dataset(source, src_train, cfg.batch_size, seed=cfg.seed + 7919 * epoch)
    tgt_ds = group_dataset(target, tgt_train, target_batch(cfg), seed=cfg.seed + 1 + 7919 * epoch,
                           extras=(() if trainer.floors is None else (trainer.floors,)) + protocol_extras(target))
    pairs = distribute_options(tf.data.Dataset.zip((src_ds, tgt_ds)), strategy)
    return iter(strategy.experimental_distribute_dataset(pairs))


def run_schedule(cfg, source, target):
    """(src_train, src_val, tgt_train, tgt_val, steps_per_epoch, total) of a run."""
    from daqsm.network_model.data import split_indices

    src_train, src_val = split_indices(source.count, cfg.val_fraction, cfg.seed)
    tgt_train, tgt_val = split_indices(target.count, cfg.val_fraction, cfg.seed + 1)
    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(src_train) / cfg.batch_size),
                                                  math.ceil(len(tgt_train) / target_batch(cfg)))
    return src_train, src_val, tgt_train, tgt_val, steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch


def pretrain_arrays(patches: dict, cfg):
    """Step 4 on make_patches' dict, nothing written: (target keras.Model, log rows).

    Args:
        patches: {'source': {'field', 'mask', 'chi'}, 'target': {'field', 'mask', 'weight'}} float32
            (n, px, py, pz) arrays (ppm, 0/1, [0, 1]), 'attrs': {'target': {voxel_size_mm, b0_dir,
            b0_tesla, te_s}} as `daqsm.make_patches` returns.
        cfg: a PretrainConfig (its file fields are not used; one device, the default strategy).

    Returns:
        (exported target model [field_ppm, mask] -> chi_ppm, list of dicts per logged step).

    Raises:
        InputError: bad arrays or options, or a non-finite loss/weights (nothing returned).
    """
    from daqsm.tf_env import import_tensorflow

    check_options(cfg)
    tf = import_tensorflow()
    from daqsm.network_model.data import group_from_arrays
    from daqsm.network_model.training_loop import MemoryLog, run_loop
    from daqsm.network_model.unet import export_target_model

    for group in ("source", "target"):
        if not isinstance(patches.get(group), dict):
            raise InputError(f"patches: expected a dict with '{group}' (make_patches' output), got keys "
                             f"{', '.join(map(str, patches)) or 'none'}")
    attrs = patches.get("attrs", {})
    source = group_from_arrays("source", patches["source"], attrs.get("source"))
    target = group_from_arrays("target", patches["target"], attrs.get("target"), index=patches.get("index"))
    strategy = tf.distribute.get_strategy()
    phase = check_run(cfg, source, target)
    check_replicas(cfg, strategy)
    src_train, src_val, tgt_train, tgt_val, steps_per_epoch, total = run_schedule(cfg, source, target)
    trainer = build_trainer(cfg, tf, strategy, source, target, src_val, tgt_val, phase, total)
    batches = make_batches(cfg, tf, strategy, trainer, source, target, src_train, tgt_train, steps_per_epoch)
    log = MemoryLog()
    result = run_loop(trainer.step_fn, batches, trainer.step_var, total, log, validate=trainer.validate,
                      validate_every=cfg.validate_every or steps_per_epoch, progress=cfg.progress,
                      desc="pre-training", max_seconds=60.0 * cfg.max_minutes)
    bad = "non-finite loss" if result.reason == "nan" else nonfinite_reason(trainer.model, result.terms)
    if bad:
        raise InputError(f"pretrain: stopped: {bad} at step {result.step} (lower learning_rate or check the patches)")
    return export_target_model(trainer.model, domain=1), log.rows
