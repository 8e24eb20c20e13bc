"""Volume I/O: NIfTI, MATLAB .mat (v5 via scipy, v7.3 via h5py), HDF5 datasets and .npy.

One call, `read_volume`, returns the array with its voxel size (mm), affine and, where the file
says so, the B0 direction in voxel axes. `write_volume` writes atomically (temp file + rename) and
keeps an input's affine and header. `read_field` converts field maps to ppm (daqsm.training_data.units).

A variable of a .mat/.h5 file is chosen with `variable=` or the `FILE:VARIABLE` form of the path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from daqsm.errors import InputError, shape_mismatch
from daqsm.training_data.geometry import Geometry, b0_dir_from_affine, check_voxel_size, voxel_size_from_affine
from daqsm.training_data.units import to_ppm

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAT_SUFFIXES = (".mat",)
HDF5_SUFFIXES = (".h5", ".hdf5")
NPY_SUFFIXES = (".npy",)
ALL_SUFFIXES = NIFTI_SUFFIXES + MAT_SUFFIXES + HDF5_SUFFIXES + NPY_SUFFIXES


@dataclass
class Volume:
    """An array with where it came from and its geometry.

    Attributes:
        data: the array (float32 unless read with another dtype), axes (x, y, z[, ...]).
        affine: 4x4 voxel -> scanner mm (diagonal from the voxel size when the file has none).
        voxel_size_mm: voxel size in mm, or None when the file does not say.
        b0_dir: unit B0 direction in voxel axes, or None when the file does not say.
        header: NIfTI header to reuse on write, else None.
        path: the file read.
    """

    data: np.ndarray
    affine: np.ndarray
    voxel_size_mm: tuple | None = None
    b0_dir: tuple | None = None
    header: object = None
    path: str = ""
    attrs: dict = dc_field(default_factory=dict)

    def geometry(self, voxel_size_mm=None, b0_dir=None) -> Geometry:
        """Geometry with optional overrides; missing values default to 1 mm and B0 along z."""
        return Geometry(self.data.shape[:3], voxel_size_mm or self.voxel_size_mm or (1.0, 1.0, 1.0),
                        b0_dir if b0_dir is not None else (self.b0_dir or (0.0, 0.0, 1.0)))


def suffix_of(path) -> str:
    name = str(path).lower()
    for suffix in ALL_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def split_variable(path, variable=None) -> tuple[str, str | None]:
    """Split 'file.mat:var' into ('file.mat', 'var'); an explicit `variable` wins."""
    text = str(path)
    if variable is None and ":" in text:
        head, tail = text.rsplit(":", 1)
        if suffix_of(head) in MAT_SUFFIXES + HDF5_SUFFIXES and tail:
            return head, tail
    return text, variable


def read_volume(path, variable: str | None = None, ndim: int | tuple | None = 3,
                allow_nonfinite: bool = False, dtype=np.float32) -> Volume:
    """Read one volume.

    Args:
        path: .nii/.nii.gz/.mat/.h5/.hdf5/.npy file ('file.mat:var' selects a variable).
        variable: variable / dataset name for .mat and .h5 files holding several.
        ndim: required number of dimensions (int or tuple of allowed), None for any.
        allow_nonfinite: accept NaN/Inf (otherwise an InputError names the file).
        dtype: output dtype (None keeps the stored one).

    Returns:
        Volume.
    """
    path, variable = split_variable(path, variable)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: expected a file, found a folder")
    suffix = suffix_of(path)
    readers = {".nii": _read_nifti, ".nii.gz": _read_nifti, ".mat": _read_mat,
               ".h5": _read_hdf5, ".hdf5": _read_hdf5, ".npy": _read_npy}
    if suffix not in readers:
        raise InputError(f"{path}: unknown format {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")
    try:
        vol = readers[suffix](path, variable)
    except InputError:
        raise
    except Exception as err:  # corrupt or foreign file: one line, not a traceback
        raise InputError(f"{path}: cannot read as {suffix} ({type(err).__name__}: {err})".splitlines()[0]) from None
    vol.path = path
    _check_numeric(vol, path)
    if dtype is not None:
        if np.iscomplexobj(vol.data) and not np.issubdtype(np.dtype(dtype), np.complexfloating):
            raise InputError(f"{path}: expected real values, found complex data")
        vol.data = np.asarray(vol.data, dtype=dtype)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and vol.data.ndim not in allowed:
        want = " or ".join(f"{n}-D" for n in allowed)
        raise InputError(f"{path}: expected a {want} volume, found {vol.data.ndim}-D of shape {vol.data.shape}")
    if not allow_nonfinite and vol.data.dtype.kind in "fc" and not np.all(np.isfinite(vol.data)):
        bad = int(np.size(vol.data) - np.count_nonzero(np.isfinite(vol.data)))
        raise InputError(f"{path}: expected finite values, found {bad} NaN/Inf voxels")
    return vol


def _check_numeric(vol: Volume, path) -> None:
    """A MATLAB char/struct/cell/sparse variable or an HDF5 string dataset is not a volume: one line."""
    matlab_class = vol.attrs.get("matlab_class")
    if matlab_class in ("char", "cell", "struct", "function_handle") or vol.attrs.get("matlab_sparse"):
        found = "sparse" if vol.attrs.get("matlab_sparse") else matlab_class
        raise InputError(f"{path}: expected a numeric array, found a MATLAB {found} variable")
    dtype = getattr(vol.data, "dtype", np.dtype(object))  # an HDF5 scalar string reads as bytes/str
    if dtype.kind not in "biufc":
        found = {"U": "text", "S": "text (bytes)", "O": "objects (cell, struct, sparse or string)",
                 "V": "a struct"}.get(dtype.kind, f"dtype {dtype}")
        raise InputError(f"{path}: expected a numeric array, found {found}")


# voxel -> mm affines that agree within this (mm, or per unit of the 3x3 block) describe one grid
AFFINE_TOL = 1e-3


def check_same_grid(a: Volume, a_name: str, b: Volume, b_name: str) -> None:
    """Two volumes that must share a grid share their shape and, when both files have one, their affine.

    A mask stored with a flipped axis has the right shape and the wrong voxels: only the affine tells.
    """
    if a.data.shape[:3] != b.data.shape[:3]:
        raise shape_mismatch(a_name, a.data.shape[:3], b_name, b.data.shape[:3])
    if a.header is None or b.header is None:  # .npy/.mat/.h5 carry no scanner affine to compare
        return
    scale = max(1.0, float(np.abs(a.affine[:3, :3]).max()))
    if not np.allclose(a.affine, b.affine, atol=AFFINE_TOL * scale, rtol=0):
        diag = lambda m: np.round(np.diag(m)[:3], 3).tolist()  # noqa: E731
        raise InputError(f"grid mismatch: {a_name} and {b_name} have the same shape but different affines "
                         f"(diagonal {diag(a.affine)} vs {diag(b.affine)}, origin {np.round(a.affine[:3, 3], 2).tolist()} "
                         f"vs {np.round(b.affine[:3, 3], 2).tolist()}); resample one onto the other's grid")


def read_field(path, units: str = "ppm", b0_tesla=None, te_s=None, variable=None) -> Volume:
    """Read a 3-D local field map and convert it to ppm (units: ppm, ppb, hz or rad)."""
    vol = read_volume(path, variable)
    vol.data = to_ppm(vol.data, units, b0_tesla, te_s)
    return vol


def read_mask(path, like=None, like_name: str = "field", variable=None) -> np.ndarray:
    """Read a binary brain mask; checks it is 3-D, 0/1, not empty, and on the grid of `like` (a Volume
    compares affines too)."""
    vol = read_volume(path, variable, dtype=None)
    return check_mask(vol, str(path), like, like_name)


def check_mask(mask, name: str, like=None, like_name: str = "field") -> np.ndarray:
    """Validate a mask (array or Volume) and return it as bool; two Volumes must share their affine."""
    if isinstance(mask, Volume) and isinstance(like, Volume):
        check_same_grid(mask, f"mask {name}", like, like_name)
    mask = np.asarray(mask.data if isinstance(mask, Volume) else mask)
    like = like.data if isinstance(like, Volume) else like
    if like is not None and mask.shape != tuple(np.shape(like)[:3]):
        raise shape_mismatch(f"mask {name}", mask.shape, like_name, np.shape(like)[:3])
    values = np.unique(mask)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise InputError(f"mask {name}: expected binary values 0/1, found {shown}")
    if not np.any(mask):
        raise InputError(f"mask {name}: the mask is empty (no voxel is 1)")
    return mask.astype(bool)


def write_volume(path, data, affine=None, header=None, voxel_size_mm=None, variable: str = "data",
                 attrs: dict | None = None) -> str:
    """Write a volume atomically; returns the path.

    NIfTI keeps `affine` and `header` (data dtype updated); without an affine one is built from
    the voxel size. .mat writes v5 (scipy), .h5 a dataset `variable` with `attrs`, .npy the array.
    """
    path = str(path)
    data = np.asarray(data)
    suffix = suffix_of(path)
    if affine is None:
        affine = np.diag(list(check_voxel_size(voxel_size_mm or (1, 1, 1))) + [1.0])
    with atomic_path(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            hdr = header.copy() if header is not None else None
            img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=hdr)
            img.set_data_dtype(data.dtype)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, tmp)
        elif suffix in MAT_SUFFIXES:
            import scipy.io

            scipy.io.savemat(tmp, {variable: data}, do_compression=True)
        elif suffix in HDF5_SUFFIXES:
            import h5py

            with h5py.File(tmp, "w") as h5:
                dset = h5.create_dataset(variable, data=data, compression="gzip")
                from daqsm.outputs import storable_text

                for key, value in (attrs or {}).items():
                    dset.attrs[key] = storable_text(value)
        elif suffix in NPY_SUFFIXES:
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        else:
            raise InputError(f"{path}: unknown output format {suffix!r}; expected one of {', '.join(ALL_SUFFIXES)}")
    return path


def atomic_path(path):
    """The one atomic writer (daqsm/outputs.py): a temp beside `path`, renamed onto it on success."""
    from daqsm.outputs import atomic_path as contract_atomic_path

    return contract_atomic_path(path)


# --- readers -------------------------------------------------------------------------------


def _read_nifti(path, variable):
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, dtype=np.float64)
    check_orthogonal(affine, path)
    try:
        b0_dir = b0_dir_from_affine(affine)
    except InputError as err:  # a zero voxel axis: the line names the file, in every reader's caller
        raise InputError(f"{path}: {err}") from None
    return Volume(data, affine, voxel_size_from_affine(affine), b0_dir, img.header)


def check_orthogonal(affine, path) -> None:
    """QSM's dipole kernel assumes orthogonal voxel axes: a sheared affine is one clear error."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if not np.all(norms > 0):
        return  # b0_dir_from_affine names a zero axis
    unit = cols / norms
    cosines = np.abs(unit.T @ unit - np.eye(3))
    if cosines.max() > 1e-3:
        angle = float(np.degrees(np.arcsin(min(1.0, cosines.max()))))
        raise InputError(f"{path}: sheared affine (voxel axes {angle:.2g} degrees from orthogonal); the dipole "
                         "model needs orthogonal axes: resample to an orthogonal grid first")


