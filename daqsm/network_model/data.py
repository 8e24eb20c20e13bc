"""tf.data input for pre-training (step 4): patches in memory, or the step-3 patch HDF5 (contract 2).

Layout read here: `/source/{field,mask,chi}` and `/target/{field,mask,weight}`, float32
(N, px, py, pz), one chunk per patch; group attrs `voxel_size_mm`, `b0_dir` and, on `/target`,
`b0_tesla` and `te_s`.

Two sources of batches, the same batches for the same seed (shuffling works on patch indices):
    in memory (`LoadedPatchGroup`: `load_patch_group` reads a group that fits `max_bytes` once,
        `group_from_arrays` wraps make_patches' dict): a batch is a gather, no decoding per step;
    from the file (`PatchGroup`): patches read one at a time (one gzip/lzf chunk each) inside the
        pipeline, so a file larger than memory is never loaded whole.
`group_dataset` picks the right one; batches are prefetched while the network trains.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from daqsm.errors import InputError
from daqsm.training_data.formats.patch_h5 import (  # noqa: F401  (the patch file's home; names kept here for callers)
    SOURCE_KEYS,
    TARGET_KEYS,
    PatchGroup,
    check_input_contract,
    parse_protocols,
    read_patch_group,
    write_patch_file,
)


@dataclass(frozen=True)
class LoadedPatchGroup(PatchGroup):
    """A patch group held in memory: `PatchGroup`'s description plus `arrays`, one float32
    (N, px, py, pz) array per entry of `keys` (the target's weight may be its mask)."""

    arrays: tuple = ()


def group_bytes(info: PatchGroup) -> int:
    """Bytes the group's distinct datasets take in memory as float32."""
    return int(info.count * np.prod(info.patch_size) * 4 * len(set(info.keys)))


def load_patch_group(info: PatchGroup, max_bytes: float) -> PatchGroup:
    """The group read once into memory when it takes at most `max_bytes`, else `info` unchanged.

    Why: per-step chunk reads decode each patch again at every epoch; a whole-dataset read decodes
    it once (the file stays the way for data larger than memory).
    """
    import h5py

    if isinstance(info, LoadedPatchGroup) or max_bytes <= 0 or group_bytes(info) > max_bytes:
        return info
    with h5py.File(info.path, "r") as h5:
        grp = h5[info.group]
        read = {key: np.asarray(grp[key][...], dtype=np.float32) for key in dict.fromkeys(info.keys)}
    return LoadedPatchGroup(**{f: getattr(info, f) for f in PatchGroup.__dataclass_fields__},
                            arrays=tuple(read[key] for key in info.keys))


def group_from_arrays(group: str, arrays: dict, attrs: dict | None = None, name: str = "patches",
                      index: dict | None = None) -> LoadedPatchGroup:
    """`make_patches`' dict entry ('source': field/mask/chi, 'target': field/mask/weight) as a group.

    Args:
        group: 'source' or 'target'.
        arrays: {key: float (N, px, py, pz)}; a target without 'weight' uses its mask.
        attrs: the group's attrs (voxel_size_mm, b0_dir, b0_tesla, te_s; NaN = unknown).
        name: how messages name the arrays.
        index: make_patches' 'index' dict: a target of several protocols (attr `protocols`) reads each
            crop's protocol from its 'target_protocol', as the file reader does.

    The input contract of the file reader holds here too: field (and chi, weight) x mask.
    """
    wanted = SOURCE_KEYS if group == "source" else TARGET_KEYS
    required = wanted if group == "source" else wanted[:2]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise InputError(f"{name}['{group}']: lacks {', '.join(missing)}; present: {', '.join(arrays) or 'none'}")
    keys = wanted if group == "source" or "weight" in arrays else ("field", "mask", "mask")
    mask = np.asarray(arrays["mask"], np.float32)
    if mask.ndim != 4 or mask.shape[0] < 1:
        raise InputError(f"{name}['{group}']['mask']: expected (N, px, py, pz) with N >= 1, got shape {mask.shape}")
    out = {}
    for key in dict.fromkeys(keys):
        data = np.asarray(arrays[key], np.float32)
        if data.shape != mask.shape:
            raise InputError(f"{name}['{group}']['{key}']: shape {data.shape}, expected {mask.shape} (as the mask)")
        out[key] = data if key == "mask" else np.where(mask > 0, data, np.float32(0))
    attrs = attrs or {}

    def known(key, default=None):
        value = attrs.get(key)
        if value is None or not np.all(np.isfinite(np.ravel(value))):
            return default
        return tuple(float(v) for v in np.ravel(value)) if default is not None else float(np.ravel(value)[0])

    count, patch_size = int(mask.shape[0]), tuple(int(n) for n in mask.shape[1:])
    if group == "target" and "protocols" in attrs:
        protocols, crop_index = parse_protocols(name, attrs["protocols"], (index or {}).get("target_protocol"), count)
        if len(protocols) > 1:  # geometry and acquisition per crop, as read_patch_group gives them
            return LoadedPatchGroup(name, group, count, patch_size, None, None, None, None, keys, tuple(protocols),
                                    crop_index, arrays=tuple(out[key] for key in keys))
    return LoadedPatchGroup(name, group, count, patch_size,
                            known("voxel_size_mm", (1.0, 1.0, 1.0)), known("b0_dir", (0.0, 0.0, 1.0)),
                            known("b0_tesla"), known("te_s"), keys, arrays=tuple(out[key] for key in keys))


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
                  repeat: bool = True, drop_remainder: bool = True, extras=()):
    """tf.data.Dataset of batches (a, b, c), each float32 (batch, px, py, pz, 1), read per patch.

    Source batches are (field_ppm, mask, chi_ppm); target batches (field_ppm, mask, weight); each
    array of `extras` (one value per patch of the group, (count,)) adds a (batch,) tensor.
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

    per_patch = tuple(tf.constant(np.asarray(e, np.float32)) for e in extras)

    def read(index):
        items = tf.numpy_function(reader, [index], [tf.float32] * len(info.keys), stateful=False)
        return tuple(tf.ensure_shape(t, spec.shape) for t in items) + tuple(tf.gather(e, index) for e in per_patch)

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def group_dataset(info: PatchGroup, indices, batch_size: int, shuffle: bool = True, seed: int = 0,
                  repeat: bool = True, drop_remainder: bool = True, extras=()):
    """`patch_dataset`'s batches from memory for a `LoadedPatchGroup`, from the file otherwise."""
    if not isinstance(info, LoadedPatchGroup):
        return patch_dataset(info, indices, batch_size, shuffle, seed, repeat, drop_remainder, extras)
    import tensorflow as tf

    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise InputError(f"{info.path}: /{info.group} has no patches left for this split")
    stores = {}
    for key, array in zip(info.keys, info.arrays):
        stores.setdefault(key, tf.constant(array))
    tensors = tuple(stores[key] for key in info.keys)
    ds = tf.data.Dataset.from_tensor_slices(indices)
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    per_patch = tuple(tf.constant(np.asarray(e, np.float32)) for e in extras)

    def gather(batch_indices):
        return (tuple(tf.gather(t, batch_indices)[..., None] for t in tensors)
                + tuple(tf.gather(e, batch_indices) for e in per_patch))

    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def memory_dataset(arrays, batch_size: int, seed: int = 0):
    """The same batches from in-memory arrays (N, px, py, pz) (benchmark reference, tests)."""
    import tensorflow as tf

    tensors = tuple(np.asarray(a, np.float32)[..., None] for a in arrays)
    ds = tf.data.Dataset.from_tensor_slices(tensors).shuffle(len(tensors[0]), seed=seed).repeat()
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
