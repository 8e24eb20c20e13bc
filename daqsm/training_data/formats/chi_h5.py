"""Step-1 HDF5: synthetic susceptibility maps, written by step 1 (genChi.py), read by steps 2 and 3.

    /chi           float32 (N, x, y, z)  susceptibility, ppm, 0 outside the mask; chunks (1, x, y, z)
    /mask          uint8   (N, x, y, z)  brain mask 0/1
    /params        str     (N,)          JSON of the values drawn for each sample
    /source_index  int32   (N,)          which source map each sample came from
    root attrs: units="ppm", format_version=1, voxel_size_mm (3), b0_dir (3), affine (4x4),
                source_files, mask_files (lists of str), seed, n_maps, config (JSON), step="genChi"
The field-map HDF5 of step 2 (daqsm/training_data/formats/field_h5.py) may share the file (/field).
"""
from __future__ import annotations

import json

import numpy as np

from daqsm.errors import InputError

FORMAT_VERSION = 1


class ChiH5Writer:
    """Write N maps one at a time into an open h5py.File (the caller handles the temp name)."""

    def __init__(self, h5, n_maps: int, shape, compression: str = "gzip", attrs: dict | None = None):
        import h5py

        comp = None if compression == "none" else compression
        opts = 1 if comp == "gzip" else None
        shape, chunks = tuple(shape), (1,) + tuple(shape)
        self.chi = h5.create_dataset("chi", (n_maps,) + shape, np.float32, chunks=chunks,
                                     compression=comp, compression_opts=opts)
        self.mask = h5.create_dataset("mask", (n_maps,) + shape, np.uint8, chunks=chunks,
                                      compression=comp, compression_opts=opts)
        self.params = h5.create_dataset("params", (n_maps,), h5py.string_dtype())
        self.source_index = h5.create_dataset("source_index", (n_maps,), np.int32)
        self.chi.attrs["units"] = "ppm"
        h5.attrs["units"] = "ppm"
        h5.attrs["format_version"] = FORMAT_VERSION
        from daqsm.outputs import storable_text

        for key, value in (attrs or {}).items():
            h5.attrs[key] = storable_text(value)

    def write(self, i: int, chi, mask, params: dict | None = None, source_index: int = 0) -> None:
        """Map i: chi float32 (x, y, z) ppm, mask (x, y, z) 0/1, the values drawn for it."""
        self.chi[i] = chi
        self.mask[i] = mask
        self.params[i] = json.dumps(params or {})
        self.source_index[i] = source_index


def write_chi_h5(path, chi, mask, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), params=None,
                 compression: str = "gzip") -> str:
    """Write in-memory maps atomically: chi float32 (N, x, y, z) ppm, mask (N, x, y, z) 0/1."""
    import h5py

    from daqsm.training_data.volume_io import atomic_path

    chi, mask = np.asarray(chi, np.float32), np.asarray(mask)
    attrs = {"voxel_size_mm": np.asarray(voxel_size_mm, np.float64), "b0_dir": np.asarray(b0_dir, np.float64),
             "affine": np.diag(list(map(float, voxel_size_mm)) + [1.0]), "n_maps": len(chi), "step": "genChi"}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = ChiH5Writer(h5, len(chi), chi.shape[1:], compression, attrs)
        for i in range(len(chi)):
            writer.write(i, chi[i], mask[i], (params or [{}] * len(chi))[i])
    return str(path)


def is_chi_h5(path) -> bool:
    """True for an HDF5 file with a 4-D /chi (a step-1 output)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return "chi" in h5 and h5["chi"].ndim == 4
    except OSError:
        return False


def _geometry(h5) -> tuple:
    chi = h5["chi"]
    vs = chi.attrs.get("voxel_size_mm", h5.attrs.get("voxel_size_mm"))
    b0 = chi.attrs.get("b0_dir", h5.attrs.get("b0_dir"))
    return (tuple(map(float, vs)) if vs is not None else None, tuple(map(float, b0)) if b0 is not None else None)


def read_chi_map(path, i: int):
    """Map i of a step-1 file: (chi float32 (x, y, z) ppm, mask uint8 or None, voxel_size_mm, b0_dir).

    Voxel size and B0 direction are None when the file does not say.
    """
    import h5py

    with h5py.File(path, "r") as h5:
        chi = np.asarray(h5["chi"][i], dtype=np.float32)
        mask = np.asarray(h5["mask"][i]) if "mask" in h5 else None
        vs, b0 = _geometry(h5)
    return chi, mask, vs, b0


def iter_chi_maps(path):
    """Yield (i, chi, mask or None, voxel_size_mm, b0_dir) for every map, one at a time (finite checked)."""
    import h5py

    with h5py.File(path, "r") as h5:
        chi, masks = h5["chi"], h5.get("mask")
        vs, b0 = _geometry(h5)
        for i in range(chi.shape[0]):
            data = np.asarray(chi[i], dtype=np.float32)
            if not np.all(np.isfinite(data)):
                raise InputError(f"{path}: expected finite values, found NaN/Inf in /chi[{i}]")
            yield i, data, (np.asarray(masks[i]) if masks is not None else None), vs, b0
