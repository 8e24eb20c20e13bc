"""Step 4 script: loss goes down, checkpoint resume, NaN stop, config handling, mirrored strategy."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.network_model.train_model import train  # noqa: E402
from daqsm.outputs import config_companion  # noqa: E402
from tests.network_model.synthetic import make_patch_file, newest_checkpoint_step  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["--depth", "1", "--base_filters", "4", "--batch_size", "2", "--learning_rate", "3e-3",
        "--progress", "false", "--val_fraction", "0.2"]


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    return make_patch_file(tmp_path_factory.mktemp("patches") / "patches.h5", count=6, n=16)


def _log(run):
    with open(Path(run) / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_resume_export(patches, tmp_path):
    import keras

    run = tmp_path / "run"
    args = ["--datasets_path", patches, "--run_dir", str(run), *TINY, "--checkpoint_every", "2",
            "--validate_every", "4"]
    assert train.main(args + ["--max_steps", "4"]) == 0  # a run stopped at step 4 ...
    first = _log(run)
    assert [int(r["step"]) for r in first] == [1, 2, 3, 4]
    assert first[-1]["val_loss"] != ""
    model_a = keras.saving.load_model(run / "target_model.keras")

    assert train.main(args + ["--max_steps", "4"]) == 0  # nothing left: re-export from the checkpoint
    model_b = keras.saving.load_model(run / "target_model.keras")
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 1)).astype(np.float32) * 0.05
    m = np.ones_like(x)
    np.testing.assert_array_equal(np.asarray(model_a([x, m])), np.asarray(model_b([x, m])))

    assert train.main(args + ["--max_steps", "12"]) == 0  # ... resumed: continues at step 5
    rows = _log(run)
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(1, 13))
    assert sorted(os.listdir(run / "checkpoints"))[-1].startswith("ckpt-")
    loss = np.array([float(r["loss"]) for r in rows])
    assert loss[-3:].mean() < loss[:3].mean()  # training reduces the total loss
    cfg = json.loads(Path(config_companion(run, "train", folder=True)).read_text())
    assert cfg["max_steps"] == 12 and cfg["datasets_path"] == patches and cfg["depth"] == 1
    assert (run / "tensorboard").is_dir() and os.listdir(run / "tensorboard")


def test_nan_loss_stops_cleanly(patches, tmp_path, capsys):
    import h5py

    bad = tmp_path / "nan.h5"
    bad.write_bytes(Path(patches).read_bytes())
    with h5py.File(bad, "r+") as h5:
        h5["target/field"][:, 8, 8, 8] = np.nan
    run = tmp_path / "run"
    code = train.main(["--datasets_path", str(bad), "--run_dir", str(run), *TINY, "--max_steps", "3",
                       "--val_fraction", "0"])
    assert code == 1
    assert "non-finite loss at step 1" in capsys.readouterr().err
    assert not (run / "target_model.keras").exists()


@pytest.mark.parametrize("extra,message", [
    (["--datasets_path", "missing.h5"], "patch file not found"),
    (["--lambda_ndi", "much"], "expected a number"),
    (["--strategy", "mirrorred"], "did you mean 'mirrored'"),
    (["--phase_rad_per_ppm", "-1"], "phase_rad_per_ppm"),
])
def test_bad_input_exit_2(patches, tmp_path, capsys, extra, message):
    args = ["--datasets_path", patches, "--run_dir", str(tmp_path / "r"), *TINY, "--max_steps", "1"]
    assert train.main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_config_file_and_unknown_key(patches, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets_path: nothere.h5\nbase_filter: 8\n")
    assert train.main(["--config", str(cfg)]) == 2
    assert "unknown key 'base_filter' (did you mean 'base_filters'?)" in capsys.readouterr().err
    from daqsm.network_model.config import resolve_config

    cfg.write_text(f"datasets_path: {patches}\nbase_filters: 8\nlearning_rate: 1e-3\n")
    args = train.build_parser().parse_args(["--config", str(cfg), "--base_filters", "6"])
    resolved = resolve_config(train.PretrainConfig, args)
    assert resolved.base_filters == 6 and resolved.learning_rate == 1e-3 and resolved.datasets_path == patches


def test_every_field_is_a_cli_option():
    parser = train.build_parser()
    for f in dataclasses.fields(train.PretrainConfig):
        value = "1" if f.type in ("int", "float", "float | None") else "true" if f.type == "bool" else "x"
        assert getattr(parser.parse_args([f"--{f.name}", value]), f.name) == value
        # the dashed spelling of steps 1-3 reaches the same key
        assert getattr(parser.parse_args([f"--{f.name.replace('_', '-')}", value]), f.name) == value


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from daqsm.network_model.train_model.train import PretrainConfig, build_loss_fn
    from daqsm.network_model.training_loop import make_strategy, make_optimizer, make_train_step
    from daqsm.network_model.unet import DomainAdaptiveUNet
    from daqsm.training_data.dipole import dipole_operator_tf
    from tests.network_model.synthetic import ball_mask, smooth_chi
    from daqsm.training_data.dipole import forward_field
    cfg = PretrainConfig(depth=2, base_filters=2)
    n = 8
    mask = np.stack([ball_mask(n)] * 2)[..., None]
    chi = np.stack([smooth_chi(n, 1), smooth_chi(n, 2)])[..., None]
    field = forward_field(chi[..., 0])[..., None] * mask
    batch = ((field, mask, chi), (field[::-1] * 1.5, mask, mask))
    dipole = dipole_operator_tf((n, n, n))
    results = {}
    weights = None
    for name in ("default", "mirrored"):
        strategy = make_strategy(name)
        with strategy.scope():
            model = DomainAdaptiveUNet(2, 2).build_for()
            if weights is None:
                weights = model.get_weights()
            model.set_weights(weights)
            opt = make_optimizer(1e-3)
            opt.build(model.trainable_variables)  # slots created in the strategy scope, not in tf.function
        loss_fn = build_loss_fn(model, dipole, 20.0, cfg, training=True)
        ds = tf.data.Dataset.from_tensors(batch)
        dist = iter(strategy.experimental_distribute_dataset(ds.repeat()))
        step = make_train_step(strategy, model, opt, loss_fn)
        terms = step(next(dist))  # terms at the initial weights, then one update
        after = step(next(dist))  # terms after the (all-reduced) update
        results[name] = {"replicas": strategy.num_replicas_in_sync,
                         **{k: float(v) for k, v in terms.items()},
                         "after": float(after["loss"])}
    print("RESULT" + json.dumps(results), flush=True)
    import os
    os._exit(0)  # skip interpreter teardown: the distributed iterators' threads can stall it for minutes
""")


