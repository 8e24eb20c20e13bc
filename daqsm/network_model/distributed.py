"""Multi-worker training (step 4): who writes, where the others write, and what a lost worker means.

`tf.distribute.MultiWorkerMirroredStrategy` runs the same program on every worker (TF_CONFIG says
which one this is). Every worker must take part in each collective (gradient all-reduce, the
synchronised DSBN moments, a checkpoint save), but only the **chief** may write the run folder: the
usual TensorFlow pattern has the other workers write their checkpoints and logs into a temporary
folder that is removed at the end (`WorkerOutput`). On a restart every worker restores from the
chief's `checkpoints/` (the run folder must be on a file system all workers see).

A worker that dies leaves the others waiting in a collective. `collective_timeout_s` (config key)
bounds that wait: the collective raises DeadlineExceeded/Unavailable, and `lost_worker_message`
turns it into one line naming this worker, the step and the checkpoint a restart resumes from.

Batch norm across workers: the U-Net's DSBN uses **synchronised** moments (`synchronized_bn=True`,
an all-reduce of each batch's mean and variance over all replicas), so a two-worker run normalises
with the statistics of the whole global batch, exactly like one device with that batch, and the
moving statistics agree on every worker (tests/network_model/test_multiworker.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile

#: TensorFlow errors a collective raises when a peer died or timed out.
LOST_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError", "AbortedError",
                    "InternalError")


def make_multiworker_strategy(collective_timeout_s: float = 0.0):
    """MultiWorkerMirroredStrategy from $TF_CONFIG; collectives time out after `collective_timeout_s`
    (0: never), so a dead worker ends the run instead of hanging it."""
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(collective_timeout_s) if collective_timeout_s and collective_timeout_s > 0 else None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_chief(strategy) -> bool:
    """True on the worker that writes the run folder (always true for a one-worker strategy)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def worker_name(strategy) -> str:
    """'worker 1' / 'chief 0' from the cluster resolver; '' for a one-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return ""
    return f"{resolver.task_type} {resolver.task_id}"


def distribute_options(dataset, strategy):
    """Shard multi-worker input by element (each worker keeps its slice of every global batch); the
    patch pipeline reads HDF5 by index, so there are no files to shard."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


class WorkerOutput:
    """The folder this worker writes: the run folder on the chief, a temporary one elsewhere.

    Use as a context manager; on exit a non-chief's temporary folder is removed.
    """

    def __init__(self, run_dir: str, strategy):
        self.run_dir, self.chief = run_dir, is_chief(strategy)
        self.path = run_dir if self.chief else tempfile.mkdtemp(prefix="daqsm-worker-")

    def __enter__(self) -> "WorkerOutput":
        os.makedirs(self.path, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)


def is_lost_peer(err: BaseException) -> bool:
    """True for the errors a collective raises when another worker is gone."""
    return type(err).__name__ in LOST_PEER_ERRORS


def lost_worker_message(err: BaseException, strategy, step: int, checkpoint: str | None) -> str:
    """One line: which worker noticed, which one it lost (when TensorFlow names it), the step, and
    where a restart resumes."""
    import re

    who = worker_name(strategy) or "this worker"
    named = [f"{job} {task}" for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(err))]
    lost = next((n for n in named if n != who), "another worker")
    return (f"multi-worker run ended at step {step}: {who} lost contact with {lost} ({type(err).__name__}); "
            f"restart every worker with the same command to resume from "
            f"{checkpoint or 'the start (no checkpoint yet)'}")


def check_same_step(strategy, step_var) -> None:
    """Every worker must resume from the same step (InputError otherwise): a run folder that is not on
    a file system all workers see would let the chief resume while the others start from scratch."""
    import tensorflow as tf

    from daqsm.errors import InputError

    if strategy.num_replicas_in_sync < 2:
        return
    mine = float(step_var.numpy())
    total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                            strategy.run(lambda: tf.cast(step_var, tf.float32)), axis=None)
    mean = float(total) / strategy.num_replicas_in_sync
    if mean != mine:
        raise InputError(f"checkpoints: {worker_name(strategy) or 'this worker'} restored step {int(mine)}, the "
                         f"workers' mean is {mean:g}; the run folder must be on a file system every worker sees")
