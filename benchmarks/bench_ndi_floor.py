"""The true chi's NDI loss against the crop size: how far small target patches keep data consistency
from the truth (issue 16 item 4).

Command (a case folder from daqsm.training_data.simulator.simulate, e.g. the ablation's 1 mm RC2-like cases):
    python benchmarks/bench_ndi_floor.py --case work/ablation/targets/Sim1Snr2 --crops 32 48 64 96 128

For each crop size: every grid crop (stride half the crop) with at least half brain, the normalised
NDI (daqsm.network_model.losses.ndi_loss, W = 2nd echo magnitude, phase scale of the 2nd echo) of the
ground-truth chi on that crop, with the pre-training's dipole model (no FFT padding) and with 'auto'
padding; then the whole-brain crop step 3 writes by default (bounding box + 8 voxels, to a multiple
of 16) and the whole volume. Prints a Markdown table (mean over crops).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True)
    parser.add_argument("--crops", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    args = parser.parse_args(argv)

    import tensorflow as tf

    from daqsm.network_model.losses import ndi_loss
    from daqsm.training_data.dipole import dipole_operator_tf
    from daqsm.training_data.patches import bbox_crop_origin, bbox_crop_size, extract_patch, grid_origins
    from daqsm.training_data.units import rad_per_ppm
    from daqsm.training_data.volume_io import read_volume

    case = Path(args.case)
    info = json.loads((case / "case.json").read_text())
    chi = read_volume(case / "chi.nii.gz").data
    field = read_volume(case / "local_field.nii.gz").data
    mask = (read_volume(case / "mask.nii.gz", dtype=None).data > 0).astype(np.float32)
    magnitude = read_volume(case / "magnitude.nii.gz", ndim=(3, 4)).data[..., 1] * mask
    weight = (magnitude / magnitude.max()).astype(np.float32)
    field, chi = field * mask, chi * mask
    phase = rad_per_ppm(info["b0_tesla"], info["te_s"][1])
    vs, b0 = info["voxel_size_mm"], info["b0_dir"]

    def ndi_of(origin, size, pad):
        dipole = dipole_operator_tf(size, vs, b0, pad)
        c, f, w, m = (tf.constant(extract_patch(a, origin, size)[None, ..., None]) for a in (chi, field, weight, mask))
        return float(ndi_loss(c, f, w, m, dipole, phase)[0])

    rows = []
    for crop in args.crops:
        size = (crop,) * 3
        origins = [o for o in grid_origins(mask.shape, size, (crop // 2,) * 3)
                   if extract_patch(mask, o, size).mean() >= 0.5]
        if not origins:
            continue
        values = {pad: [ndi_of(o, size, pad) for o in origins] for pad in ("none", "auto")}
        rows.append((f"{crop}^3 ({len(origins)} crops)", np.mean(values["none"]), np.mean(values["auto"])))
        print(rows[-1], file=sys.stderr, flush=True)
    size = bbox_crop_size([mask])
    origin = bbox_crop_origin(mask, size)
    rows.append((f"whole-brain crop {size}", ndi_of(origin, size, "none"), ndi_of(origin, size, "auto")))
    rows.append((f"whole volume {mask.shape}", ndi_of((0, 0, 0), mask.shape, "none"),
                 ndi_of((0, 0, 0), mask.shape, "auto")))
    lines = [f"True-chi NDI (normalised, W = echo 2) on {case.name}:", "",
             "| crop | NDI, no FFT padding (pre-training) | NDI, 'auto' padding |", "|---|---:|---:|"]
    lines += [f"| {name} | {a:.4g} | {b:.4g} |" for name, a, b in rows]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
