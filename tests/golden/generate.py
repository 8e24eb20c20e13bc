"""Golden files: each step's output on the tiny fixed-seed demo case, summarised small.

Regenerate after an intended change (and say why in the commit):
    python tests/golden/generate.py

It runs `python -m daqsm.evaluation.demo --size tiny --seed 0` (built-in phantom at 6 mm, 2 synthetic
maps, 16^3 patches, a depth-2 network, 3 pre-training steps, 3 fine-tuning iterations) in a fresh
process into a temporary folder and writes, beside this file:

    tiny_pipeline.npz   per step: summary statistics and one central slice (float32); the loss
                        columns of the step-4 log and of the step-5 log of Sim2Snr1, every row
    tiny_table.json     the fine-tuned network's RC2 metric table
    tiny_versions.json  package versions, Python, platform and the TensorFlow settings used

tests/test_golden.py reruns the pipeline and compares with tests/golden/compare.py, which holds the
tolerances and the spreads they were set from; tests/golden/spread.py measures those spreads.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GOLDEN_NPZ = HERE / "tiny_pipeline.npz"
GOLDEN_TABLE = HERE / "tiny_table.json"
GOLDEN_VERSIONS = HERE / "tiny_versions.json"
DEMO_ARGS = ["--size", "tiny", "--seed", "0"]
#: distributions whose versions the outputs depend on (recorded, and printed when a comparison fails)
PACKAGES = ("tensorflow", "keras", "numpy", "scipy", "h5py", "nibabel", "nilearn")
#: environment variables that change TensorFlow's numerics (recorded with the versions)
TF_SETTINGS = ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "DAQSM_OP_DETERMINISM")
#: log columns that are not losses
NOT_LOSSES = ("step", "elapsed_s")


def run_tiny(out_dir, env: dict | None = None, python: str | None = None, command: list | None = None,
             cwd=None) -> subprocess.Popen:
    """Start the tiny demo into out_dir in a new process (the installed command's code path).

    Args:
        out_dir: output folder (created by the demo).
        env: extra environment variables (e.g. TF_NUM_INTRAOP_THREADS) on top of this process's.
        python: interpreter to run it with (default this one); another virtual environment's
            python runs the same checkout with that environment's packages.
        command: the demo command instead (e.g. an installed wheel's `daqsm-demo`).
        cwd: folder to run it in (default the checkout).

    Returns:
        The running process; its stdout and stderr go to OUT_DIR.log. `finish(proc)` waits.
    """
    out_dir = Path(out_dir)
    log = open(str(out_dir) + ".log", "w", encoding="utf-8")
    cmd = [*(command or [python or sys.executable, "-m", "daqsm.evaluation.demo"]), "-o", str(out_dir), *DEMO_ARGS]
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    log.close()
    return proc


def finish(proc: subprocess.Popen) -> str:
    """Wait for a `run_tiny` process; '' when it succeeded, else its exit status and the log's tail."""
    if proc.wait() == 0:
        return ""
    tail = Path(proc.log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
    return f"tiny demo exited {proc.returncode} ({proc.log_path}):\n" + "\n".join(tail)


def package_versions(python: str | None = None) -> dict:
    """Versions of PACKAGES and Python, the platform and the TF_SETTINGS of the environment."""
    # compare paths without resolving links: a virtual environment's python links to the base one
    if python and os.path.abspath(python) != os.path.abspath(sys.executable):
        out = subprocess.run([python, str(Path(__file__).resolve()), "--versions"], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    versions["platform"] = f"{platform.system()} {platform.machine()}"
    versions["cpus"] = str(os.cpu_count())
    for key in TF_SETTINGS:
        versions[key] = os.environ.get(key, "unset")
    return versions


def _stats(name: str, volume: np.ndarray, out: dict, trained: bool = False) -> None:
    volume = np.asarray(volume, np.float64)
    # a trained network's single extreme voxel moves by ~0.5 % when its input changes by 1e-7
    # (float32 rounding upstream): compare the 0.1 / 99.9 percentiles instead of min / max there
    low, high = np.percentile(volume, (0.1, 99.9)) if trained else (volume.min(), volume.max())
    out[f"{name}/stats"] = np.array([volume.mean(), volume.std(), low, high, np.sqrt(np.mean(volume**2))])
    if volume.ndim >= 3:
        middle = volume.shape[-1] // 2
        out[f"{name}/slice"] = np.asarray(volume[(0,) * (volume.ndim - 3) + (slice(None), slice(None), middle)],
                                          np.float32)


def _loss_log(name: str, path: Path, out: dict) -> None:
    """Every row of the loss columns of a training log (not step, not the wall time)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c not in NOT_LOSSES]
    out[f"{name}/log"] = np.array([[float(r[c]) if r[c] != "" else np.nan for c in columns] for r in rows])
    out[f"{name}/log_columns"] = np.array(columns)


def summarise(out_dir) -> tuple[dict, dict]:
    """Summary arrays of every step's output and the fine-tuned table of a tiny demo run."""
    import h5py

    from daqsm.training_data.volume_io import read_volume

    out_dir = Path(out_dir)
    summary = {}
    with h5py.File(out_dir / "step1_chi.h5", "r") as h5:
        _stats("step1_chi", h5["chi"][()], summary)
    with h5py.File(out_dir / "step2_fields.h5", "r") as h5:
        _stats("step2_field", h5["field"][()], summary)
    with h5py.File(out_dir / "step3_patches.h5", "r") as h5:
        summary["step3/counts"] = np.array([h5["source/field"].shape[0], h5["target/field"].shape[0]])
        for name in ("source/field", "source/chi", "target/field", "target/weight"):
            _stats(f"step3_{name.replace('/', '_')}", h5[name][()], summary)
    log = np.genfromtxt(out_dir / "step4_pretrain" / "log.csv", delimiter=",", names=True)
    # the first row is the loss of the initial weights: no training has happened yet
    summary["step4/first_step_losses"] = np.array([log["loss"][0], log["l1"][0], log["ndi"][0], log["tv"][0]])
    _loss_log("step4", out_dir / "step4_pretrain" / "log.csv", summary)
    _loss_log("step5", out_dir / "finetuned" / "Sim2Snr1_loss.csv", summary)
    _stats("pretrained", read_volume(out_dir / "pretrained" / "Sim2Snr1.nii.gz").data, summary, trained=True)
    _stats("step5_finetuned", read_volume(out_dir / "finetuned" / "Sim2Snr1.nii.gz").data, summary, trained=True)
    _stats("case_local_field", read_volume(out_dir / "targets" / "Sim2Snr1" / "local_field.nii.gz").data, summary)
    table = json.loads((out_dir / "table.json").read_text())
    return summary, table


def load_golden() -> tuple[dict, dict, dict]:
    """(summary, table, versions) of the golden files; versions {} when the file predates them."""
    summary = dict(np.load(GOLDEN_NPZ))
    table = json.loads(GOLDEN_TABLE.read_text())
    versions = json.loads(GOLDEN_VERSIONS.read_text()) if GOLDEN_VERSIONS.exists() else {}
    return summary, table, versions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", action="store_true", help="print this environment's versions as JSON and exit")
    args = parser.parse_args(argv)
    if args.versions:
        print(json.dumps(package_versions()))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        error = finish(run_tiny(Path(tmp) / "tiny"))
        if error:
            print(f"generate: {error}\ngolden files unchanged", file=sys.stderr)
            return 1
        summary, table = summarise(Path(tmp) / "tiny")
    np.savez_compressed(GOLDEN_NPZ, **summary)
    GOLDEN_TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    GOLDEN_VERSIONS.write_text(json.dumps(package_versions(), indent=1) + "\n")
    print(f"wrote {GOLDEN_NPZ} ({GOLDEN_NPZ.stat().st_size // 1024} kB), {GOLDEN_TABLE.name}, {GOLDEN_VERSIONS.name}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python tests/golden/generate.py`: import the checkout's packages
        sys.path.insert(0, str(REPO))
    sys.exit(main())
