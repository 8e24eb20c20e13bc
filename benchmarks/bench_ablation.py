"""Ablation of the domain adaptation (issue 16) on the four 1 mm RC2-like cases.

Commands (results in benchmarks/results_ablation.md):
    W=work/ablation; D=../shared/data
    python -m daqsm.training_data.simulator.simulate --source $D/rc2_phantom -o $W/targets --seed 0 --quiet
    python training_data/genChi.py $D/qsm2016/chi_cosmos.nii.gz --mask $D/qsm2016/msk.nii.gz -n 24 \\
        -o $W/chi.h5 --seed 0 --quiet
    python training_data/qsmFmapCal_gpu.py $W/chi.h5 -o $W/fields.h5
    # one row: step 3 -> step 4 (CPU-sized network) -> pre-trained rmse on every case
    python benchmarks/bench_ablation.py row --work $W --name balanced_64 --target-patch-size 64 --steps 500
    python benchmarks/bench_ablation.py row --work $W --name balanced_bbox --steps 500 --target-batch-size 1
    # fine-tuning with the stopping rule (and every 5th iterate's rmse, to find the best one)
    python benchmarks/bench_ablation.py finetune --work $W --name balanced_bbox --iterations 150
    python benchmarks/bench_ablation.py table --work $W
    # every saved map and TKD / L2 against the cases' truth and the Gibbs-free truth
    python -m daqsm.training_data.simulator.simulate --source $D/rc2_phantom -o $W/targets_gf --seed 0 --quiet
    python benchmarks/bench_ablation.py evaluate --work $W --truths targets targets_gf

Every row uses the same data (24 synthetic maps of the 2016 COSMOS map, 64^3 source patches), the
same CPU-sized network (U-Net depth 4, 8 base filters), batch 2 source patches, Adam 1e-3 with a
cosine schedule, and `--steps` pre-training steps; rows differ in the code (git revision, recorded)
and the target crops. Results go to WORK/NAME/result.json.

Fine-tuning runs with the stopping rule switched off for `--iterations` iterations while the
iterate's rmse is recorded every `--every` iterations; the stopping rule (daqsm.network_model.stopping,
the same class step 5 uses) is then applied to the logged loss terms, which is what step 5 itself
does during the run, so the iteration it picks, its rmse and the best iterate's rmse come from one
run. The rule never sees the ground truth.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
CASES = ("Sim1Snr1", "Sim1Snr2", "Sim2Snr1", "Sim2Snr2")


def _case_arrays(case: Path):
    from daqsm.training_data.formats.case_folder import read_case

    folder = read_case(case, magnitude=False)
    return folder.read_extra("chi"), folder.mask, folder.read_extra("segmentation", dtype=None).astype(np.int32)


def _rmse(chi, truth_arrays) -> float:
    """RC2 rmse of `chi` against `_case_arrays(case)` (read once per case, not per call)."""
    from daqsm.evaluation.metrics import rc2_metrics

    truth, mask, seg = truth_arrays
    return float(rc2_metrics(chi, truth, seg, mask).values["rmse"])


def _revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_row(args) -> dict:
    from daqsm.network_model import infer
    from daqsm.network_model.train_model import train as pretrain
    from daqsm.training_data import genRDFPatchesSyn
    from daqsm.training_data.volume_io import read_volume

    work, row = Path(args.work), Path(args.work) / args.name
    row.mkdir(parents=True, exist_ok=True)
    cases = [work / "targets" / c for c in CASES]
    patches = row / "patches.h5"
    target_size = ["--target-patch-size", args.target_patch_size] if args.target_patch_size else []
    t0 = time.perf_counter()
    if not patches.exists():
        assert genRDFPatchesSyn.main([str(a) for a in ["--source", work / "chi.h5", "--source-fields",
                                                       work / "fields.h5", "--target", *cases, "--patch-size", 64,
                                                       *target_size, "-o", patches, "--seed", 0, "--quiet"]]) == 0
    t_patches = time.perf_counter() - t0
    run_dir = row / "pretrain"
    t0 = time.perf_counter()
    status = pretrain.main([str(a) for a in [
        "--datasets_path", patches, "-o", run_dir, "--depth", 4, "--base_filters", 8, "--max_steps", args.steps,
        "--batch_size", 2, "--target_batch_size", args.target_batch_size or 2, "--learning_rate", 1e-3,
        "--lr_schedule", "cosine", "--validate_every", max(args.steps // 4, 1), "--seed", 0,
        "--progress", "false"]])
    assert status == 0, status
    t_train = time.perf_counter() - t0
    model = run_dir / "target_model.keras"
    result = {"name": args.name, "revision": _revision(), "steps": args.steps,
              "target_patch_size": args.target_patch_size or "bbox", "target_batch_size": args.target_batch_size or 2,
              "seconds_patches": round(t_patches, 1), "seconds_pretrain": round(t_train, 1), "pretrained": {}}
    for case in cases:
        out = row / f"{case.name}_pretrained.nii.gz"
        assert infer.main([str(a) for a in ["--model", model, "--case", case, "-o", out, "--whole",
                                            "--overwrite"]]) == 0
        result["pretrained"][case.name] = _rmse(read_volume(out).data, _case_arrays(case))
        print(f"{args.name}: {case.name} pre-trained rmse {result['pretrained'][case.name]:.2f}", file=sys.stderr)
    _merge(row / "result.json", result)
    return result


def run_finetune(args) -> dict:
    from daqsm.network_model.config import resolve_config
    from daqsm.network_model.model_finetune.train import FinetuneConfig, finetune

    work, row = Path(args.work), Path(args.work) / args.name
    model = row / "pretrain" / "target_model.keras"
    names = args.cases or list(CASES)
    results = {}
    for name in names:
        case = work / "targets" / name
        out = row / f"{name}_finetuned.nii.gz"
        trace = []
        cfg = resolve_config(FinetuneConfig, None, model=str(model), case=str(case), output=str(out),
                             iterations=args.iterations, learning_rate=args.lr, lambda_tv=args.lambda_tv,
                             tau=0.0, convergence_tol=0.0, overwrite=True, progress=False)
        t0 = time.perf_counter()
        truth_arrays = _case_arrays(case)
        assert finetune(cfg, monitor=lambda k, chi: trace.append((k, _rmse(chi, truth_arrays))),
                        monitor_every=args.every) == 0
        seconds = time.perf_counter() - t0
        stop, reason, sidecar = apply_rule(row, name, args.iterations)
        monitored = dict(trace)
        at_stop = monitored[min(monitored, key=lambda k: abs(k - stop))]
        best_k = min(monitored, key=monitored.get)
        results[name] = {"rmse_start": monitored[0], "stop_iteration": stop, "stop_reason": reason,
                         "rmse_at_stop": at_stop, "best_iteration": best_k, "rmse_best": monitored[best_k],
                         "rmse_last": monitored[max(monitored)], "seconds_per_iteration":
                         round(seconds / args.iterations, 2), "seconds_to_stop": round(seconds * stop / args.iterations, 1),
                         "noise_ppm": sidecar["noise_ppm"], "trace": trace}
        print(f"{args.name}: {name} fine-tuned: start {monitored[0]:.2f}, stop at {stop} ({reason}) "
              f"{at_stop:.2f}, best {monitored[best_k]:.2f} at {best_k}", file=sys.stderr, flush=True)
        _merge(row / "result.json", {"finetuned": {**_load(row / "result.json").get("finetuned", {}),
                                                   name: results[name]},
                                     "finetune_settings": {"lr": args.lr, "lambda_tv": args.lambda_tv,
                                                           "iterations": args.iterations}})
    return results


def apply_rule(row: Path, name: str, iterations: int):
    """The stopping rule as step 5 applies it (FinetuneConfig defaults) on the logged terms of a run
    made with the rule off -> (stop iteration, reason, sidecar's FineTuning record)."""
    from daqsm.network_model.model_finetune.train import FinetuneConfig
    from daqsm.network_model.stopping import StoppingRule, noise_energy

    record = json.loads((row / f"{name}_finetuned.json").read_text())
    sidecar = record["FineTuning"]
    with open(row / f"{name}_finetuned_loss.csv", newline="") as fh:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
    defaults = FinetuneConfig()
    energy = noise_energy(sidecar["noise_ppm"], record["PhaseRadPerPpm"])
    rule = StoppingRule(energy, defaults.tau, defaults.convergence_window, defaults.convergence_tol,
                        defaults.warmup_iterations)
    step, why = rule.replay(rows[1:]) or (iterations, "done")
    return step, why, sidecar


def evaluate(args) -> dict:
    """rmse of every saved map of every row, and of TKD / L2 (padded), against each truth folder."""
    from daqsm.evaluation.baselines import l2_gradient, tkd
    from daqsm.training_data.formats.case_folder import read_case
    from daqsm.training_data.volume_io import read_volume, write_volume

    work = Path(args.work)
    (work / "baselines").mkdir(exist_ok=True)
    out: dict = {}
    for name in CASES:
        case = work / "targets" / name
        folder = read_case(case, magnitude=False)
        info, field, mask = folder.info, folder.field.data, folder.mask
        maps = {}
        for method, fn in (("TKD", tkd), ("L2", l2_gradient)):
            path = work / "baselines" / f"{name}_{method}.nii.gz"
            if not path.exists():
                write_volume(path, fn(field, mask, info["voxel_size_mm"], info["b0_dir"]).astype(np.float32))
            maps[method] = path
        for row in sorted(p.parent for p in work.glob("*/result.json")):
            for kind in ("pretrained", "finetuned"):
                if (row / f"{name}_{kind}.nii.gz").exists():
                    maps[f"{row.name} {kind}"] = row / f"{name}_{kind}.nii.gz"
        for truth in args.truths:
            truth_arrays = _case_arrays(work / truth / name)
            for method, path in maps.items():
                out.setdefault(truth, {}).setdefault(name, {})[method] = _rmse(read_volume(path).data, truth_arrays)
    for truth, per_case in out.items():
        methods = list(next(iter(per_case.values())))
        print(f"truth {truth}:\n| case | " + " | ".join(methods) + " |")
        for name, r in per_case.items():
            print(f"| {name} | " + " | ".join(f"{r[m]:.2f}" for m in methods) + " |")
    (work / "daqsm.evaluation.json").write_text(json.dumps(out, indent=1))
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _merge(path: Path, values: dict) -> None:
    data = {**_load(path), **values}
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")


def table(args) -> str:
    work = Path(args.work)
    rows = [_load(p) for p in sorted(work.glob("*/result.json"))]
    lines = ["| row | revision | target crops | steps | " + " | ".join(CASES) + " |", "|---|---|---|---:|" + "---:|" * 4]
    for r in rows:
        if "pretrained" in r:
            lines.append(f"| {r['name']} | {r['revision']} | {r['target_patch_size']} x{r['target_batch_size']} | "
                         f"{r['steps']} | " + " | ".join(f"{r['pretrained'].get(c, float('nan')):.2f}" for c in CASES)
                         + " |")
    for r in rows:
        if "finetuned" in r:
            lines += ["", f"Fine-tuned, {r['name']}:", "",
                      "| case | start | stop (iteration, reason) | rmse at stop | best (iteration) | s/iteration |",
                      "|---|---:|---|---:|---:|---:|"]
            for c, f in r["finetuned"].items():
                lines.append(f"| {c} | {f['rmse_start']:.2f} | {f['stop_iteration']}, {f['stop_reason']} | "
                             f"{f['rmse_at_stop']:.2f} | {f['rmse_best']:.2f} ({f['best_iteration']}) | "
                             f"{f['seconds_per_iteration']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    row = sub.add_parser("row", help="steps 3-4 and the pre-trained rmse of one configuration")
    ft = sub.add_parser("finetune", help="step 5 on every case of a row, with the stopping rule")
    tab = sub.add_parser("table", help="print the rows")
    ev = sub.add_parser("evaluate", help="rmse of the saved maps and of TKD / L2 against one or more truths")
    ev.add_argument("--truths", nargs="+", default=["targets"],
                    help="case-folder roots under WORK whose chi.nii.gz is the truth (e.g. targets targets_gf)")
    for p in (row, ft, tab, ev):
        p.add_argument("--work", required=True)
    for p in (row, ft):
        p.add_argument("--name", required=True)
    row.add_argument("--steps", type=int, default=500)
    row.add_argument("--target-patch-size", type=int, default=0, help="0: whole-brain crops (step 3's default)")
    row.add_argument("--target-batch-size", type=int, default=0, help="0: 2")
    ft.add_argument("--iterations", type=int, default=150)
    ft.add_argument("--every", type=int, default=5)
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--lambda-tv", type=float, default=0.002)
    ft.add_argument("--cases", nargs="*")
    args = parser.parse_args(argv)
    {"row": run_row, "finetune": run_finetune, "table": table, "evaluate": evaluate}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
