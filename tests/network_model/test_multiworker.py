"""Step 4 with `strategy: multiworker`: two worker processes on 127.0.0.1 (TF_CONFIG, free ports).

One test, three phases, so that only two pairs of workers start (each start imports TensorFlow):

1. Two workers pre-train a tiny network through train.py; while they run, the same config runs in
   this process on one device with the same global batch. Their loss trajectories agree within
   LOSS_RTOL. That holds only if the gradients are all-reduced correctly **and** the DSBN moments
   are synchronised across the workers: with per-replica moments each worker would normalise with
   its half batch's statistics and the very first loss would already differ.
2. Worker 1 is killed after the chief's second checkpoint: the chief ends with one line naming the
   lost contact and the checkpoint to resume from (bounded by `collective_timeout_s`), not a hang.
3. Both workers are restarted with the same command: they resume from the chief's last checkpoint
   and finish. Only the chief wrote the run folder and the exported model; worker 1 wrote into a
   temporary folder (under its own TMPDIR here) that is gone when it exits.

Every wait has a timeout, so a regression fails the test instead of hanging it.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.network_model.train_model import train  # noqa: E402
from tests.network_model.synthetic import make_patch_file, newest_checkpoint_step  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
#: float32 all-reduce order and a 2-replica gradient sum against one batch: the measured relative
#: differences were <= 3.4e-7 over the first 4 steps; 1e-4 leaves room for other thread counts.
LOSS_RTOL = 1e-4
COMPARED_STEPS = 4
TINY = ["--depth", "1", "--base_filters", "4", "--batch_size", "2", "--learning_rate", "3e-3",
        "--progress", "false", "--val_fraction", "0", "--checkpoint_every", "2", "--seed", "3"]
WAIT_S = 150  # guard against a hang on a loaded machine; not a benchmark


def _free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(args: list, tmp: Path, tag: str) -> list:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tmpdir = tmp / f"{tag}_tmp{index}"
        tmpdir.mkdir()
        # one intra-op thread each: two workers and this process share the machine's cores
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmpdir),
               "TF_NUM_INTRAOP_THREADS": "1",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        out = open(tmp / f"{tag}_{index}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen([sys.executable, str(REPO / "network_model/train_model/train.py"), *args],
                                      env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _finish(procs: list, timeout: float = WAIT_S) -> list:
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _losses(run: Path) -> dict:
    with open(run / "log.csv", newline="") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_two_workers_match_one_and_survive_a_kill(tmp_path):
    patches = make_patch_file(tmp_path / "patches.h5", count=4, n=8)
    run = tmp_path / "mw"
    common = ["--datasets_path", patches, *TINY]
    mw = [*common, "--run_dir", str(run), "--strategy", "multiworker", "--collective_timeout_s", "60"]

    # 1. two workers, killed later; meanwhile the one-device reference in this process
    procs = _start_workers([*mw, "--max_steps", "1000"], tmp_path, "first")
    try:
        assert train.main([*common, "--run_dir", str(tmp_path / "single"), "--max_steps", str(COMPARED_STEPS)]) == 0
        deadline = time.time() + WAIT_S
        while time.time() < deadline and newest_checkpoint_step(run / "checkpoints") < 4:
            assert all(p.poll() is None for p in procs), (tmp_path / "first_0.log").read_text()[-3000:]
            time.sleep(0.2)
        assert newest_checkpoint_step(run / "checkpoints") >= 4, "no checkpoint at step >= 4 from the chief"
        assert list((tmp_path / "first_tmp1").glob("daqsm-worker-*")), "worker 1 writes no temp folder"
        procs[1].send_signal(signal.SIGKILL)  # 2. a hard kill of the non-chief
        codes = _finish(procs)
    finally:
        _finish(procs, 5)
    chief_log = (tmp_path / "first_0.log").read_text()
    assert codes[0] == 1, chief_log[-3000:]
    errors = [line for line in chief_log.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "worker 0 lost contact with worker 1" in errors[0], chief_log[-3000:]
    assert "resume from" in errors[0] and "ckpt-" in errors[0]

    single, multi = _losses(tmp_path / "single"), _losses(run)
    steps = list(range(1, COMPARED_STEPS + 1))
    np.testing.assert_allclose([multi[s] for s in steps], [single[s] for s in steps], rtol=LOSS_RTOL)
    assert not (run / "target_model.keras").exists()  # nothing exported by a failed run

    # 3. restart both: resume from the chief's last checkpoint, finish two more steps
    import tensorflow as tf

    saved = int(tf.train.latest_checkpoint(str(run / "checkpoints")).rsplit("-", 1)[1])
    procs = _start_workers([*mw, "--max_steps", str(saved + 2)], tmp_path, "restart")
    codes = _finish(procs)
    logs = [(tmp_path / f"restart_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all(f"resuming from {run / 'checkpoints'}/ckpt-{saved} (step {saved})" in log for log in logs)
    assert "target model:" in logs[0] and "target model:" not in logs[1]  # only the chief exports
    assert (run / "target_model.keras").exists()
    assert not list((tmp_path / "restart_tmp1").iterdir())  # worker 1's temp folder removed
    assert sorted(_losses(run)) == list(range(1, saved + 3))  # contiguous: rows after the checkpoint dropped
