"""Benchmark (issue 21 item 6): in vivo, the 2016 challenge field as the target domain.

The shipped model (trained on the built-in phantom only, so the subject's own chi never trains it) is
run on the 2016 challenge's local field pre-trained (`--fast`) and fine-tuned (the defaults: lambda_tv
by the no-truth rule, the stop rule), beside TKD, L2, linear TV-ADMM and nonlinear TV, each classic
method at its no-truth (stage 1) parameter where it has a rule (TV, NLTV: `--alpha auto`, the
discrepancy principle, 60 warm-started ADMM iterations per alpha) and at its default otherwise (TKD
0.19; L2 0.1, which was tuned on this very data by the truth, benchmarks/results_baselines.md, so it
is favoured). Every map is scored by the same
code, `daqsm.evaluation.metrics.challenge2016_metrics` (2016 NRMSE vs chi_33 and vs COSMOS inside msk).

Command (from the repository root; the data stays where it is, nothing is copied):
    python benchmarks/bench_invivo.py --data ../shared/data/qsm2016 --out OUT

Resumable: a method whose map is already in OUT is scored, not re-run (delete the map to re-run it).
Acquisition: 3 T, TE 25 ms (the values commonly used with this data, data/README.md); B0 along the
third axis (from the diagonal affine); no magnitude (the mask is the NDI weight). Seconds are wall
clock of the whole command (TensorFlow start included for the network rows).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

B0_TESLA, TE_S = 3.0, 0.025


def commands(data: Path, out: Path, model: str | None) -> dict:
    """{label: (argv, output map)} for every method; argv runs the project's own commands."""
    field, mask = str(data / "phs_tissue.nii.gz"), str(data / "msk.nii.gz")
    acq = ["--b0", str(B0_TESLA), "--te", str(TE_S)]
    net = [sys.executable, "-m", "daqsm.network_model.model_finetune.train", "--field", field, "--mask", mask,
           "--units", "ppm", *acq, *(["--model", model] if model else [])]
    base = [sys.executable, "-m", "daqsm.evaluation.baseline_cli", "--field", field, "--mask", mask]
    tesla = ["--b0-tesla", str(B0_TESLA), "--te-s", str(TE_S)]
    # 60 warm-started ADMM iterations per alpha at most (tol 1e-3), as the 3 mm stage-1 scans (bench_finetune.py)
    scan = [*tesla, "--iterations", "60"]
    runs = {"network, pre-trained (--fast)": (net + ["--fast"], "net_fast.nii.gz"),
            "network, fine-tuned": (net, "net_finetuned.nii.gz"),
            "TKD (threshold 0.19, default)": (base + ["tkd"], "tkd.nii.gz"),
            "L2 (lambda 0.1, default)": (base + ["l2"], "l2.nii.gz"),
            "linear TV (alpha auto)": (base + ["tv", "--alpha", "auto", *scan], "tv_auto.nii.gz"),
            "nonlinear TV (alpha auto)": (base + ["ndi-tv", "--alpha", "auto", *scan], "nltv_auto.nii.gz")}
    # stage 2 (best alpha by the truth, labelled so): NLTV's default alpha 0.1 is its best on this data
    # (benchmarks/results_baselines.md); the network at the same weight, mapped exactly as the rule maps its alpha
    # (lambda is linear in alpha: lambda(0.1) = lambda_rule x 0.1 / alpha_rule, from the stage-1 sidecar)
    runs["nonlinear TV (alpha 0.1, stage 2: best by truth)"] = (base + ["ndi-tv", "--alpha", "0.1", *tesla,
                                                                         "--iterations", "150"], "nltv_a0.1.nii.gz")
    stage1 = out / "net_finetuned.json"
    if stage1.exists():  # listed once the stage-1 run has written its sidecar (main re-lists after each run)
        rule = json.loads(stage1.read_text())["FineTuning"]["LambdaTV"]
        lam = rule["lambda_tv"] * 0.1 / rule["alpha"]
        runs["network, fine-tuned at NLTV's stage-2 alpha 0.1"] = (net + ["--lambda-tv", f"{lam:.6g}"],
                                                                     "net_finetuned_a0.1.nii.gz")
    return {label: (argv + ["-o", str(out / name)], out / name) for label, (argv, name) in runs.items()}


def chosen_parameter(path: Path) -> str:
    """The parameter the sidecar records (lambda_tv / alpha and why), or ''."""
    sidecar = Path(str(path).replace(".nii.gz", ".json"))
    if not sidecar.exists():
        return ""
    info = json.loads(sidecar.read_text())
    tuning = info.get("FineTuning")
    if tuning and tuning["max_iterations"] == 0:
        return "no fine-tuning"
    if tuning:
        return (f"lambda_tv {tuning['lambda_tv']:.4g} ({tuning['LambdaTV']['rule']}), {tuning['iterations']} it "
                f"({tuning['stop_reason']}, {tuning['seconds_per_iteration']:.2f} s/it)")
    choice = info.get("AlphaChoice")  # daqsm-baseline --alpha auto
    return f"alpha {choice['alpha']:.3g} ({choice['rule']})" if choice else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("DAQSM_QSM2016", os.path.join("..", "shared", "data",
                                                                                      "qsm2016")))
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="target model (default: the shipped one)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these output names (e.g. tkd.nii.gz)")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "phs_tissue.nii.gz").exists():
        print(f"skipped: 2016 challenge data not found at {data}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    from daqsm.evaluation import metrics
    from daqsm.training_data.volume_io import read_volume

    seconds_file = out / "seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}

    def pending():  # re-listed after every run: the stage-2 network row needs the stage-1 sidecar
        return [(label, argv_, path) for label, (argv_, path) in commands(data, out, args.model).items()
                if not path.exists() and (args.only is None or path.name in args.only)]

    while todo := pending():
        label, argv_, path = todo[0]
        print(f"running {label}: {' '.join(argv_)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run(argv_, check=True)
        if not path.exists():  # else the loop would run it again
            raise SystemExit(f"{label}: exited 0 without writing {path}")
        seconds[path.name] = round(time.perf_counter() - start, 1)
        seconds_file.write_text(json.dumps(seconds, indent=1))

    chi_33 = read_volume(data / "chi_33.nii.gz").data
    cosmos = read_volume(data / "chi_cosmos.nii.gz").data
    mask = read_volume(data / "msk.nii.gz").data > 0.5
    lines = ["| method | parameter | NRMSE vs chi_33 (%) | NRMSE vs COSMOS (%) | HFEN vs chi_33 | "
             "XSIM vs chi_33 | corr vs chi_33 | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, (_argv, path) in commands(data, out, args.model).items():
        if not path.exists():
            continue
        v = metrics.challenge2016_metrics(read_volume(path).data, chi_33, mask, chi_cosmos=cosmos).values
        lines.append(f"| {label} | {chosen_parameter(path)} | {v['nrmse_chi33']:.1f} | {v['nrmse_cosmos']:.1f} | "
                     f"{v['hfen_chi33']:.1f} | {v['xsim_chi33']:.3f} | {v['correlation_chi33']:.3f} | "
                     f"{seconds.get(path.name, float('nan')):.0f} |")
    text = "\n".join(lines) + "\n"
    (out / "invivo.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
