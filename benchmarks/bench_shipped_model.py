"""Accuracy and speed of the shipped pre-trained model on built-in 1 mm cases, beside TKD and L2.

Command (the cases are those train_shipped_model.py simulated; the method adapts to them without
labels, as it does to a user's data — the truth is used only here, for the metrics):

    nice -n 10 python benchmarks/bench_shipped_model.py --cases work_shipped/targets/Sim*Snr* \
        --finetune-cases work_shipped/targets/Sim2Snr1 --iterations 30 --out work_shipped/bench

Per case: the shipped model without fine-tuning (`daqsm-finetune --fast`: the pre-trained map, QC
and sidecar, what a user gets in seconds), fine-tuned (`daqsm-finetune`, the user command, with
--iterations at most, only for --finetune-cases), TKD (threshold 0.19) and L2-gradient (lambda 0.1),
both with padded FFTs; all RC2 metrics against the case's truth; wall seconds of each, and seconds
per fine-tuning iteration from the loss log (`elapsed_s`, excluding the first iteration's tracing).
Prints a Markdown table; the results go to benchmarks/results_shipped_model.md by hand.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _seconds_per_iteration(log_path) -> float | None:
    with open(log_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("elapsed_s")]
    if len(rows) < 3:
        return None
    first, last = rows[1], rows[-1]  # row 0 is the initial loss (no update), row 1 includes tracing
    return (float(last["elapsed_s"]) - float(first["elapsed_s"])) / (int(last["step"]) - int(first["step"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--finetune-cases", nargs="*", default=[])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--model", default="", help="default: the shipped model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from daqsm.evaluation.baselines import l2_gradient, tkd
    from daqsm.evaluation.metrics import rc2_metrics
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.training_data.formats.case_folder import read_case
    from daqsm.training_data.volume_io import read_volume

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ["--model", args.model] if args.model else []
    rows = []
    for case_dir in args.cases:
        case = read_case(case_dir)
        name = Path(case_dir).name
        truth, seg = case.read_extra("chi"), case.read_extra("segmentation", dtype=None).astype(np.int32)
        field, mask = case.field.data, case.mask
        vs, b0 = case.voxel_size_mm, case.b0_dir
        maps, seconds = {}, {}
        start = time.perf_counter()
        fast = out / f"{name}_fast.nii.gz"
        assert finetune.main(model + ["--case", case_dir, "--fast", "--quiet", "--overwrite", "-o", str(fast)]) == 0
        seconds["pre-trained (--fast)"], maps["pre-trained (--fast)"] = time.perf_counter() - start, fast
        if case_dir in args.finetune_cases:
            tuned = out / f"{name}_finetuned.nii.gz"
            start = time.perf_counter()
            assert finetune.main(model + ["--case", case_dir, "--iterations", str(args.iterations), "--overwrite",
                                          "-o", str(tuned)]) == 0
            seconds["fine-tuned"], maps["fine-tuned"] = time.perf_counter() - start, tuned
            per_it = _seconds_per_iteration(out / f"{name}_finetuned_loss.csv")
            print(f"{name}: {per_it:.2f} s per fine-tuning iteration on {field.shape}", file=sys.stderr)
        for label, fn in (("TKD", lambda: tkd(field, mask, vs, b0, pad="auto")),
                          ("L2", lambda: l2_gradient(field, mask, vs, b0, pad="auto"))):
            start = time.perf_counter()
            maps[label] = fn()
            seconds[label] = time.perf_counter() - start
        for label, chi in maps.items():
            data = read_volume(chi).data if isinstance(chi, Path) else chi
            values = rc2_metrics(data, truth, seg, mask).values
            rows.append((name, label, values["rmse"], values["rmse_detrend"], values["rmse_detrend_DGM"],
                         seconds[label]))
            print(f"{name} {label}: rmse {values['rmse']:.2f} ({seconds[label]:.1f} s)", file=sys.stderr, flush=True)
    lines = ["| case | method | rmse | rmse_detrend | rmse_detrend_DGM | seconds |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {c} | {m} | {r:.2f} | {d:.2f} | {g:.2f} | {s:.1f} |" for c, m, r, d, g, s in rows]
    text = "\n".join(lines) + "\n"
    (out / "shipped_model.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
