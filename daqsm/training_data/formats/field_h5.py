"""Field-map HDF5: written by step 2 (qsmFmapCal_gpu.py), read by step 3 (--source-fields).

    /field   float32 (N, x, y, z)  field in ppm (attr units; another unit is converted on read)
    root attrs: voxel_size_mm (3), b0_dir (3), units="ppm", files (names of the N input maps)
It may sit in the step-1 file itself (daqsm/training_data/formats/chi_h5.py), as step 2 can append to it.
"""
from __future__ import annotations

import numpy as np

from daqsm.errors import InputError


class FieldH5Writer:
    """Stream field maps (one per `add`) into an open h5py.File; `finish` records their names."""

    def __init__(self, h5, output_name: str = "output"):
        self.h5, self.output_name, self.dset = h5, output_name, None

    def add(self, field, voxel_size_mm, b0_dir) -> None:
        """field float32 (x, y, z) ppm; every map of a file has the same shape."""
        if self.dset is None:
            self.dset = self.h5.create_dataset("field", shape=(0,) + field.shape, maxshape=(None,) + field.shape,
                                               dtype="f4", chunks=(1,) + field.shape, compression="lzf")
            for key, value in {"voxel_size_mm": voxel_size_mm, "b0_dir": b0_dir, "units": "ppm"}.items():
                self.h5.attrs[key] = value
        if field.shape != self.dset.shape[1:]:
            raise InputError(f"-o {self.output_name}: maps of different shapes {self.dset.shape[1:]} and "
                             f"{field.shape} cannot share one /field dataset; give a folder")
        n = self.dset.shape[0]
        self.dset.resize(n + 1, axis=0)
        self.dset[n] = field

    def finish(self, names) -> None:
        from daqsm.outputs import storable_text

        self.h5.attrs["files"] = storable_text(list(names))


def write_field_h5(path, fields, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), names=None) -> str:
    """Write in-memory field maps float32 (N, x, y, z) ppm atomically."""
    import h5py

    from daqsm.training_data.volume_io import atomic_path

    fields = np.asarray(fields, np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = FieldH5Writer(h5, str(path))
        for field in fields:
            writer.add(field, tuple(voxel_size_mm), tuple(b0_dir))
        writer.finish(names or [f"map_{i:04d}" for i in range(len(fields))])
    return str(path)


def read_field_map(path, i: int, b0_tesla=None, te_s=None) -> np.ndarray:
    """Map i of /field as float32 (x, y, z) ppm (converted from the file's `units` attr)."""
    import h5py

    from daqsm.training_data.units import to_ppm

    with h5py.File(path, "r") as h5:
        dset = h5["field"]
        data = np.asarray(dset[i], dtype=np.float32)
        units = dset.attrs.get("units", h5.attrs.get("field_units", "ppm"))
    units = units.decode() if isinstance(units, bytes) else str(units)
    return to_ppm(data, units, b0_tesla, te_s)
