"""The GradientTape training loop shared by pre-training (step 4) and fine-tuning (step 5).

What is common to both steps lives here: the `tf.distribute` strategy, Adam with a learning-rate
schedule, one optimisation step (`tf.GradientTape` inside `tf.function`, run per replica and
reduced), the outer loop with checkpoints, CSV + TensorBoard logs, a tqdm progress bar with the
loss terms, a clean stop on a non-finite loss and an optional early stop (a rule object with
`check(terms)`, daqsm.network_model.stopping.StoppingRule). The steps differ
only in the loss function they pass in.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from daqsm.errors import choices_message

STRATEGIES = ("default", "mirrored", "multiworker")
SCHEDULES = ("constant", "cosine", "exponential")


def make_strategy(name: str, collective_timeout_s: float = 0.0) -> tf.distribute.Strategy:
    """'default' (one device), 'mirrored' (all local GPUs, or CPUs), 'multiworker' (TF_CONFIG).

    `collective_timeout_s` bounds each multi-worker collective (0: no bound), so a dead worker ends
    the run (daqsm.network_model.distributed) instead of hanging it.
    """
    key = str(name).lower()
    if key == "default":
        return tf.distribute.get_strategy()
    if key == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if key == "multiworker":
        from daqsm.network_model.distributed import make_multiworker_strategy

        return make_multiworker_strategy(collective_timeout_s)
    raise choices_message("strategy", name, STRATEGIES)


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """rate(step) = base(step) * min(1, (step + 1) / warmup_steps): a linear ramp into any schedule.

    Fine-tuning starts from a trained network: full-size Adam steps at once (Adam's first steps have
    size ~lr whatever the gradient) first degrade the pre-trained map; the ramp avoids that.
    """

    def __init__(self, base, warmup_steps: int):
        self.base, self.warmup_steps = base, int(warmup_steps)

    def __call__(self, step):
        base = self.base(step) if callable(self.base) else tf.constant(self.base, tf.float32)
        ramp = tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / float(max(1, self.warmup_steps)))
        return tf.cast(base, tf.float32) * ramp

    def get_config(self):
        base = keras.optimizers.schedules.serialize(self.base) if callable(self.base) else self.base
        return {"base": base, "warmup_steps": self.warmup_steps}


def make_optimizer(learning_rate: float, schedule: str = "constant", decay_steps: int = 1000,
                   decay_rate: float = 0.5, clipnorm: float | None = None,
                   warmup_steps: int = 0, loss_scale: bool = False) -> keras.optimizers.Optimizer:
    """Adam with a learning-rate schedule.

    Args:
        learning_rate: initial rate.
        schedule: 'constant', 'cosine' (to 0 over decay_steps) or 'exponential' (x decay_rate
            every decay_steps, staircase).
        decay_steps: schedule length in steps.
        decay_rate: factor of the exponential schedule.
        clipnorm: optional gradient-norm clipping.
        warmup_steps: linear ramp of the rate over the first steps (`LinearWarmup`); 0: none.
        loss_scale: wrap Adam in a dynamic `keras.optimizers.LossScaleOptimizer` (float16 training,
            daqsm.network_model.precision); `make_train_step` then scales the loss.
    """
    key = str(schedule).lower()
    if key == "constant":
        lr = learning_rate
    elif key == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, int(decay_steps)))
    elif key == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(learning_rate, max(1, int(decay_steps)), decay_rate,
                                                         staircase=True)
    else:
        raise choices_message("lr_schedule", schedule, SCHEDULES)
    if warmup_steps and warmup_steps > 0:
        lr = LinearWarmup(lr, warmup_steps)
    optimizer = keras.optimizers.Adam(learning_rate=lr, clipnorm=clipnorm)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model, optimizer, loss_fn):
    """Compile one optimisation step: per-replica GradientTape, reduced loss terms.

    Args:
        strategy: the distribution strategy whose scope holds the model and optimizer.
        model: the model whose trainable weights are optimised.
        optimizer: a Keras optimizer.
        loss_fn: callable(batch) -> dict of per-replica scalar terms with key "loss" (the one
            differentiated). Each term must already be divided by `num_replicas_in_sync`
            (`replica_mean` does it), so summing over replicas gives the global mean.

    Returns:
        tf.function(batch) -> dict of scalar tensors (summed over replicas).
    """
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        with tf.GradientTape() as tape:
            terms = loss_fn(batch)
            # float16: the scaled loss keeps small gradients from underflowing; apply_gradients unscales
            objective = optimizer.scale_loss(terms["loss"]) if scaled else terms["loss"]
        grads = tape.gradient(objective, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return terms

    @tf.function
    def step(batch):
        terms = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in terms.items()}

    return step


def make_eval_step(strategy: tf.distribute.Strategy, loss_fn):
    """Like `make_train_step` without the update (validation)."""
    @tf.function
    def step(batch):
        terms = strategy.run(loss_fn, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in terms.items()}

    return step


def replica_mean(per_sample):
    """Batch mean of a (batch,) loss, divided by the replica count (global mean after a SUM reduce)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.reduce_mean(per_sample) / float(replicas)


