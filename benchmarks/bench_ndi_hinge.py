"""The data-term floor of pre-training against the level the true chi reaches, on a patch file's target crops.

Command (the demo's steps 1-3, e.g. `daqsm-demo -o demo_out`, then):
    python benchmarks/bench_ndi_hinge.py --patches demo_out/step3_patches.h5 --targets demo_out/targets

For each target crop of the patch file: the normalised NDI (daqsm.network_model.losses.ndi_loss, the
pre-training dipole model without FFT padding, the unit of log.csv) of the ground-truth chi cut the same
way (`/index/target_volume`, `/index/target_origin`; the case folders are `/target` attrs `files` under
--targets), and the floor `ndi_floor noise` puts there (daqsm.network_model.pretrain_core.target_floors
with tau 1: the NDI the crop's estimated noise alone leaves). Prints a Markdown table per case and the
ratio truth / floor, the tau at which the floor equals the truth's level.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", required=True)
    parser.add_argument("--targets", required=True, help="folder holding the case folders named in /target files")
    args = parser.parse_args(argv)

    import h5py
    import tensorflow as tf

    from daqsm.network_model.data import load_patch_group, read_patch_group
    from daqsm.network_model.losses import ndi_loss
    from daqsm.network_model.pretrain_core import crop_phases, phase_scale, target_floors
    from daqsm.network_model.pretraining import PretrainConfig
    from daqsm.training_data.dipole import dipole_operator_tf
    from daqsm.training_data.patches import extract_patch
    from daqsm.training_data.volume_io import read_volume

    target = load_patch_group(read_patch_group(args.patches, "target"), 8 * 2**30)
    cfg = PretrainConfig(ndi_floor="noise", ndi_floor_tau=1.0)
    phase = phase_scale(cfg, target)
    floors = target_floors(cfg, target, phase)
    with h5py.File(args.patches, "r") as h5:
        volumes, origins = h5["index/target_volume"][()], h5["index/target_origin"][()]
        cases = [str(f) for f in h5["target"].attrs["files"]]
    protocols = target.crop_protocols()  # one per crop (a mixed-protocol file: each its own kernel and scale)
    dipoles = {}
    for p in protocols:
        key = (p.voxel_size_mm, p.b0_dir)
        if key not in dipoles:
            dipoles[key] = dipole_operator_tf(target.patch_size, p.voxel_size_mm, p.b0_dir, "none")
    phases = crop_phases(target, phase)
    field, mask, weight = target.arrays
    truth_ndi = np.zeros(target.count)
    for v, case in enumerate(cases):
        chi = read_volume(Path(args.targets) / case / "chi.nii.gz").data
        for i in np.flatnonzero(volumes == v):
            crop = extract_patch(chi, origins[i], target.patch_size) * mask[i]
            batch = [tf.constant(a[None, ..., None]) for a in (crop, field[i], weight[i], mask[i])]
            dipole = dipoles[(protocols[i].voxel_size_mm, protocols[i].b0_dir)]
            truth_ndi[i] = float(ndi_loss(batch[0], batch[1], batch[2], batch[3], dipole, float(phases[i]))[0])
    scales = ", ".join(f"{v:.2f}" for v in sorted(set(np.round(phases, 2))))
    print(f"{target.count} target crops {target.patch_size}, phase scale {scales} rad/ppm\n")
    print("| case | crops | truth's NDI (mean) | noise floor, tau 1 (mean) | truth / floor |")
    print("|---|---:|---:|---:|---:|")
    for v, case in enumerate(cases):
        sel = volumes == v
        t, f = truth_ndi[sel].mean(), floors[sel].mean()
        print(f"| {case} | {int(sel.sum())} | {t:.4g} | {f:.4g} | {t / f:.2f} |")
    print(f"| all | {target.count} | {truth_ndi.mean():.4g} | {floors.mean():.4g} | "
          f"{truth_ndi.mean() / floors.mean():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
