"""The lambda rule's scan: the alpha it picks and its seconds against NLTV iterations per alpha.

Runs `daqsm.network_model.tv_weight.choose_lambda_tv` (what `--lambda-tv auto` runs) on one case
folder's brain box (brain_box(mask, DIVISOR), pad auto, label scale 100/3 as the demo's network) once per
iteration count. DIVISOR is 2**depth of the network the box is cut for: 8 for the demo's depth 3 (the
default), 16 for the shipped model's depth 4 (`--divisor 16`). Results in benchmarks/results_finetune.md
("Scan iterations", "At 1 mm the lambda rule's scan diverged").

Command (the demo's cases; the shipped model's 1 mm case):
    for c in Sim2Snr1 Sim1Snr1 Sim2Snr2 Sim1Snr2; do
        python benchmarks/bench_lambda_scan.py demo_out/targets/$c 60 20 10; done
    python benchmarks/bench_lambda_scan.py --divisor 16 work_shipped/targets/Sim2Snr1 20
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    divisor = 8
    if argv[:1] == ["--divisor"] and len(argv) > 1:
        divisor, argv = int(argv[1]), argv[2:]
    if len(argv) < 2:
        print(__doc__)
        return 2
    from daqsm.network_model.target_data import load_case
    from daqsm.network_model.tiling import brain_box
    from daqsm.network_model.tv_weight import choose_lambda_tv

    target = load_case(argv[0])
    box = brain_box(target.mask, divisor)
    g = target.geometry
    for iterations in (int(a) for a in argv[1:]):
        t0 = time.perf_counter()
        choice = choose_lambda_tv(target.field_ppm[box], target.mask[box], target.weight[box], g.voxel_size_mm,
                                  g.b0_dir, target.phase_rad_per_ppm, 100 / 3, "auto", iterations=iterations)
        print(f"{argv[0]}: {iterations} its: alpha {choice.alpha:.3g}, lambda {choice.lambda_tv:.4g}, "
              f"{time.perf_counter() - t0:.1f} s, rule {choice.rule}; NDI per alpha "
              f"{[round(v, 4) for v in choice.evidence.get('ndi_per_alpha', [])]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
