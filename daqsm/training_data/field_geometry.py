"""Where a field's geometry comes from: its own file, a NIfTI companion, the user, or a default.

A MATLAB .mat or .npy field (and an HDF5 field without `voxel_size_mm` attributes) carries no
affine. Taking it as 1 mm silently would put the QSM on an identity affine that does not overlay on
the subject's anatomy, and would bias the dipole model of anisotropic voxels. The rule, in order:

    voxel size:  --voxel-size  >  the field file  >  a NIfTI mask / magnitude on the same grid  >  1 mm
    B0 direction: --b0-dir     >  the field file  >  that NIfTI companion's affine             >  third axis
    affine/header of outputs:      the field file  >  that NIfTI companion  >  diag(voxel size)

Each value records where it came from (`sources`), `daqsm-check` prints them, and
`assumption_line` is the one line the commands print when a default was used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from daqsm.training_data.geometry import Geometry, b0_dir_from_affine, voxel_size_from_affine

DEFAULT_VOXEL_MM = (1.0, 1.0, 1.0)
DEFAULT_B0_DIR = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class FieldGeometry:
    """A field's geometry and its origin.

    Attributes:
        geometry: shape, voxel size (mm), B0 direction (voxel axes) to compute with.
        affine: 4x4 voxel -> scanner mm for the outputs.
        header: NIfTI header to reuse on write (the field's or the companion's), or None.
        sources: {"voxel_size_mm": ..., "b0_dir": ..., "affine": ...} -> "file PATH", "option
            --voxel-size", "mask PATH" / "magnitude PATH" or "default".
    """

    geometry: Geometry
    affine: np.ndarray
    header: object = None
    sources: dict = field(default_factory=dict)

    @property
    def assumed(self) -> list:
        """Names of the values that fell back to a default."""
        return [key for key in ("voxel_size_mm", "b0_dir") if self.sources.get(key) == "default"]

    def record(self) -> dict:
        """JSON-ready summary for a sidecar."""
        return {"voxel_size_mm": list(self.geometry.voxel_size_mm), "b0_dir": list(self.geometry.b0_dir),
                "sources": dict(self.sources)}


def _nifti_companion(path, shape):
    """(affine, header) of a NIfTI file on `shape`'s grid, else None (header read only)."""
    if not path:
        return None
    path = str(path)
    if not path.lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
        return None
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception:  # an unreadable companion is reported by its own reader
        return None
    if tuple(img.shape[:3]) != tuple(shape[:3]):
        return None
    return np.asarray(img.affine, dtype=np.float64), img.header


def resolve_field_geometry(field_vol, companions=(), voxel_size_mm=None, b0_dir=None) -> FieldGeometry:
    """The geometry of a field Volume (module doc for the order).

    Args:
        field_vol: daqsm.training_data.volume_io.Volume of the field.
        companions: (label, path) pairs, e.g. [("mask", "mask.nii.gz"), ("magnitude", "mag.nii.gz")];
            the first NIfTI on the field's grid lends its affine when the field has none.
        voxel_size_mm, b0_dir: user overrides (mm; voxel axes), or None.
    """
    shape = field_vol.data.shape[:3]
    own = field_vol.voxel_size_mm is not None
    where = f"file {field_vol.path}" if field_vol.path else "file"
    affine, header, vs, b0 = field_vol.affine, field_vol.header, field_vol.voxel_size_mm, field_vol.b0_dir
    sources = {"voxel_size_mm": where if own else "default", "b0_dir": where if b0 is not None else "default",
               "affine": where if header is not None else ("default" if not own else where)}
    if not own:
        for label, path in companions:
            found = _nifti_companion(path, shape)
            if found is None:
                continue
            affine, header = found
            vs = voxel_size_from_affine(affine)
            b0 = b0 if b0 is not None else b0_dir_from_affine(affine)
            origin = f"{label} {path}"
            sources["voxel_size_mm"] = sources["affine"] = origin
            if sources["b0_dir"] == "default":
                sources["b0_dir"] = origin
            break
    if voxel_size_mm is not None:
        vs = tuple(float(v) for v in voxel_size_mm)
        sources["voxel_size_mm"] = "option --voxel-size"
    if b0_dir is not None:
        b0 = tuple(float(v) for v in b0_dir)
        sources["b0_dir"] = "option --b0-dir"
    vs = vs or DEFAULT_VOXEL_MM
    b0 = b0 if b0 is not None else DEFAULT_B0_DIR
    if sources["affine"] == "default":  # no file geometry anywhere: the outputs get the voxel size at least
        affine = np.diag(list(map(float, vs)) + [1.0])
        if voxel_size_mm is not None:
            sources["affine"] = "option --voxel-size"
    return FieldGeometry(Geometry(shape, vs, b0), np.asarray(affine, dtype=np.float64), header, sources)


def assumption_line(geom: FieldGeometry, field_name: str) -> str | None:
    """One line when a default was used, else None."""
    assumed = geom.assumed
    if not assumed:
        return None
    what = {"voxel_size_mm": "1 mm isotropic voxels", "b0_dir": "B0 along the third voxel axis (z)"}
    return (f"{field_name} carries no geometry: {' and '.join(what[k] for k in assumed)} assumed "
            "(give a NIfTI mask or magnitude on the same grid, or --voxel-size X Y Z / --b0-dir X Y Z)")
