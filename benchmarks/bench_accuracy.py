"""Accuracy benchmark: pre-trained and fine-tuned network vs TKD, L2 and nonlinear TV on RC2-like cases.

Command (after a demo run, which provides the trained model and the four cases):
    daqsm-demo -o demo_out                                   # built-in phantom
    python benchmarks/bench_accuracy.py --run demo_out --out benchmarks/out/accuracy_builtin
    daqsm-demo -o real_out --data ../shared/data             # RC2 segmentation + 2016 COSMOS
    python benchmarks/bench_accuracy.py --run real_out --out benchmarks/out/accuracy_rc2

For each case folder in RUN/targets: pre-trained network (RUN/step4_pretrain/target_model.keras,
whole-volume or tiled inference), fine-tuned network (step 5 with the demo's settings, or reused
from RUN/finetuned), TKD (threshold 0.19), L2-gradient (lambda 0.1) and nonlinear TV (ADMM, alpha
per --ndi-alpha), all eight RC2 metrics each; prints one Markdown table per case plus the rmse
summary and the fine-tuning gain, and writes them to OUT/accuracy.md and OUT/accuracy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="demo output folder (targets/, step4_pretrain/)")
    parser.add_argument("--out", required=True, help="folder for the reconstructions and the tables")
    parser.add_argument("--iterations", type=int, default=150, help="fine-tuning iterations per case")
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--lambda-tv", type=float, default=0.002)
    parser.add_argument("--ndi-alpha", type=float, default=3e-3, help="nonlinear TV weight (high-SNR phantom)")
    parser.add_argument("--tile", type=int, default=0, help="tile size for inference (0: whole volume)")
    parser.add_argument("--cases", nargs="*", help="case names (default: all in RUN/targets)")
    args = parser.parse_args(argv)

    from daqsm.evaluation.baselines import NDITVParams, l2_gradient, ndi_tv, tkd
    from daqsm.evaluation.metrics import RC2_ROWS, rc2_metrics
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.training_data.volume_io import write_volume

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = run / "step4_pretrain" / "target_model.keras"
    names = args.cases or sorted(p.name for p in (run / "targets").iterdir() if p.is_dir())
    results, timings = {}, {}
    for name in names:
        case = run / "targets" / name
        from daqsm.training_data.formats.case_folder import read_case

        folder = read_case(case)
        info = folder.info
        field, truth, mask = folder.field.data, folder.read_extra("chi"), folder.mask
        seg = folder.read_extra("segmentation", dtype=None).astype(np.int32)
        vs, b0 = info["voxel_size_mm"], info["b0_dir"]
        recon, seconds = {}, {}
        pre = out / f"{name}_pretrained.nii.gz"
        tiling = ["--tile", args.tile, "--overlap", args.tile // 3] if args.tile else ["--whole"]
        start = time.perf_counter()
        infer.main([str(a) for a in ["--model", model, "--case", case, "-o", pre, "--overwrite"] + tiling])
        seconds["pre-trained"] = time.perf_counter() - start
        recon["pre-trained"] = pre
        fine = out / f"{name}_finetuned.nii.gz"
        start = time.perf_counter()
        finetune.main([str(a) for a in ["--model", model, "--case", case, "--iterations", args.iterations,
                                        "--learning_rate", args.finetune_lr, "--lambda_tv", args.lambda_tv,
                                        "-o", fine, "--overwrite", "true", "--progress", "false"]])
        seconds["fine-tuned"] = time.perf_counter() - start
        recon["fine-tuned"] = fine
        te_weight = folder.weight_te_s()
        for method, fn in (("TKD", lambda: tkd(field, mask, vs, b0, pad="auto")),
                           ("L2", lambda: l2_gradient(field, mask, vs, b0, pad="auto")),
                           ("NLTV", lambda: ndi_tv(field, mask, None, vs, b0,
                                                  NDITVParams(alpha=args.ndi_alpha, b0_tesla=info["b0_tesla"],
                                                              te_s=te_weight), pad="auto"))):
            start = time.perf_counter()
            chi = fn()
            seconds[method] = time.perf_counter() - start
            path = out / f"{name}_{method}.nii.gz"
            write_volume(path, chi.astype(np.float32), affine=folder.field.affine)
            recon[method] = path
        from daqsm.training_data.volume_io import read_volume

        results[name] = {m: rc2_metrics(read_volume(p).data, truth, seg, mask).values for m, p in recon.items()}
        timings[name] = seconds
        print(f"{name}: " + ", ".join(f"{m} rmse {v['rmse']:.2f} ({seconds[m]:.1f} s)" for m, v in results[name].items()),
              file=sys.stderr, flush=True)

    lines = []
    for name, per_method in results.items():
        methods = list(per_method)
        lines += [f"### {name}", "", "| metric | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for row in RC2_ROWS:
            lines.append(f"| {row} | " + " | ".join(f"{per_method[m][row]:.4g}" for m in methods) + " |")
        lines.append("| seconds | " + " | ".join(f"{timings[name][m]:.1f}" for m in methods) + " |")
        lines.append("")
    lines += ["### rmse summary", "", "| case | pre-trained | fine-tuned | gain | TKD | L2 | NLTV |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        gain = 100 * (1 - r["fine-tuned"]["rmse"] / r["pre-trained"]["rmse"])
        lines.append(f"| {name} | {r['pre-trained']['rmse']:.2f} | {r['fine-tuned']['rmse']:.2f} | {gain:.1f}% | "
                     f"{r['TKD']['rmse']:.2f} | {r['L2']['rmse']:.2f} | {r['NLTV']['rmse']:.2f} |")
    text = "\n".join(lines) + "\n"
    (out / "accuracy.md").write_text(text)
    (out / "accuracy.json").write_text(json.dumps({"metrics": results, "seconds": timings}, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