def _read_npy(path, variable):
    data = np.load(path, allow_pickle=False)
    return Volume(data, np.eye(4))


def _pick(names, variable, path, kind):
    if variable is not None:
        if variable not in names:
            raise InputError(f"{path}: no {kind} {variable!r}; present: {', '.join(names) or 'none'}")
        return variable
    if len(names) != 1:
        listed = ", ".join(names) or "none"
        raise InputError(f"{path}: holds {len(names)} {kind}s ({listed}); name one as FILE{suffix_of(path)}:NAME")
    return names[0]


def _read_mat(path, variable):
    import h5py

    if h5py.is_hdf5(path):
        return _read_mat73(path, variable)
    import scipy.io

    contents = scipy.io.loadmat(path)
    names = [k for k in contents if not k.startswith("__")]
    name = _pick(names, variable, path, "variable")
    value = contents[name]
    import scipy.sparse

    if scipy.sparse.issparse(value):
        return Volume(np.zeros(0), np.eye(4), attrs={"variable": name, "matlab_sparse": True})
    return Volume(np.asarray(value), np.eye(4), attrs={"variable": name})


def _read_mat73(path, variable):
    """MATLAB v7.3 = HDF5 with reversed axes; complex is a compound (real, imag)."""
    import h5py

    with h5py.File(path, "r") as h5:
        datasets = [k for k in h5.keys() if not k.startswith("#") and isinstance(h5[k], h5py.Dataset)]
        groups = [k for k in h5.keys() if not k.startswith("#") and k not in datasets]
        # a struct/sparse (an HDF5 group) is chosen only when named or alone: then it is refused below
        name = _pick(datasets if datasets and variable is None else datasets + groups, variable, path, "variable")
        if not isinstance(h5[name], h5py.Dataset):  # struct or sparse: a group in v7.3
            sparse = "MATLAB_sparse" in h5[name].attrs
            cls = h5[name].attrs.get("MATLAB_class", b"struct")
            cls = cls.decode() if isinstance(cls, bytes) else str(cls)
            return Volume(np.zeros(0), np.eye(4), attrs={"variable": name, "matlab_class": cls,
                                                         "matlab_sparse": sparse})
        raw = h5[name][()]
        matlab_class = h5[name].attrs.get("MATLAB_class", b"double")
    if raw.dtype.names and {"real", "imag"} <= set(raw.dtype.names):
        raw = raw["real"] + 1j * raw["imag"]
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode()
    data = np.transpose(raw)  # h5py sees MATLAB's column-major array with its axes reversed
    if matlab_class == "logical":
        data = data.astype(bool)
    return Volume(np.ascontiguousarray(data), np.eye(4), attrs={"variable": name, "matlab_class": matlab_class})


def _read_hdf5(path, variable):
    import h5py

    with h5py.File(path, "r") as h5:
        names = []
        h5.visititems(lambda key, obj: names.append(key) if isinstance(obj, h5py.Dataset) else None)
        name = _pick(names, variable, path, "dataset")
        dset = h5[name]
        data = dset[()]
        attrs = {**dict(h5.attrs), **dict(dset.attrs)}
    vs = attrs.get("voxel_size_mm")
    b0 = attrs.get("b0_dir")
    affine = np.diag(list(vs) + [1.0]) if vs is not None else np.eye(4)
    return Volume(data, affine, tuple(map(float, vs)) if vs is not None else None,
                  tuple(map(float, b0)) if b0 is not None else None, attrs=attrs)
