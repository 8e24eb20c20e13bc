"""Why the no-truth TV weight is too small where it is: the truth's own data residual against the rule's target.

The lambda rule (daqsm/qc/tv_alpha.py) picks the largest alpha whose weighted NDI residual R(alpha) stays
within T = max(E, 1.3 R_floor): E the residual the estimated noise alone leaves, R_floor the smallest
residual of the scan. The true chi does not reach E where the field holds model error (intra-voxel
dephasing, anisotropy, background remnants). This benchmark measures, per case, on the brain box that
fine-tuning sees (pad auto, the case's weight and phase scale, the lambda rule's own scan):

- E, R_floor and the rule's pick (stage 1, no truth);
- R(truth): the residual of the true chi itself, in units of E;
- the alpha whose residual first exceeds R(truth) going down the grid (a discrepancy rule that knew the
  model error: it uses the truth, so it is a diagnostic, not a rule) and the best alpha by rmse (stage 2).

Commands (data stay where they are; nothing derived from them is committed but these numbers):
    python benchmarks/bench_model_error.py --cases RC2_1MM/Sim1Snr1 RC2_1MM/Sim2Snr1 --out OUT
    python benchmarks/bench_model_error.py --invivo ../shared/data/qsm2016 --out OUT   # 3 T, TE 25 ms, mask weight
Each case appends to OUT/model_error.json and prints its row (markdown). Then, from the stored scans:
    python benchmarks/bench_model_error.py --kappa-table OUT/model_error.json ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _case_inputs(path):
    """(name, field, mask, weight, voxel size, B0 direction, phase scale, {truth name: chi}) on the brain box."""
    import numpy as np

    from daqsm.network_model.target_data import load_case, phase_scale
    from daqsm.network_model.tiling import brain_box
    from daqsm.training_data.volume_io import read_volume

    target = load_case(str(path), None, None, check=True)
    box = brain_box(target.mask, 16)  # the shipped model's depth 4, as daqsm-finetune cuts it
    mask = target.mask[box] > 0
    truth = read_volume(Path(path) / "chi.nii.gz").data.astype(np.float32)[box] * mask
    g = target.geometry
    return (Path(path).name, target.field_ppm[box], mask, target.weight[box], g.voxel_size_mm, g.b0_dir,
            float(phase_scale(target, None)), {"chi": truth})


def _invivo_inputs(folder):
    """The 2016 challenge data: local field (ppm), msk, 3 T / TE 25 ms, the mask as weight, chi_33 and COSMOS."""
    import numpy as np

    from daqsm.training_data.geometry import voxel_size_from_affine
    from daqsm.training_data.units import rad_per_ppm
    from daqsm.training_data.volume_io import read_volume

    field = read_volume(Path(folder) / "phs_tissue.nii.gz")
    mask = read_volume(Path(folder) / "msk.nii.gz").data > 0
    voxel = voxel_size_from_affine(field.affine)
    truths = {name: read_volume(Path(folder) / f"{name}.nii.gz").data.astype(np.float32) * mask
              for name in ("chi_33", "chi_cosmos")}
    return ("qsm2016", field.data.astype(np.float32), mask, mask.astype(np.float32), voxel, (0.0, 0.0, 1.0),
            rad_per_ppm(3.0, 0.025), truths)


def measure(inputs, scan_iterations: int) -> dict:
    import numpy as np

    from daqsm.evaluation.metrics import nrmse_pair
    from daqsm.network_model.tv_weight import _nltv_params
    from daqsm.qc import tv_alpha

    name, field, mask, weight, voxel, b0_dir, scale, truths = inputs
    params = _nltv_params(scale, scan_iterations)
    scan = tv_alpha.scan_alpha(field, mask, weight, voxel, b0_dir, params, pad="auto", progress=True)
    rule = tv_alpha.choose_alpha_discrepancy(scan, tau=1.0)  # kappa 1: the rule this benchmark explains
    e = scan.noise_residual
    row = {"case": name, "phase_rad_per_ppm": scale, "scan_iterations": scan_iterations,
           "alphas": list(scan.alphas), "residual": list(scan.residual), "noise_residual": e,
           "residual_floor": min(scan.residual), "rule_alpha": rule.alpha, "rule_note": rule.note,
           "seconds": round(scan.seconds, 1), "truths": {}}
    for truth_name, chi in truths.items():
        r_true = tv_alpha.data_residual(chi, field, mask, weight, voxel, b0_dir, scale, "auto")
        within = [i for i, r in enumerate(scan.residual) if r <= r_true]
        rmse = [float(nrmse_pair(m, chi, mask)[0]) for m in scan.maps]
        best = int(np.nanargmin(rmse))
        row["truths"][truth_name] = {
            "residual": r_true, "residual_over_noise": r_true / e,
            "alpha_at_truth_residual": scan.alphas[max(within)] if within else None,
            "best_alpha": scan.alphas[best], "rmse": rmse, "rmse_rule": rmse[rule.index], "rmse_best": rmse[best]}
    return row


def markdown(row: dict) -> str:
    lines = []
    for truth_name, t in row["truths"].items():
        at = t["alpha_at_truth_residual"]
        lines.append(f"| {row['case']} ({truth_name}) | {row['noise_residual']:.0f} | {row['residual_floor']:.0f} | "
                     f"{t['residual']:.0f} ({t['residual_over_noise']:.1f} E) | {row['rule_alpha']:.3g} "
                     f"({t['rmse_rule']:.2f}) | {'-' if at is None else f'{at:.3g}'} | {t['best_alpha']:.3g} "
                     f"({t['rmse_best']:.2f}) |")
    return "\n".join(lines)


def kappa_table(stores, kappas=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)) -> str:
    """rmse at the largest alpha with R <= kappa E, per case and truth, beside the rule and the best: what a
    discrepancy target of kappa x the noise residual would give (kappa to be set on one set of cases and
    tested on another, as FLOOR_FACTOR was)."""
    from daqsm.qc import tv_alpha

    lines = ["| case (truth) | rule | " + " | ".join(f"{k:g} E" for k in kappas) + " | best |",
             "|---|---:|" + "---:|" * len(kappas) + "---:|"]
    for store in stores:
        for row in json.loads(Path(store).read_text()).values():
            alphas, n = row["alphas"], len(row["alphas"])
            scan = tv_alpha.AlphaScan(tuple(alphas), tuple(row["residual"]), (0.0,) * n, (0,) * n, None, 0.0,
                                      row["noise_residual"], 0.0)
            # the rule itself, with the floor term off: the largest alpha with R <= kappa E (else the smallest)
            picks = [tv_alpha.choose_alpha_discrepancy(scan, tau=k, floor_factor=None).index for k in kappas]
            rule_index = alphas.index(row["rule_alpha"])
            for truth_name, t in row["truths"].items():
                cells = [f"{t['rmse'][i]:.2f} ({alphas[i]:.2g})" for i in picks]
                lines.append(f"| {row['case']} ({truth_name}) | {t['rmse'][rule_index]:.2f} ({alphas[rule_index]:.2g}) | "
                             + " | ".join(cells) + f" | {t['rmse_best']:.2f} ({t['best_alpha']:.2g}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from daqsm.network_model.tv_weight import SCAN_ITERATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=[], help="case folders (daqsm-simulate)")
    parser.add_argument("--invivo", default="", help="the 2016 challenge data folder")
    parser.add_argument("--scan-iterations", type=int, default=SCAN_ITERATIONS, help="the lambda rule's default")
    parser.add_argument("--out", help="folder of model_error.json (appended per case)")
    parser.add_argument("--kappa-table", nargs="*", default=None, metavar="JSON",
                        help="only print the kappa x E table of these model_error.json files")
    args = parser.parse_args(argv)
    if args.kappa_table is not None:
        print(kappa_table(args.kappa_table))
        return 0
    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "model_error.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    jobs = [(lambda c=c: _case_inputs(c)) for c in args.cases]
    if args.invivo:
        jobs.append(lambda: _invivo_inputs(args.invivo))
    print("| case (truth) | E | R_floor | R(truth) | rule's alpha (rmse) | alpha at R(truth) | best alpha (rmse) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for job in jobs:
        t0 = time.perf_counter()
        row = measure(job(), args.scan_iterations)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        results[row["case"]] = row
        store.write_text(json.dumps(results, indent=1))
        print(markdown(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
