"""tf.data input for pre-training (step 4) from the step-3 patch HDF5 (data contract 2).

Layout read here: `/source/{field,mask,chi}` and `/target/{field,mask,weight}`, float32
(N, px, py, pz), one chunk per patch; group attrs `voxel_size_mm`, `b0_dir` and, on `/target`,
`b0_tesla` and `te_s`. Patches are read one at a time (one chunk each) inside the pipeline, so the
file is never loaded whole; shuffling works on patch indices; batches are prefetched while the
network trains.
"""
from __future__ import annotations

import threading

import numpy as np

from daqsm.errors import InputError
from daqsm.training_data.formats.patch_h5 import (  # noqa: F401  (the patch file's home; names kept here for callers)
    SOURCE_KEYS,
    TARGET_KEYS,
    PatchGroup,
    check_input_contract,
    read_patch_group,
    write_patch_file,
)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out validation patches: a seeded random `val_fraction` of the indices (at least one
    when the fraction is > 0 and at least two patches exist), the rest for training."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = int(round(count * float(val_fraction)))
    if val_fraction > 0 and count >= 2:
        n_val = min(max(n_val, 1), count - 1)
    else:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class _PatchReader:
    """Reads patch i of a group; keeps one h5py handle per thread (h5py serialises access)."""

    def __init__(self, info: PatchGroup):
        self.info, self._local = info, threading.local()

    def __call__(self, index):
        import h5py

        h5 = getattr(self._local, "h5", None)
        if h5 is None:
            h5 = self._local.h5 = h5py.File(self.info.path, "r")
        grp = h5[self.info.group]
        return tuple(np.asarray(grp[k][int(index)], dtype=np.float32)[..., None] for k in self.info.keys)


def patch_dataset(info: PatchGroup, indices, batch_size: int, shuffle: bool = True, seed: int = 0,
                  repeat: bool = True, drop_remainder: bool = True):
    """tf.data.Dataset of batches (a, b, c), each float32 (batch, px, py, pz, 1), read per patch.

    Source batches are (field_ppm, mask, chi_ppm); target batches (field_ppm, mask, weight).
    """
    import tensorflow as tf

    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise InputError(f"{info.path}: /{info.group} has no patches left for this split")
    reader = _PatchReader(info)
    spec = tf.TensorSpec((*info.patch_size, 1), tf.float32)
    ds = tf.data.Dataset.from_tensor_slices(indices)
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def read(index):
        items = tf.numpy_function(reader, [index], [tf.float32] * len(info.keys), stateful=False)
        return tuple(tf.ensure_shape(t, spec.shape) for t in items)

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def memory_dataset(arrays, batch_size: int, seed: int = 0):
    """The same batches from in-memory arrays (N, px, py, pz) (benchmark reference, tests)."""
    import tensorflow as tf

    tensors = tuple(np.asarray(a, np.float32)[..., None] for a in arrays)
    ds = tf.data.Dataset.from_tensor_slices(tensors).shuffle(len(tensors[0]), seed=seed).repeat()
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