class LossLog:
    """Append-only CSV (step + loss terms) and TensorBoard scalars; safe to reopen on resume."""

    def __init__(self, csv_path: str, tensorboard_dir: str | None = None):
        self.csv_path = csv_path
        self._columns: list | None = None
        if os.path.exists(csv_path) and os.path.getsize(csv_path) > 0:
            self._columns = self._read_rows()[0]
        self._writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a run killed after its last checkpoint logged them)."""
        if self._columns is None:
            return
        from daqsm.outputs import atomic_path

        rows = [r for r in self._read_rows()[1] if int(float(r["step"])) <= step]
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self._columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    def _read_rows(self) -> tuple:
        """(columns, rows) of an existing log; a log edited by hand into something else is one line."""
        from daqsm.errors import InputError

        try:
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
            if "step" not in columns:
                raise ValueError("no 'step' column")
            for number, row in enumerate(rows, start=2):
                try:
                    float(row["step"])
                    if not float(row["step"]).is_integer():
                        raise ValueError
                except (TypeError, ValueError):
                    raise ValueError(f"line {number}: step {row.get('step')!r} is not an integer") from None
        except (UnicodeDecodeError, ValueError, csv.Error) as err:
            raise InputError(f"{self.csv_path}: cannot resume this log ({str(err).splitlines()[0][:120]}); "
                             "restore it or start a new run in another folder") from None
        return columns, rows

    def write(self, step: int, terms: dict) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in terms.items()}}
        if self._columns is None or not set(row) <= set(self._columns):
            # new columns (first row, or validation terms appearing): rewrite the header
            old_rows = []
            if self._columns is not None:
                with open(self.csv_path, newline="", encoding="utf-8") as fh:
                    old_rows = list(csv.DictReader(fh))
            self._columns = list(self._columns or []) + [k for k in row if k not in (self._columns or [])]
            with open(self.csv_path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self._columns, restval="")
                writer.writeheader()
                writer.writerows(old_rows)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([row.get(c, "") for c in self._columns])
        if self._writer is not None:
            # tf.summary.scalar needs the tensorboard package; the raw op with the scalar plugin's
            # metadata writes the same event records without it.
            metadata = tf.compat.v1.SummaryMetadata()
            metadata.plugin_data.plugin_name = "scalars"
            with self._writer.as_default(step=int(step)):
                for key, value in row.items():
                    if key != "step":
                        tf.summary.write(key, tf.constant(value, tf.float32), metadata=metadata)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()


class MemoryLog:
    """`LossLog`'s interface without files: the rows stay in `rows` (the array-first steps)."""

    def __init__(self):
        self.rows: list[dict] = []

    def truncate_after(self, step: int) -> None:
        self.rows = [r for r in self.rows if r["step"] <= step]

    def write(self, step: int, terms: dict) -> None:
        self.rows.append({"step": int(step), **{k: float(v) for k, v in terms.items()}})

    def close(self) -> None:
        pass


