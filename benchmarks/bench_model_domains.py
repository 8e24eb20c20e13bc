"""Pre-trained target models (`--fast`: the network alone) across domains: simulated case groups and in vivo.

For each model: rmse (x100, RC2's, `daqsm.metrics` against each case's chi.nii.gz) of `daqsm.infer` (96^3
tiles) on every case of each `--group NAME=CASE...`, and on the 2016 challenge's in-vivo field the 2016
NRMSE against chi_33 and against COSMOS (`daqsm.evaluation.metrics.challenge2016_metrics`, the mask as
given, no weighting). One JSON line per model. Used to compare shipped-model candidates (snapshots of
one run, or runs over other target protocols) by the same code on the same inputs.

Command (from the repository root; the data stays in ../shared/data):
    python benchmarks/bench_model_domains.py --models M1.keras M2.keras \\
        --group 7T=T/Sim1Snr1,T/Sim1Snr2,T/Sim2Snr1,T/Sim2Snr2 --group RC2=R/Sim1Snr1,... \\
        [--invivo ../shared/data/qsm2016]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--group", action="append", default=[], help="NAME=CASE,CASE,... (case folders)")
    parser.add_argument("--invivo", default=None, help="the 2016 challenge folder (phs_tissue, msk, chi_33, "
                        "chi_cosmos .nii.gz); skipped when absent")
    args = parser.parse_args(argv)

    import daqsm
    from daqsm.evaluation.metrics import challenge2016_metrics
    from daqsm.network_model.model_info import load_model_file
    from daqsm.training_data.volume_io import read_volume

    def load(path):
        return read_volume(path).data.astype(np.float32)

    groups = {}
    for spec in args.group:
        name, _, cases = spec.partition("=")
        groups[name] = [Path(c) for c in cases.split(",") if c]
    cache = {}
    for path in args.models:
        model = load_model_file(path)
        row = {"model": path}
        for name, cases in groups.items():
            values = []
            for case in cases:
                if case not in cache:
                    cache[case] = tuple(load(case / f"{n}.nii.gz") for n in ("local_field", "mask", "chi", "segmentation"))
                field, mask, truth, seg = cache[case]
                values.append(round(daqsm.metrics(daqsm.infer(model, field * mask, mask), truth, seg, mask)["rmse"], 2))
            row[name] = values
        if args.invivo and Path(args.invivo, "phs_tissue.nii.gz").exists():
            if "invivo" not in cache:
                cache["invivo"] = tuple(load(Path(args.invivo) / f"{n}.nii.gz")
                                        for n in ("phs_tissue", "msk", "chi_33", "chi_cosmos"))
            field, mask, chi33, cosmos = cache["invivo"]
            values = challenge2016_metrics(daqsm.infer(model, field * mask, mask), chi33, mask > 0, chi_cosmos=cosmos).values
            row["invivo_nrmse_chi33_cosmos"] = [round(float(values["nrmse_chi33"]), 2), round(float(values["nrmse_cosmos"]), 2)]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
