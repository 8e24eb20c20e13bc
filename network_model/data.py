"""tf.data input for pre-training (step 4) from the step-3 patch HDF5 (data contract 2).

Layout read here: `/source/{field,mask,chi}` and `/target/{field,mask,weight}`, float32
(N, px, py, pz), one chunk per patch; group attrs `voxel_size_mm`, `b0_dir` and, on `/target`,
`b0_tesla` and `te_s`. Patches are read one at a time (one chunk each) inside the pipeline, so the
file is never loaded whole; shuffling works on patch indices; batches are prefetched while the
network trains.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from training_data.errors import InputError

SOURCE_KEYS = ("field", "mask", "chi")
TARGET_KEYS = ("field", "mask", "weight")


@dataclass(frozen=True)
class PatchGroup:
    """What a group of the patch file holds.

    Attributes:
        path: HDF5 file; group: 'source' or 'target'; count: number of patches N.
        patch_size: (px, py, pz); voxel_size_mm, b0_dir: geometry of every patch.
        b0_tesla, te_s: acquisition of the weighting echo (None when unknown).
        keys: the datasets read per patch (a missing `/target/weight` falls back to the mask).
    """

    path: str
    group: str
    count: int
    patch_size: tuple
    voxel_size_mm: tuple
    b0_dir: tuple
    b0_tesla: float | None
    te_s: float | None
    keys: tuple


def _attr_float(attrs, key):
    value = attrs.get(key)
    if value is None:
        return None
    value = float(np.ravel(value)[0])
    return value if math.isfinite(value) else None


def read_patch_group(path, group: str) -> PatchGroup:
    """Open a patch HDF5 and check one group against contract 2 (InputError naming what is wrong)."""
    import h5py

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: patch file not found")
    wanted = SOURCE_KEYS if group == "source" else TARGET_KEYS
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot open as HDF5 ({err})".splitlines()[0]) from None
    with h5:
        if group not in h5:
            raise InputError(f"{path}: no /{group} group; present: {', '.join(h5.keys()) or 'none'}")
        grp = h5[group]
        required = wanted if group == "source" else wanted[:2]
        missing = [k for k in required if k not in grp]
        keys = wanted
        if group == "target" and "weight" not in grp:
            keys = ("field", "mask", "mask")  # weight = mask when no magnitude was available
        if missing:
            raise InputError(f"{path}: /{group} lacks {', '.join(missing)}; present: {', '.join(grp.keys())}")
        shapes = {k: grp[k].shape for k in set(keys)}
        first = shapes[keys[0]]
        for key, shape in shapes.items():
            if len(shape) != 4 or shape != first:
                raise InputError(f"{path}: /{group}/{key} has shape {shape}, expected {first} (N, px, py, pz)")
        if first[0] < 1:
            raise InputError(f"{path}: /{group} holds no patches")
        check_input_contract(path, group, grp, first[0])
        attrs = dict(grp.attrs)
    return PatchGroup(path, group, int(first[0]), tuple(int(n) for n in first[1:]),
                      tuple(float(v) for v in attrs.get("voxel_size_mm", (1.0, 1.0, 1.0))),
                      tuple(float(v) for v in attrs.get("b0_dir", (0.0, 0.0, 1.0))),
                      _attr_float(attrs, "b0_tesla"), _attr_float(attrs, "te_s"), keys)


def check_input_contract(path: str, group: str, grp, count: int, samples: int = 4) -> None:
    """The network's input is field x mask in both domains (network_model/unet.py): check a few
    patches (first, last, evenly spaced) and refuse a file whose field is non-zero outside the mask."""
    for i in sorted(set(np.linspace(0, count - 1, min(samples, count)).astype(int).tolist())):
        field, mask = np.asarray(grp["field"][i]), np.asarray(grp["mask"][i])
        outside = np.abs(field[mask <= 0])
        if outside.size and float(outside.max()) > 0:
            raise InputError(f"{path}: /{group}/field patch {i} is non-zero outside the mask (max |field| "
                             f"{float(outside.max()):.3g} ppm there); expected field x mask: rewrite the file "
                             "with step 3 (genRDFPatchesSyn.py) of this version")


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


def write_patch_file(path, source: dict, target: dict, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                     b0_tesla: float | None = None, te_s: float | None = None) -> str:
    """Write a small contract-2 patch file (tests and benchmarks; step 3 writes the real ones).

    Args:
        source: {'field', 'mask', 'chi'} arrays (N, px, py, pz); target: {'field', 'mask', 'weight'}.
    """
    import h5py

    from training_data.volume_io import atomic_path

    first = np.asarray(source["field"])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for name, items in (("source", source), ("target", target)):
                grp = h5.create_group(name)
                inside = np.asarray(items["mask"]) > 0
                for key, arr in items.items():
                    arr = np.asarray(arr, np.float32)
                    if key != "mask":
                        arr = np.where(inside, arr, np.float32(0))  # the input contract (field x mask)
                    grp.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]), compression="lzf")
                grp.attrs["voxel_size_mm"] = np.asarray(voxel_size_mm, np.float64)
                grp.attrs["b0_dir"] = np.asarray(b0_dir, np.float64)
                grp.attrs["files"] = ["synthetic"]
            h5["target"].attrs["b0_tesla"] = np.nan if b0_tesla is None else float(b0_tesla)
            h5["target"].attrs["te_s"] = np.nan if te_s is None else float(te_s)
            h5.attrs["patch_size"] = np.asarray(first.shape[1:], np.int64)
            h5.attrs["stride"] = np.asarray(first.shape[1:], np.int64)
            h5.attrs["mode"] = "patches"
            h5.attrs["units"] = "ppm"
            h5.attrs["format_version"] = 2
            h5.attrs["input_contract"] = "field*mask"
    return str(path)
