"""Tiny synthetic data for the network_model tests: smooth chi in a ball, its field, patch files."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from daqsm.training_data.dipole import forward_field


def ball_mask(n: int, radius_fraction: float = 0.4) -> np.ndarray:
    """float32 (n, n, n) 0/1 ball centred in the grid."""
    idx = np.arange(n) - (n - 1) / 2
    r2 = idx[:, None, None] ** 2 + idx[None, :, None] ** 2 + idx[None, None, :] ** 2
    return (r2 <= (radius_fraction * n) ** 2).astype(np.float32)


def smooth_chi(n: int, seed: int, amplitude_ppm: float = 0.1) -> np.ndarray:
    """float32 (n, n, n) smooth random susceptibility (ppm) inside the ball mask."""
    rng = np.random.default_rng(seed)
    chi = gaussian_filter(rng.standard_normal((n, n, n)), 2.0)
    chi = chi / (np.abs(chi).max() + 1e-12) * amplitude_ppm
    return (chi * ball_mask(n)).astype(np.float32)


def newest_checkpoint_step(folder) -> int:
    """The highest step among the checkpoints in `folder` (0 if none).

    A test waiting for "a checkpoint at step >= k" must not look for one file name: the run keeps only
    its last few checkpoints, so on a fast machine ckpt-k can come and go between two polls and the
    wait then lasts its whole deadline.
    """
    from pathlib import Path

    names = (p.name for p in Path(folder).glob("ckpt-*.index"))
    return max((int(n[len("ckpt-"):-len(".index")]) for n in names), default=0)


def make_patch_file(path, count: int = 6, n: int = 16, seed: int = 0, b0_tesla=3.0, te_s=0.02) -> str:
    """Contract-2 patch HDF5 with `count` source and target patches of n^3 voxels."""
    from daqsm.network_model.data import write_patch_file

    mask = ball_mask(n)
    src_chi = np.stack([smooth_chi(n, seed + i) for i in range(count)])
    tgt_chi = np.stack([smooth_chi(n, seed + 100 + i) for i in range(count)])
    masks = np.repeat(mask[None], count, axis=0)
    src_field = forward_field(src_chi) * masks
    tgt_field = forward_field(tgt_chi) * masks
    return write_patch_file(path, {"field": src_field, "mask": masks, "chi": src_chi},
                            {"field": tgt_field, "mask": masks, "weight": masks},
                            b0_tesla=b0_tesla, te_s=te_s)
