"""Where the pre-trained network's error comes from: the input's imperfections or the mapping it learned.

Each case's truth chi is put through the ideal forward model, D * chi (the case's voxel size and B0
direction, padded FFT, x mask: no noise, no intra-voxel dephasing, no Gibbs ringing), then with white
Gaussian noise at the level estimated from the measured field (daqsm.qc.noise). The network (--fast,
`daqsm.infer`) and TKD (stage 1, its default threshold) reconstruct the measured field and both
idealised ones; rmse as in RC2 tables (`daqsm.metrics`, x100, against the case's chi.nii.gz). If the
network's rmse on D * chi stays far above TKD's, the gap is in the learned mapping, not in the data.
On D * chi also: the slope of the map against the truth (least squares, demeaned, in the mask) and the
error split at a 3-voxel Gaussian low-pass (demeaned in the mask, percent of the truth's norm, as the
rmse): low / high.
`--tile N` (default 96, the command's) or `--tile 0` (the whole volume in one pass).

Command (from the repository root; T = case folders from `daqsm-simulate`):
    python benchmarks/bench_domain_gap.py --cases T/Sim1Snr1 T/Sim1Snr2 T/Sim2Snr1 T/Sim2Snr2 [--model M] [--tile N]
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
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--model", default=None, help="target model (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    parser.add_argument("--tile", type=int, default=96, help="inference tile (voxels; 0: the whole volume)")
    args = parser.parse_args(argv)

    import daqsm
    from daqsm.evaluation.baselines import tkd
    from daqsm.network_model.model_info import load_model_file
    from daqsm.network_model.shipped import default_model_path
    from daqsm.qc.noise import estimate_noise_ppm
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import read_volume

    model = load_model_file(args.model or default_model_path())
    from scipy.ndimage import gaussian_filter

    def infer(field, mask):
        if args.tile == 0:
            return daqsm.infer(model, field, mask, whole=True)
        return daqsm.infer(model, field, mask, tile=(args.tile,), overlap=(args.tile // 3,))

    def slope_split(chi, truth, mask):
        inside = mask > 0
        x, y = chi[inside] - chi[inside].mean(), truth[inside] - truth[inside].mean()
        error = ((chi - chi[inside].mean()) - (truth - truth[inside].mean())) * mask  # demeaned, as the rmse
        low = gaussian_filter(error, 3.0) * mask
        norm = np.linalg.norm(y) / 100.0
        return (float(np.dot(x, y) / np.dot(y, y)), np.linalg.norm(low[inside]) / norm,
                np.linalg.norm((error - low)[inside]) / norm)

    print("| case | noise (ppm) | net: measured / D*chi / D*chi + noise | TKD: measured / D*chi / D*chi + noise "
          "| D*chi slope net / TKD | D*chi error low / high, net | TKD |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in map(Path, args.cases):
        info = json.loads((case / "case.json").read_text())
        vs, b0 = info.get("voxel_size_mm", (1.0, 1.0, 1.0)), info.get("b0_dir", (0.0, 0.0, 1.0))
        field, mask, truth, seg = (read_volume(case / f"{n}.nii.gz").data.astype(np.float32)
                                   for n in ("local_field", "mask", "chi", "segmentation"))
        sigma = estimate_noise_ppm(field, mask > 0, None)
        clean = forward_field(truth, vs, b0, pad="auto") * mask
        noise = np.random.default_rng(args.seed).standard_normal(clean.shape).astype(np.float32) * sigma
        inputs = (field * mask, clean, (clean + noise) * mask)
        net_maps = [infer(f, mask) for f in inputs]
        ref_maps = [tkd(f, mask, vs, b0, pad="auto") for f in inputs]
        net = [daqsm.metrics(chi, truth, seg, mask)["rmse"] for chi in net_maps]
        ref = [daqsm.metrics(chi, truth, seg, mask)["rmse"] for chi in ref_maps]
        (s_net, lo_net, hi_net), (s_ref, lo_ref, hi_ref) = (slope_split(c[1], truth, mask) for c in (net_maps, ref_maps))
        print(f"| {case.name} | {sigma:.2g} | {' / '.join(f'{v:.2f}' for v in net)} | "
              f"{' / '.join(f'{v:.2f}' for v in ref)} | {s_net:.2f} / {s_ref:.2f} | {lo_net:.1f} / {hi_net:.1f} | "
              f"{lo_ref:.1f} / {hi_ref:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
