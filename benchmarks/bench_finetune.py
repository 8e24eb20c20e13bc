"""Fine-tuning like-for-like (issue 21): no-truth lambda, stop, prior keeping, beside every classic method.

Commands (results in benchmarks/results_finetune.md):
    C=DEMO/targets; W=work/ft21
    # classic methods on each case, every parameter at stage 1 (no truth) and stage 2 (best by truth),
    # and the exact minimiser (L-BFGS over chi) of fine-tuning's objective at the no-truth lambda
    python benchmarks/bench_finetune.py classic --cases $C/Sim2Snr1 $C/Sim1Snr1 --out $W
    # one fine-tuning variant: the stop rule off during the run, rmse every --every iterations, the
    # stop rule applied afterwards to the logged terms (the same StoppingRule step 5 runs)
    python benchmarks/bench_finetune.py finetune --model DEMO/step4_pretrain/target_model.keras \\
        --cases $C/Sim2Snr1 $C/Sim1Snr1 --out $W --name auto --iterations 200 --set lambda_tv=auto
    python benchmarks/bench_finetune.py table --out $W

rmse: RC2's demeaned NRMSE (%) in the mask against the case's chi.nii.gz (the simulator's Gibbs-free
truth); `classic` also keeps all eight RC2 metrics per method in classic.json. No method sees the
truth except the stage-2 picks, which are labelled so.
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


def _case(path):
    from daqsm.network_model.target_data import load_case
    from daqsm.training_data.formats.case_folder import read_case

    folder = read_case(path, magnitude=False)
    truth = folder.read_extra("chi")
    seg = folder.read_extra("segmentation", dtype=None).astype(np.int32)
    return load_case(path), truth, seg


def _metrics(chi, truth, seg, mask) -> dict:
    from daqsm.evaluation.metrics import rc2_metrics

    return {k: float(v) for k, v in rc2_metrics(chi, truth, seg, mask).values.items()}


def direct_minimiser(target, lambda_tv: float, label_scale: float, pad="auto", iterations: int = 400):
    """argmin_chi NDI + lambda_tv TV (the fine-tuning objective, same box and terms) by L-BFGS from 0."""
    import scipy.optimize
    import tensorflow as tf

    from daqsm.network_model.losses import finetune_loss, ndi_loss, tv_loss
    from daqsm.network_model.tiling import brain_box
    from daqsm.training_data.dipole import dipole_operator_tf

    box = brain_box(target.mask, 8)
    f, m, w = (tf.constant(a[box][None], tf.float32) for a in (target.field_ppm, target.mask, target.weight))
    g = target.geometry
    dipole = dipole_operator_tf(f.shape[1:], g.voxel_size_mm, g.b0_dir, pad)
    phase = float(target.phase_rad_per_ppm)

    @tf.function
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            chi = x * m
            loss = finetune_loss(ndi_loss(chi, f, w, m, dipole, phase)[0], tv_loss(chi, m, label_scale)[0], lambda_tv)
        return loss, tape.gradient(loss, x)

    shape = f.shape

    def fun(v):
        loss, grad = value_and_grad(tf.constant(v.reshape(shape), tf.float32))
        return float(loss), grad.numpy().ravel().astype(np.float64)

    res = scipy.optimize.minimize(fun, np.zeros(int(np.prod(shape))), jac=True, method="L-BFGS-B",
                                  options={"maxiter": iterations, "maxfun": 2 * iterations})
    chi = np.zeros(target.mask.shape, np.float32)
    chi[box] = res.x.reshape(shape)[0] * target.mask[box]
    return chi, float(res.fun), int(res.nit)


def run_classic(args) -> None:
    from dataclasses import replace

    from daqsm.evaluation import nltv_alpha
    from daqsm.evaluation.baselines import NDITVParams, l2_gradient, tkd
    from daqsm.network_model.tiling import brain_box
    from daqsm.network_model.tv_weight import lambda_from_alpha
    from daqsm.training_data.units import rad_per_ppm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "classic.json").read_text()) if (out / "classic.json").exists() else {}
    for path in args.cases:
        name = Path(path).name
        if name in results and not args.redo:
            if not any(k.startswith("NLTV stage 1, ndi-tv defaults") for k in results[name]["rows"]):
                _add_converged_nltv(path, results[name])  # a row added later: only it is computed
                (out / "classic.json").write_text(json.dumps(results, indent=1))
            continue
        target, truth, seg = _case(path)
        g, mask = target.geometry, target.mask > 0
        common = dict(voxel_size_mm=g.voxel_size_mm, b0_dir=g.b0_dir, pad="auto")
        rows = {}
        t0 = time.perf_counter()
        rows["TKD (0.19)"] = _metrics(tkd(target.field_ppm, mask, **common), truth, seg, mask)
        rows["L2 (0.1)"] = _metrics(l2_gradient(target.field_ppm, mask, **common), truth, seg, mask)
        l2_grid = {lam: _metrics(l2_gradient(target.field_ppm, mask, lambda_grad=lam, **common), truth, seg, mask)
                   for lam in (0.01, 0.03, 0.1, 0.3, 1.0)}
        best = min(l2_grid, key=lambda k: l2_grid[k]["rmse"])
        rows[f"L2 stage 2 ({best:g})"] = l2_grid[best]
        s = target.phase_rad_per_ppm
        # both TV scans on the brain box fine-tuning sees, with the lambda rule's iterations: the NLTV scan is
        # the rule's own (stage 1 = its alpha), so the network's lambda and NLTV stage 1 share one alpha
        base = NDITVParams(b0_tesla=s / rad_per_ppm(1.0, 1.0), te_s=1.0, iterations=args.scan_iterations)
        box = brain_box(target.mask, 8)
        field_b, mask_b, weight_b = target.field_ppm[box], mask[box], target.weight[box]

        def full(chi_box):
            chi = np.zeros(mask.shape, np.float32)
            chi[box] = chi_box
            return chi

        for label, linear in (("NLTV", False), ("linear TV", True)):
            scan = nltv_alpha.scan_alpha(field_b, mask_b, weight_b, g.voxel_size_mm, g.b0_dir,
                                         replace(base, linear=linear), pad="auto")
            stage1 = nltv_alpha.choose_alpha_discrepancy(scan)
            stage2, _ = nltv_alpha.best_alpha_by_truth(scan, truth[box], mask_b)
            rows[f"{label} stage 1 ({stage1.alpha:.3g})"] = _metrics(full(scan.maps[stage1.index]), truth, seg, mask)
            rows[f"{label} stage 2 ({stage2.alpha:.3g})"] = _metrics(full(scan.maps[stage2.index]), truth, seg, mask)
            print(f"{name}: {label} scan {scan.seconds:.0f} s: stage 1 {stage1.alpha:.3g} ({stage1.note}), "
                  f"stage 2 {stage2.alpha:.3g}", file=sys.stderr, flush=True)
            if not linear:
                lam = lambda_from_alpha(stage1.alpha, s, g.voxel_size_mm, args.label_scale)
                rule = {"alpha": stage1.alpha, "lambda_tv": lam, "note": stage1.note, "seconds": scan.seconds}
        chi, loss, nit = direct_minimiser(target, lam, args.label_scale, iterations=args.direct_iterations)
        rows[f"direct minimiser at the no-truth lambda ({lam:.3g})"] = _metrics(chi, truth, seg, mask)
        results[name] = {"rows": rows, "lambda_rule": rule, "direct_loss": loss, "direct_iterations": nit,
                         "seconds": round(time.perf_counter() - t0, 1)}
        _add_converged_nltv(path, results[name], (target, truth, seg))
        (out / "classic.json").write_text(json.dumps(results, indent=1))
        print(f"{name}: " + ", ".join(f"{k} {v['rmse']:.2f}" for k, v in rows.items()), file=sys.stderr, flush=True)


def _add_converged_nltv(path, result: dict, loaded=None) -> None:
    """NLTV at the stage-1 alpha run as `daqsm-baseline ndi-tv` runs it (from zero, its default 150
    iterations and tolerance, the case's own B0 and TE) on the same box and weight: the scan's map
    at that alpha stops after --scan-iterations warm-started iterations, which is a regulariser too.
    `loaded`: the case as `_case` returns it, when the caller has read it already."""
    from dataclasses import replace

    from daqsm.evaluation.baselines import NDITVParams, ndi_tv
    from daqsm.network_model.tiling import brain_box
    from daqsm.network_model.tv_weight import _nltv_params

    target, truth, seg = loaded or _case(path)
    g, mask = target.geometry, target.mask > 0
    box = brain_box(target.mask, 8)
    alpha = result["lambda_rule"]["alpha"]
    params = replace(_nltv_params(target.phase_rad_per_ppm, NDITVParams.iterations), alpha=alpha)
    t0 = time.perf_counter()
    chi_box, info = ndi_tv(target.field_ppm[box], mask[box], target.weight[box], g.voxel_size_mm, g.b0_dir, params,
                           pad="auto", return_info=True)
    chi = np.zeros(mask.shape, np.float32)
    chi[box] = chi_box
    label = f"NLTV stage 1, ndi-tv defaults ({alpha:.3g}, {info['iterations']} it.)"
    result["rows"][label] = _metrics(chi, truth, seg, mask)
    result["converged_nltv_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{Path(path).name}: {label} {result['rows'][label]['rmse']:.2f} ({result['converged_nltv_seconds']:.0f} s)",
          file=sys.stderr, flush=True)


def _parse_sets(pairs) -> dict:
    values = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        values[key] = value
    return values


def run_finetune(args) -> None:
    from daqsm.network_model.config import resolve_config
    from daqsm.network_model.finetune_core import finetune_volume
    from daqsm.network_model.finetuning import FinetuneConfig, load_target_model
    from daqsm.network_model.stopping import StoppingRule

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"finetune_{args.name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    sets = _parse_sets(args.set)
    for case_path in args.cases:
        name = Path(case_path).name
        if name in results and not args.redo:
            continue
        target, truth, seg = _case(case_path)
        mask = target.mask > 0
        params = resolve_config(FinetuneConfig, None, **{"iterations": args.iterations, "tau": 0.0,
                                                          "convergence_tol": 0.0, "progress": False,
                                                          **{k: v for k, v in sets.items() if k != "stop_tol"}})
        trace, metrics_trace = {}, {}

        def monitor(k, chi):
            metrics_trace[k] = _metrics(chi, truth, seg, mask)  # all eight RC2 metrics, for the table
            trace[k] = metrics_trace[k]["rmse"]

        model, info = load_target_model(args.model)
        t0 = time.perf_counter()
        result = finetune_volume(model, target, params, info, monitor=monitor, monitor_every=args.every)
        seconds = time.perf_counter() - t0
        ft = result.record["FineTuning"]
        defaults = FinetuneConfig()
        tol = float(sets.get("stop_tol", defaults.convergence_tol))
        rule = StoppingRule(ft["stop_ndi_target"], defaults.tau, defaults.convergence_window, tol,
                            int(sets.get("warmup_iterations", defaults.warmup_iterations)))
        stop, reason = rule.replay(result.log[1:]) or (args.iterations, "done")
        at_stop = trace[min(trace, key=lambda k: abs(k - stop))]
        best = min(trace, key=trace.get)
        results[name] = {"settings": sets, "lambda_tv": ft["lambda_tv"], "lambda_rule": ft["LambdaTV"]["rule"],
                         "alpha": ft["LambdaTV"].get("alpha"), "rmse_start": trace[0], "stop_iteration": stop,
                         "stop_reason": reason, "rmse_at_stop": at_stop, "best_iteration": best,
                         "rmse_best": trace[best], "rmse_last": trace[max(trace)],
                         "stop_over_best_percent": 100 * (at_stop / trace[best] - 1),
                         "worst_first_25": max(v for k, v in trace.items() if k <= 25),
                         "seconds_per_iteration": round(ft["seconds_per_iteration"], 3),
                         "seconds": round(seconds, 1), "trace": trace,
                         "metrics_at_stop": metrics_trace[min(trace, key=lambda k: abs(k - stop))],
                         "ndi_target": ft["stop_ndi_target"], "noise_energy": ft["noise_energy"],
                         "ndi_log": [[r["step"], r["ndi"]] for r in result.log],
                         # every iteration's terms, so other stop rules can be replayed on the same run
                         "loss_log": [[r["step"], r["loss"], r["ndi"], r.get("tv")] for r in result.log]}
        path.write_text(json.dumps(results, indent=1))
        print(f"{args.name} {name}: lambda {ft['lambda_tv']:.4g}, start {trace[0]:.2f}, stop {stop} ({reason}) "
              f"{at_stop:.2f}, best {trace[best]:.2f} at {best}, last {trace[max(trace)]:.2f}, "
              f"{ft['seconds_per_iteration']:.2f} s/it", file=sys.stderr, flush=True)


def table(args) -> None:
    out = Path(args.out)
    classic = json.loads((out / "classic.json").read_text()) if (out / "classic.json").exists() else {}
    tuned = {}  # case -> (variant, metrics at the replayed stop) for the fine-tuning runs that kept them
    for path in sorted(out.glob("finetune_*.json")):
        for name, r in json.loads(path.read_text()).items():
            if "metrics_at_stop" in r:
                tuned.setdefault(name, []).append((f"network, {path.stem[9:]} (lambda {r['lambda_tv']:.3g}, "
                                                   f"stop {r['stop_iteration']})", r["metrics_at_stop"]))
    for name, r in classic.items():
        rule = r["lambda_rule"]
        keys = list(next(iter(r["rows"].values())))
        print(f"\n{name} (no-truth alpha {rule['alpha']:.3g} -> lambda {rule['lambda_tv']:.4g}: {rule['note']})\n\n"
              f"| method | {' | '.join(keys)} |\n|---|{'---:|' * len(keys)}")
        for method, m in [*r["rows"].items(), *tuned.get(name, [])]:
            print(f"| {method} | " + " | ".join(f"{m.get(k, float('nan')):.4g}" for k in keys) + " |")
    print("\n| variant | case | lambda | start | worst of first 25 | stop (it., reason) | rmse at stop | best (it.) "
          "| last | stop vs best | s/it |\n|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for path in sorted(out.glob("finetune_*.json")):
        for name, r in json.loads(path.read_text()).items():
            print(f"| {path.stem[9:]} | {name} | {r['lambda_tv']:.3g} | {r['rmse_start']:.2f} | {r['worst_first_25']:.2f} "
                  f"| {r['stop_iteration']}, {r['stop_reason']} | {r['rmse_at_stop']:.2f} | {r['rmse_best']:.2f} "
                  f"({r['best_iteration']}) | {r['rmse_last']:.2f} | {r['stop_over_best_percent']:+.1f} % "
                  f"| {r['seconds_per_iteration']} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cl = sub.add_parser("classic")
    ft = sub.add_parser("finetune")
    tab = sub.add_parser("table")
    for p in (cl, ft, tab):
        p.add_argument("--out", required=True)
    for p in (cl, ft):
        p.add_argument("--cases", nargs="+", required=True)
        p.add_argument("--redo", action="store_true")
    cl.add_argument("--label-scale", type=float, default=100.0 / 3.0)
    cl.add_argument("--scan-iterations", type=int, default=60, help="ADMM iterations per alpha (the rule's)")
    cl.add_argument("--direct-iterations", type=int, default=300)
    ft.add_argument("--model", required=True)
    ft.add_argument("--name", required=True)
    ft.add_argument("--iterations", type=int, default=200)
    ft.add_argument("--every", type=int, default=5)
    ft.add_argument("--set", nargs="*", help="FinetuneConfig key=value (stop_tol=X: the flat-loss tolerance applied)")
    args = parser.parse_args(argv)
    {"classic": run_classic, "finetune": run_finetune, "table": table}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
