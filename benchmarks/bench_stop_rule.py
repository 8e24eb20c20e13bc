"""Replay step 5's stop rule on logged fine-tuning runs: where it stops, against the best iterate.

`bench_finetune.py finetune` runs with the stop rule off, keeps every iteration's loss terms
(`loss_log`) and the rmse every --every iterations (`trace`); this script feeds the logged terms to
the same StoppingRule step 5 runs (daqsm.network_model.stopping), once per flat-loss window, and
prints where each stops and the rmse there (nearest traced iterate) over the best traced rmse.

    python benchmarks/bench_stop_rule.py W/finetune_auto.json --windows 20 30

Also lists the loss spikes (an iterate > 5 % above the best loss before it, after the warm-up) and
the iterations each took to get back below that best: a flat-loss window must be longer than that
recovery, or a spike reads as a plateau.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _stop(row_log, target, window: int, tol: float, tau: float, warmup: int):
    from daqsm.network_model.stopping import StoppingRule

    rows = [{"step": step, "loss": loss, "ndi": ndi} for step, loss, ndi, _ in row_log[1:]]  # row 0: the start
    return StoppingRule(target, tau, window, tol, warmup).replay(rows) or (int(row_log[-1][0]), "budget")


def _spikes(losses, warmup: int, jump: float = 1.05):
    best_before = np.minimum.accumulate(losses)
    out, i = [], warmup + 1
    while i < len(losses):
        if losses[i] > jump * best_before[i - 1]:
            j = i
            while j < len(losses) and losses[j] >= best_before[i - 1]:
                j += 1
            out.append((i, j - i))
            i = j
        i += 1
    return out


def main(argv=None) -> int:
    from daqsm.network_model.finetuning import FinetuneConfig

    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finetune_NAME.json of bench_finetune.py (with loss_log)")
    parser.add_argument("--windows", type=int, nargs="+", default=[defaults.convergence_window])
    parser.add_argument("--tol", type=float, default=defaults.convergence_tol)
    args = parser.parse_args(argv)

    cols = " | ".join(f"window {w}: stop (why), rmse, over best" for w in args.windows)
    print(f"| run | case | best rmse (iteration) | {cols} | spikes (start: iterations to recover) |")
    print("|---|---|---|" + "---|" * len(args.windows) + "---|")
    for path in args.runs:
        for case, r in json.loads(open(path).read()).items():
            trace = {int(k): v for k, v in r["trace"].items()}
            best = min(trace, key=trace.get)
            warmup = int(r["settings"].get("warmup_iterations", defaults.warmup_iterations))
            cells = []
            for window in args.windows:
                stop, why = _stop(r["loss_log"], r["ndi_target"], window, args.tol, defaults.tau, warmup)
                at = trace[min(trace, key=lambda k: abs(k - stop))]
                cells.append(f"{stop} ({why}), {at:.2f}, +{100 * (at / trace[best] - 1):.1f} %")
            spikes = ", ".join(f"{s}: {n}" for s, n in _spikes(np.array([x[1] for x in r["loss_log"]]), warmup))
            print(f"| {path.rsplit('/', 1)[-1]} | {case} | {trace[best]:.2f} ({best}) | " + " | ".join(cells)
                  + f" | {spikes or 'none'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