@pytest.mark.slow
def test_mirrored_matches_default():
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # the timeout only guards against a hang (a loaded CI machine needs minutes), it is not a benchmark
    proc = subprocess.run([sys.executable, "-c", MIRRORED], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    res = json.loads(line[0][len("RESULT"):])
    assert res["mirrored"]["replicas"] == 2 and res["default"]["replicas"] == 1
    for key in ("loss", "l1", "ndi", "tv", "after"):
        np.testing.assert_allclose(res["mirrored"][key], res["default"][key], rtol=2e-4, err_msg=key)


def test_resume_with_another_network_is_an_input_error(patches, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--datasets_path", patches, "--run_dir", str(run), *TINY, "--val_fraction", "0"]
    assert train.main(args + ["--max_steps", "1", "--checkpoint_every", "1"]) == 0
    capsys.readouterr()
    assert train.main(args + ["--max_steps", "2", "--base_filters", "6"]) == 2
    assert "different base_filters" in capsys.readouterr().err  # the run's config names the key (issue 23)
    (run / "train_config.json").rename(run / "config.json")  # a run folder of an earlier version: still read
    assert train.main(args + ["--max_steps", "2", "--base_filters", "6"]) == 2
    assert "different base_filters" in capsys.readouterr().err
    assert train.main(args + ["--max_steps", "2"]) == 0  # resumed: the older name is replaced by the rule's
    assert (run / "train_config.json").is_file() and not (run / "config.json").exists()
    (run / "train_config.json").unlink()  # without the run's config the checkpoint itself still refuses
    assert train.main(args + ["--max_steps", "3", "--base_filters", "6"]) == 2
    assert "does not match this network" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(patches, tmp_path, capsys):
    import signal
    import time

    run = tmp_path / "run"
    args = ["--datasets_path", patches, "--run_dir", str(run), *TINY, "--val_fraction", "0",
            "--checkpoint_every", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, str(REPO / "network_model/train_model/train.py"), *args,
                             "--max_steps", "1000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and newest_checkpoint_step(run / "checkpoints") < 4:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)  # a hard kill, no clean-up code runs
        proc.wait()
    import tensorflow as tf

    saved = int(tf.train.latest_checkpoint(str(run / "checkpoints")).rsplit("-", 1)[1])
    assert saved >= 4
    assert train.main(args + ["--max_steps", str(saved + 1)]) == 0
    assert f"(step {saved})" in capsys.readouterr().err
    steps = [int(r["step"]) for r in _log(run)]
    assert steps == list(range(1, saved + 2))  # rows after the checkpoint were dropped, then continued


def test_in_memory_batches_equal_per_patch_reads(patches):
    # the same seed gives the same batches whether a group is read once or one chunk per step
    from daqsm.network_model.data import LoadedPatchGroup, group_dataset, load_patch_group, read_patch_group

    for group in ("source", "target"):
        on_file = read_patch_group(patches, group)
        assert load_patch_group(on_file, max_bytes=10) is on_file  # too large for the budget: streamed
        loaded = load_patch_group(on_file, max_bytes=2**30)
        assert isinstance(loaded, LoadedPatchGroup) and loaded.count == on_file.count
        extra = np.arange(on_file.count, dtype=np.float32) * 0.5
        a = iter(group_dataset(on_file, np.arange(on_file.count), 2, seed=5, extras=(extra,)))
        b = iter(group_dataset(loaded, np.arange(on_file.count), 2, seed=5, extras=(extra,)))
        for _ in range(4):
            for x, y in zip(next(a), next(b)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_max_minutes_runs_in_resumable_chunks(patches, tmp_path, capsys):
    import keras

    run = tmp_path / "run"
    args = ["--datasets_path", patches, "--run_dir", str(run), *TINY, "--val_fraction", "0", "--max_steps", "4",
            "--max_minutes", "1e-6"]  # every call stops after its first step
    for expected in (1, 2, 3):
        assert train.main(args) == 0
        assert f"max_minutes 1e-06 reached at step {expected} of 4" in capsys.readouterr().err
        assert keras.saving.load_model(run / "target_model.keras") is not None  # each chunk exports
    assert train.main(args) == 0  # the last step ends the run: no time message
    assert "reached at step" not in capsys.readouterr().err
    assert [int(r["step"]) for r in _log(run)] == [1, 2, 3, 4]


def test_ndi_floor_is_logged_and_hinges_the_data_term(patches, tmp_path):
    run = tmp_path / "run"
    args = ["--datasets_path", patches, *TINY, "--val_fraction", "0", "--max_steps", "2"]
    assert train.main(args + ["--run_dir", str(run), "--ndi_floor", "1e6"]) == 0
    rows = _log(run)
    for row in rows:  # a floor above any NDI: the data term gives nothing, the raw NDI is still logged
        assert float(row["ndi_floor"]) == pytest.approx(1e6)
        assert float(row["ndi_weighted"]) == 0.0 and float(row["ndi"]) > 0
        assert float(row["loss"]) == pytest.approx(float(row["l1"]) + float(row["tv_weighted"]), rel=1e-5)
    assert train.main(args + ["--run_dir", str(tmp_path / "noise"), "--ndi_floor", "noise"]) == 0
    row = _log(tmp_path / "noise")[0]
    # per crop max(NDI - floor, 0), then the batch mean: at least the hinge of the means
    assert 0 < float(row["ndi_floor"])
    assert float(row["ndi_excess"]) >= max(float(row["ndi"]) - float(row["ndi_floor"]), 0.0) - 1e-6
    assert train.main(args + ["--run_dir", str(tmp_path / "bad"), "--ndi_floor", "lots"]) == 2
    assert not (tmp_path / "bad").exists()
