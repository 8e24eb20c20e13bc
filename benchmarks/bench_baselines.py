"""Benchmark: the classic inversions on RC2-like case folders (all eight RC2 metrics) or the 2016 data.

Commands (from the repository root; the data stays where it is, nothing is copied):
    # RC2-like cases (daqsm.training_data.simulator.simulate): TKD, L2, NLTV stage 1 (discrepancy alpha) and
    # stage 2 (best alpha by ground truth) over one alpha scan, eight RC2 metrics each
    PYTHONPATH=$PWD nohup python benchmarks/bench_baselines.py --cases CASES/Sim1Snr1 CASES/Sim2Snr1 \
        --out benchmarks/out/baselines > /tmp/bench_baselines.log 2>&1 &
    # 2016 challenge data (160^3): runtime and NRMSE vs chi_33 of the default parameters
    PYTHONPATH=$PWD nohup python benchmarks/bench_baselines.py --data ../shared/data/qsm2016 \
        > /tmp/bench_baselines.log 2>&1 &

Python (another session's benchmark): `from benchmarks.bench_baselines import baseline_rows` (repository
root on sys.path) -> {method: {RC2 row: value, ..., "alpha", "seconds", ...}} for one case folder.

Case folder (daqsm.training_data.simulator.simulate.write_case): local_field.nii.gz (ppm), magnitude.nii.gz (4-D,
echoes last), mask.nii.gz, chi.nii.gz (truth, ppm), segmentation.nii.gz, case.json (b0_tesla, te_s,
voxel_size_mm, b0_dir). NLTV: phase scale at the 2nd echo time (the echo the magnitude weight comes
from), weight = 2nd echo magnitude (`--weight mask` for none), FFT padding `auto` for every method.
Timings are wall-clock on whatever machine runs it (record its core count and load with the numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

METHODS = ("TKD", "L2", "NLTV stage 1", "NLTV stage 2")


def load_case(case):
    """(field ppm, mask bool, truth ppm, seg int, weighting-echo magnitude, case.json dict, affine, its TE s)."""
    import numpy as np

    from daqsm.training_data.formats.case_folder import read_case

    folder = read_case(case)
    magnitude = folder.magnitude
    if magnitude is not None and magnitude.ndim == 4:
        magnitude = magnitude[..., folder.weight_echo_index()]
    return (folder.field.data, folder.mask, folder.read_extra("chi"),
            folder.read_extra("segmentation", dtype=None).astype(np.int32), magnitude, folder.info,
            folder.field.affine, folder.weight_te_s())


def baseline_rows(case_folder, alphas=None, iterations: int | None = None, weight: str = "magnitude",
                  pad="auto", out_dir=None) -> dict:
    """TKD, L2, NLTV stage 1 and stage 2 on one case folder, with the eight RC2 metrics each.

    Args:
        case_folder: folder written by daqsm.training_data.simulator.simulate (module doc).
        alphas: NLTV alpha grid (default daqsm.evaluation.nltv_alpha.ALPHA_GRID).
        iterations: NLTV ADMM iterations per alpha (default NDITVParams().iterations; warm-started).
        weight: "magnitude" (2nd echo) or "mask", the NLTV data weight.
        pad: FFT zero padding of every method.
        out_dir: write each reconstruction there as {case}_{method}.nii.gz (None: not written).

    Returns:
        {method: {RC2 row: value, ..., "alpha": float or None, "seconds": float, ...}}; the NLTV rows
        also hold "rule", "reached", "note", "alpha_grid", "rmse_grid", "residual_grid", "tv_grid",
        "iterations_grid",
        "noise_residual", "noise_ppm" and "scan_seconds" (the scan is shared; "seconds" of each NLTV
        row is the whole scan, as that is what choosing alpha costs).
    """
    from daqsm.evaluation import baselines as B
    from daqsm.evaluation import nltv_alpha as A
    from daqsm.evaluation.metrics import rc2_metrics

    if weight not in ("magnitude", "mask"):
        raise ValueError(f"weight: expected 'magnitude' or 'mask', got {weight!r}")
    field, mask, truth, seg, magnitude, info, affine, te = load_case(case_folder)
    vs, b0 = info["voxel_size_mm"], info["b0_dir"]
    params = B.NDITVParams(b0_tesla=info["b0_tesla"], te_s=te)
    if iterations is not None:
        params = B.NDITVParams(b0_tesla=info["b0_tesla"], te_s=te, iterations=iterations)
    w = magnitude if weight == "magnitude" else None
    rows, maps = {}, {}
    for method, run in (("TKD", lambda: B.tkd(field, mask, vs, b0, pad=pad)),
                        ("L2", lambda: B.l2_gradient(field, mask, vs, b0, pad=pad))):
        start = time.perf_counter()
        maps[method] = run()
        rows[method] = {"alpha": None, "seconds": time.perf_counter() - start}
    scan = A.scan_alpha(field, mask, w, vs, b0, params, alphas or A.ALPHA_GRID, pad=pad)
    best, rmse = A.best_alpha_by_truth(scan, truth, mask)
    for method, choice in (("NLTV stage 1", A.choose_alpha_discrepancy(scan)), ("NLTV stage 2", best)):
        maps[method] = scan.maps[choice.index]
        rows[method] = {"alpha": choice.alpha, "seconds": scan.seconds, "rule": choice.rule,
                        "reached": choice.reached, "note": choice.note, "iterations": scan.iterations[choice.index],
                        "alpha_grid": list(scan.alphas), "rmse_grid": list(rmse), "residual_grid": list(scan.residual),
                        "tv_grid": list(scan.tv), "iterations_grid": list(scan.iterations),
                        "noise_residual": scan.noise_residual, "noise_ppm": scan.noise_ppm, "scan_seconds": scan.seconds}
    for method, chi in maps.items():
        rows[method] = {**rc2_metrics(chi, truth, seg, mask).values, **rows[method]}
        if out_dir is not None:
            from daqsm.training_data.volume_io import write_volume

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            name = f"{Path(case_folder).name}_{method.replace(' ', '_')}.nii.gz"
            write_volume(Path(out_dir) / name, chi.astype("float32"), affine=affine)
    return rows


def cases_table(results: dict) -> str:
    """Markdown: one table per case (RC2 rows x methods, plus alpha and seconds), then an rmse summary."""
    from daqsm.evaluation.metrics import RC2_ROWS

    lines = []
    for case, rows in results.items():
        lines += [f"### {case}", "", "| metric | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
        for row in RC2_ROWS + ("alpha", "seconds"):
            cells = ["-" if rows[m][row] is None else f"{rows[m][row]:.4g}" for m in rows]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        for m in ("NLTV stage 1", "NLTV stage 2"):
            lines.append(f"\n{m}: {rows[m]['note']}")
        lines.append("")
    lines += ["### rmse summary", "", "| case | " + " | ".join(METHODS) + " | stage-1 alpha | stage-2 alpha |",
              "|---|" + "---:|" * (len(METHODS) + 2)]
    for case, rows in results.items():
        lines.append(f"| {case} | " + " | ".join(f"{rows[m]['rmse']:.2f}" for m in METHODS)
                     + f" | {rows['NLTV stage 1']['alpha']:.3g} | {rows['NLTV stage 2']['alpha']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", help="RC2-like case folders (daqsm.training_data.simulator.simulate)")
    parser.add_argument("--out", help="--cases: folder for baselines.md, baselines.json and the maps")
    parser.add_argument("--weight", default="magnitude", choices=("magnitude", "mask"), help="--cases: NLTV weight")
    parser.add_argument("--alphas", type=float, nargs="+", help="--cases: NLTV alpha grid (default nltv_alpha.ALPHA_GRID)")
    parser.add_argument("--data", default=os.path.join("..", "shared", "data", "qsm2016"))
    parser.add_argument("--methods", nargs="+", default=["tkd", "l2", "ndi-tv"], help="--data: methods")
    parser.add_argument("--iterations", type=int, default=None, help="ndi-tv iterations (default: NDITVParams)")
    parser.add_argument("--pad", default="auto", help="FFT zero padding of every method (default auto, as the functions)")
    args = parser.parse_args(argv)
    if args.cases:
        return _run_cases(args)
    return _run_2016(args)


def _run_cases(args) -> int:
    results = {}
    for case in args.cases:
        results[Path(case).name] = rows = baseline_rows(case, args.alphas, args.iterations, args.weight, args.pad,
                                                        out_dir=args.out)
        print(f"{Path(case).name}: " + ", ".join(f"{m} rmse {r['rmse']:.2f}" for m, r in rows.items()),
              file=sys.stderr, flush=True)
    text = (f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, pad {args.pad}, weight {args.weight}\n\n"
            + cases_table(results))
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "baselines.md").write_text(text)
        (Path(args.out) / "baselines.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


def _run_2016(args) -> int:
    """Prints one Markdown table: method, parameters, seconds, ADMM iterations, NRMSE vs chi_33 (2016
    definition, no demeaning), demeaned RC2 rmse, HFEN, XSIM and correlation vs chi_33 inside msk.
    Input: phs_tissue (ppm), msk; B0 along the third axis; voxel size from the NIfTI header."""
    if not os.path.isdir(args.data):
        print(f"skipped: 2016 challenge data not found at {args.data}")
        return 0
    from daqsm.evaluation import baselines as B
    from daqsm.evaluation import metrics
    from daqsm.training_data.volume_io import read_volume

    field = read_volume(os.path.join(args.data, "phs_tissue.nii.gz"))
    mask = read_volume(os.path.join(args.data, "msk.nii.gz")).data > 0.5
    chi_33 = read_volume(os.path.join(args.data, "chi_33.nii.gz")).data
    vs = field.voxel_size_mm
    b0 = (0.0, 0.0, 1.0)  # data/README.md: B0 along the third array axis
    print(f"# grid {field.data.shape}, voxel {tuple(round(v, 4) for v in vs)} mm, cores {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}, pad {args.pad}", flush=True)
    print("| method | parameters | seconds | iterations | NRMSE vs chi_33 (%) | RC2 rmse (%) | HFEN | XSIM | corr |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    p = B.NDITVParams() if args.iterations is None else B.NDITVParams(iterations=args.iterations)
    runs = {"tkd": (f"threshold {B.TKD_THRESHOLD}", lambda: (B.tkd(field.data, mask, vs, b0, pad=args.pad), "-")),
            "l2": (f"lambda {B.L2_LAMBDA}", lambda: (B.l2_gradient(field.data, mask, vs, b0, pad=args.pad), "-")),
            "ndi-tv": (f"alpha {p.alpha}, mu {p.mu_grad or 10 * p.alpha:g}, mu_data {p.mu_data}, "
                       f"max it {p.iterations}, tol {p.tol}, B0 {p.b0_tesla} T, TE {p.te_s} s",
                       lambda: _tv(B, field.data, mask, vs, b0, p, args.pad))}
    for name in args.methods:
        params, run = runs[name]
        start = time.perf_counter()
        chi, iterations = run()
        seconds = time.perf_counter() - start
        row = (metrics.nrmse_2016(chi, chi_33, mask), metrics.nrmse_pair(chi, chi_33, mask)[0],
               metrics.hfen(chi, chi_33, mask), metrics.xsim(chi, chi_33, mask), metrics.correlation(chi, chi_33, mask))
        print(f"| {name} | {params} | {seconds:.1f} | {iterations} | " + " | ".join(f"{v:.4g}" for v in row) + " |",
              flush=True)
    return 0


def _tv(B, field, mask, vs, b0, params, pad):
    chi, info = B.ndi_tv(field, mask, None, vs, b0, params=params, pad=pad, return_info=True)
    return chi, f"{info['iterations']}{'' if info['converged'] else ' (max)'}"


if __name__ == "__main__":
    sys.exit(main())
