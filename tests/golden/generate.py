"""Golden files: each step's output on the tiny fixed-seed demo case, summarised small.

Regenerate after an intended change (and say why in the commit):
    python tests/golden/generate.py

It runs `daqsm-demo --size tiny` (built-in phantom at 6 mm, 2 synthetic maps, 16^3 patches, a
depth-2 network, 3 pre-training steps, 3 fine-tuning iterations) into a temporary folder and
stores, per step, summary statistics and one central slice (float32) in tiny_pipeline.npz, plus
the metric table in tiny_table.json. tests/test_golden.py reruns the same pipeline and compares.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN_NPZ = HERE / "tiny_pipeline.npz"
GOLDEN_TABLE = HERE / "tiny_table.json"
DEMO_ARGS = ["--size", "tiny", "--seed", "0"]


def run_tiny(out_dir) -> int:
    """Run the tiny demo into out_dir; returns the exit status."""
    from evaluation.demo import main

    return main(["-o", str(out_dir)] + DEMO_ARGS)


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


def summarise(out_dir) -> tuple[dict, dict]:
    """Summary arrays of every step's output and the fine-tuned table of a tiny demo run."""
    import h5py

    from training_data.volume_io import read_volume

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
    summary["step4/first_step_losses"] = np.array([log["loss"][0], log["l1"][0], log["ndi"][0], log["tv"][0]])
    _stats("step5_finetuned", read_volume(out_dir / "finetuned" / "Sim2Snr1.nii.gz").data, summary, trained=True)
    _stats("case_local_field", read_volume(out_dir / "targets" / "Sim2Snr1" / "local_field.nii.gz").data, summary)
    table = json.loads((out_dir / "table.json").read_text())
    return summary, table


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if run_tiny(tmp):
            print("generate: the tiny demo failed; golden files unchanged", file=sys.stderr)
            return 1
        summary, table = summarise(tmp)
    np.savez_compressed(GOLDEN_NPZ, **summary)
    GOLDEN_TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_NPZ} ({GOLDEN_NPZ.stat().st_size // 1024} kB) and {GOLDEN_TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