@dataclass
class LoopResult:
    """How the loop ended: last completed step, reason ('done', 'converged', 'nan'), last terms."""

    step: int
    reason: str
    terms: dict = field(default_factory=dict)


def run_loop(step_fn, batches, step_var: tf.Variable, max_steps: int, log: LossLog, *,
             manager: tf.train.CheckpointManager | None = None, checkpoint_every: int = 0,
             validate=None, validate_every: int = 0, convergence=None,
             log_every: int = 1, progress: bool = True, desc: str = "train", healthy=None,
             max_seconds: float = 0.0) -> LoopResult:
    """Run optimisation steps from `step_var` up to `max_steps`.

    Args:
        step_fn: compiled step, batch -> dict of scalar tensors with "loss".
        batches: iterator of batches (distributed or not, as `step_fn` expects).
        step_var: int64 variable holding the number of completed steps (checkpointed).
        max_steps: total number of steps of the run (resume continues up to it).
        log: where loss terms go every `log_every` steps (and validation terms), with `elapsed_s`,
            the wall time since the loop started (includes the first step's tracing).
        manager: checkpoint manager, saved every `checkpoint_every` steps and at the end.
        validate: callable() -> dict of validation terms, every `validate_every` steps and at the end.
        convergence: optional early stop, an object with `check(terms) -> reason or None`
            (daqsm.network_model.stopping.StoppingRule: discrepancy principle and/or a flat loss).
        progress: show a tqdm bar with the loss terms.
        healthy: optional callable() -> reason or None, called before each checkpoint and at the end
            (the loss is checked before each update, so the weights after the last one may be NaN).
        max_seconds: stop after the first step that ends past this wall time (0: no limit), with
            reason 'time' and a checkpoint: long runs go in chunks, each call resumes the last.

    Returns:
        LoopResult. On a non-finite loss the loop stops without saving and reason is 'nan'; an early
        stop gives the stopping rule's reason ('converged', 'discrepancy').
    """
    import time

    from tqdm import tqdm

    start = int(step_var.numpy())
    t0 = time.perf_counter()
    bar = tqdm(total=max_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True,
               file=sys.stderr, leave=False)
    result = LoopResult(start, "done")
    try:
        for step in range(start + 1, max_steps + 1):
            terms = {k: float(v) for k, v in step_fn(next(batches)).items()}
            if not math.isfinite(terms["loss"]):
                result = LoopResult(step, "nan", terms)
                return result
            step_var.assign(step)
            result = LoopResult(step, "running", terms)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()})
            is_last = step == max_steps
            if validate is not None and validate_every and (step % validate_every == 0 or is_last):
                terms = {**terms, **validate()}
                if not all(math.isfinite(v) for k, v in terms.items() if k.startswith("val_")):
                    return LoopResult(step, "nan", terms)  # a NaN validation loss is a failed run, not a row
            if healthy is not None and manager is not None and checkpoint_every and step % checkpoint_every == 0 \
                    and healthy():
                return LoopResult(step, "nan", terms)  # never checkpoint NaN weights
            stop = convergence.check(terms) if convergence is not None else None
            if step % max(1, log_every) == 0 or is_last or stop or len(terms) > len(result.terms):
                log.write(step, {**terms, "elapsed_s": time.perf_counter() - t0})
            if manager is not None and checkpoint_every and step % checkpoint_every == 0:
                manager.save(checkpoint_number=step)
            if stop:
                result = LoopResult(step, stop, terms)
                break
            if max_seconds and not is_last and time.perf_counter() - t0 >= max_seconds:
                result = LoopResult(step, "time", terms)
                break
        else:
            result = LoopResult(result.step, "done", result.terms)
        if healthy is not None and result.step > start and healthy():
            return LoopResult(result.step, "nan", result.terms)
        if manager is not None and result.step > start:
            manager.save(checkpoint_number=result.step)
        return result
    finally:
        bar.close()
        log.close()
