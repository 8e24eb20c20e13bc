"""Learning curve of a long (chunked) pre-training run: source L1 against predicting zero, target NDI
against its floor and the truth's level, and the pre-trained network's rmse against TKD per snapshot.

Command (a run of `train.py ... --max_minutes 8` repeated; each chunk's target_model.keras copied to
MODELS/step-N.keras; the demo's step-3 patch file and target cases):
    python benchmarks/bench_pretrain_long.py --run RUN --patches demo_out/step3_patches.h5 \\
        --targets demo_out/targets --models MODELS --bin 50

Prints Markdown: (1) the predict-zero L1 of the source patches (train and validation split of the run's
seed), (2) per bin of steps the mean training l1, ndi, ndi_floor and the validation l1 / ndi logged in
the bin, (3) per snapshot the rmse (daqsm.evaluation.metrics, x100 as in RC2 tables) of the
pre-trained network (whole volume) beside TKD (threshold 0.19) and L2 gradient (lambda 0.1), both stage 1
(no truth), padded FFTs (daqsm.evaluation.baselines), on each case.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _mean(rows, key):
    values = [float(r[key]) for r in rows if r.get(key, "") != ""]
    return f"{np.mean(values):.4g}" if values else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--patches", required=True)
    parser.add_argument("--targets", default=None)
    parser.add_argument("--models", default=None)
    parser.add_argument("--bin", type=int, default=50)
    args = parser.parse_args(argv)

    import h5py

    from daqsm.network_model.data import split_indices
    from daqsm.outputs import find_config_companion

    config_path = find_config_companion(args.run, "train", folder=True)  # config.json in an older run folder
    if config_path is None:
        parser.error(f"--run {args.run}: no resolved config (train_config.json) in the run folder")
    cfg = json.loads(Path(config_path).read_text())
    with h5py.File(args.patches, "r") as h5:
        chi, mask = h5["source/chi"][()], h5["source/mask"][()]
    zero = np.array([np.abs(c[m > 0]).mean() for c, m in zip(chi, mask)]) * cfg["label_scale"]
    train, val = split_indices(len(zero), cfg["val_fraction"], cfg["seed"])
    print(f"predict-zero L1 (network units): train {zero[train].mean():.4g}, validation "
          f"{zero[val].mean() if len(val) else float('nan'):.4g}\n")

    with open(Path(args.run) / "log.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    print("| steps | l1 (train) | ndi (train, raw) | ndi_floor | val_l1 | val_ndi |")
    print("|---|---:|---:|---:|---:|---:|")
    last = int(rows[-1]["step"])
    for lo in range(1, last + 1, args.bin):
        sel = [r for r in rows if lo <= int(r["step"]) < lo + args.bin]
        if sel:
            print(f"| {lo}-{min(lo + args.bin - 1, last)} | {_mean(sel, 'l1')} | {_mean(sel, 'ndi')} | "
                  f"{_mean(sel, 'ndi_floor')} | {_mean(sel, 'val_l1')} | {_mean(sel, 'val_ndi')} |")

    if not (args.models and args.targets):
        return 0
    import daqsm
    from daqsm.evaluation.baselines import l2_gradient, tkd
    from daqsm.network_model.model_info import load_model_file
    from daqsm.training_data.volume_io import read_volume

    cases = sorted(p for p in Path(args.targets).iterdir() if p.is_dir())
    data = {}
    for case in cases:
        info = json.loads((case / "case.json").read_text())
        m = read_volume(case / "mask.nii.gz", dtype=None).data > 0
        f = read_volume(case / "local_field.nii.gz").data * m
        truth = read_volume(case / "chi.nii.gz").data
        seg = read_volume(case / "segmentation.nii.gz", dtype=None).data
        refs = [daqsm.metrics(fn(f, m, info["voxel_size_mm"], info["b0_dir"], pad="auto"), truth, seg, m)["rmse"]
                for fn in (tkd, l2_gradient)]
        data[case.name] = (f, m, truth, seg, refs)
    snaps = sorted(Path(args.models).glob("step-*.keras"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    print("\n| snapshot | " + " | ".join(f"{c} net / TKD / L2" for c in data) + " |")
    print("|---|" + "---:|" * len(data))
    for snap in snaps:
        model = load_model_file(str(snap))
        cells = []
        for name, (f, m, truth, seg, refs) in data.items():
            chi = daqsm.infer(model, f, m, whole=True)
            cells.append(" / ".join(f"{v:.2f}" for v in (daqsm.metrics(chi, truth, seg, m)["rmse"], *refs)))
        print(f"| {snap.stem} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
