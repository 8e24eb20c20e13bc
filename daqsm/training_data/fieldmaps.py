"""Step 2 as a library: field maps (ppm) of susceptibility maps (ppm) by FFT dipole convolution.

The command is training_data/qsmFmapCal_gpu.py (parse -> read maps -> compute_field -> write); this
module holds the maps to convert (ChiMap, iter_chi_maps: files, folders, step-1 HDF5), the
TensorFlow forward model (FieldEngine, compute_field: GPU when TensorFlow sees one) and the writer
(StagedOutput: NIfTI file, NIfTI folder or field-map HDF5 through daqsm/training_data/formats/field_h5.py,
all staged under temporary names and renamed only when every map succeeded).

Where a mask is known the field is set to 0 outside it: the network's input is the local field x
mask in both domains (daqsm/network_model/unet.py); `keep_background` keeps the field outside.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daqsm.config import param, write_config
from daqsm.errors import InputError
from daqsm.outputs import config_companion
from daqsm.training_data.formats.chi_h5 import is_chi_h5
from daqsm.training_data.volume_io import (
    ALL_SUFFIXES,
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    check_mask,
    read_volume,
    split_variable,
    suffix_of,
    write_volume,
)


@dataclass
class ChiMap:
    """One susceptibility map to convert, with where it came from."""

    name: str
    chi_ppm: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray
    header: object
    voxel_size_mm: tuple | None
    b0_dir: tuple | None


class FieldEngine:
    """TensorFlow dipole forward model, one operator per geometry (its kernel built once)."""

    def __init__(self, pad="auto", d0: float = 0.0):
        self.pad, self.d0, self._ops = pad, d0, {}

    def __call__(self, chi_ppm: np.ndarray, voxel_size_mm, b0_dir) -> np.ndarray:
        from daqsm.training_data.dipole import dipole_operator_tf

        key = (chi_ppm.shape, tuple(voxel_size_mm), tuple(b0_dir))
        if key not in self._ops:
            self._ops[key] = dipole_operator_tf(chi_ppm.shape, voxel_size_mm, b0_dir, self.pad, self.d0)
        return self._ops[key](chi_ppm.astype(np.float32)).numpy()


def compute_field(chi_ppm, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), mask=None, pad="auto",
                  d0: float = 0.0, demean: bool = False, keep_background: bool = False, engine=None) -> np.ndarray:
    """Step 2 on one map: the field of a susceptibility map by dipole convolution.

    Args:
        chi_ppm: float32 (x, y, z) susceptibility in ppm.
        voxel_size_mm: 3 floats; b0_dir: B0 direction in voxel axes.
        mask: optional (x, y, z) 0/1: the field is 0 outside it unless keep_background.
        pad, d0: FFT padding and D(k=0) (daqsm.training_data.dipole).
        demean: subtract the field's mean inside the mask.
        engine: a FieldEngine to reuse (its kernels are cached per geometry).

    Returns:
        float32 (x, y, z) field in ppm.
    """
    engine = engine or FieldEngine(pad, d0)
    mask = None if mask is None else np.asarray(mask) > 0
    field = engine(np.asarray(chi_ppm, np.float32), tuple(voxel_size_mm), tuple(b0_dir))
    if demean:
        field = field - np.float32(field[mask].mean())
    if mask is not None and not keep_background:
        field = field * mask
    return field.astype(np.float32)


def iter_chi_maps(inputs, variable=None):
    """Yield ChiMap items from files, folders and step-1 HDF5 files (4-D `/chi`)."""
    for entry in inputs:
        path = Path(split_variable(entry)[0])
        if path.is_dir():
            # hidden files are skipped: a killed run's temps (.NAME.tmp-*) are no inputs
            files = sorted(p for p in path.iterdir() if suffix_of(p) in ALL_SUFFIXES and not p.name.startswith("."))
            if not files:
                raise InputError(f"{path}: folder holds no volume files ({', '.join(ALL_SUFFIXES)})")
            for file in files:
                yield from iter_chi_maps([str(file)], variable)
        elif suffix_of(path) in HDF5_SUFFIXES and is_chi_h5(path) and variable is None:
            yield from _iter_step1_h5(path)
        else:
            vol = read_volume(entry, variable)
            name = Path(vol.path).name
            for suffix in ALL_SUFFIXES:
                name = name[: -len(suffix)] if name.endswith(suffix) else name
            yield ChiMap(name, vol.data, None, vol.affine, vol.header, vol.voxel_size_mm, vol.b0_dir)


def _iter_step1_h5(path):
    from daqsm.training_data.formats.chi_h5 import iter_chi_maps as iter_step1

    for i, data, mask, vs, b0 in iter_step1(path):
        vs, b0 = vs or (1.0, 1.0, 1.0), b0 or (0.0, 0.0, 1.0)
        mask = check_mask(mask, f"{path}:/mask[{i}]", data) if mask is not None else None
        yield ChiMap(f"{Path(path).stem}_{i:04d}", data, mask, np.diag(list(vs) + [1.0]), None, vs, b0)


def example_maps():
    """Three spheres of +/-0.1-0.3 ppm in a 64^3, 1 mm grid: a built-in example input."""
    grid = np.indices((64, 64, 64), dtype=np.float32)
    chi = np.zeros((64, 64, 64), np.float32)
    for centre, radius, value in (((32, 32, 32), 10, 0.1), ((20, 40, 30), 5, 0.3), ((44, 24, 36), 6, -0.2)):
        chi[np.sum((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2, axis=0) <= radius**2] = value
    yield ChiMap("example_spheres", chi, None, np.eye(4), None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))


def output_kind(output: str, n_maps: int) -> str:
    suffix = suffix_of(output)
    if suffix in HDF5_SUFFIXES:
        return "h5"
    if suffix in NIFTI_SUFFIXES:
        if n_maps != 1:
            raise InputError(f"-o {output}: a single NIfTI file holds one map, got {n_maps}; give a folder or a .h5 file")
        return "file"
    if suffix:
        raise InputError(f"-o {output}: expected .nii/.nii.gz, .h5 or a folder, got {suffix!r}")
    return "folder"


def refuse_existing(output, kind, maps, overwrite):
    targets = [output] if kind != "folder" else [os.path.join(output, f"{m.name}_field.nii.gz") for m in maps]
    from daqsm.outputs import refuse_existing as refuse  # the one message of the output contract

    refuse("-o", targets, overwrite)


class StagedOutput:
    """Writes outputs to temp files and renames them only when every map succeeded.

    A bad input half-way through a batch leaves nothing behind; .h5 output is streamed map by map
    (500 maps of 160^3 never sit in memory together).
    """

    def __init__(self, output: str, kind: str):
        self.output, self.kind, self.staged, self.h5, self.names = output, kind, [], None, []

    def __enter__(self):
        return self

    def add(self, item: ChiMap, field: np.ndarray, vs, b0, sidecar: dict | None = None) -> None:
        if self.kind == "h5":
            self._add_h5(item, field, vs, b0)
        else:
            from daqsm.provenance import sidecar_path, write_sidecar

            final = self.output if self.kind == "file" else os.path.join(self.output, f"{item.name}_field.nii.gz")
            tmp = self._temp_for(final)
            write_volume(tmp, field, affine=item.affine, header=item.header, voxel_size_mm=vs)
            if sidecar is not None and suffix_of(final) in NIFTI_SUFFIXES:
                self.staged.append((write_sidecar(tmp, sidecar), sidecar_path(final)))
        self.names.append(item.name)

    def add_config(self, config) -> str:
        """Stage the resolved config beside the outputs (daqsm.outputs.config_companion)."""
        final = config_companion(self.output, "fieldmap", folder=self.kind == "folder")
        return write_config(config, self._temp_for(final))

    def _temp_for(self, final: str) -> str:
        """A unique temp name beside `final` (two runs never share one), named after the output."""
        from daqsm.outputs import temp_path
        from daqsm.training_data.volume_io import suffix_of

        # folder outputs: the temps sit beside the output folder, named after it (daqsm/outputs.py),
        # so that the next run's stale-temp clean-up finds them
        owner = self.output if self.kind == "folder" else final
        os.makedirs(os.path.dirname(os.path.abspath(owner.rstrip(os.sep))), exist_ok=True)
        tmp = temp_path(owner, suffix=suffix_of(final))
        self.staged.append((tmp, final))
        return tmp

    def _add_h5(self, item, field, vs, b0):
        import h5py

        from daqsm.training_data.formats.field_h5 import FieldH5Writer

        if self.h5 is None:
            tmp = self._temp_for(self.output)
            self.h5 = h5py.File(tmp, "w")
            self.writer = FieldH5Writer(self.h5, self.output)
        self.writer.add(field, vs, b0)

    def __exit__(self, exc_type, exc, tb):
        if self.h5 is not None:
            try:
                if exc_type is None:
                    self.writer.finish(self.names)
            except BaseException:
                self.h5.close()
                self._discard()
                raise
            self.h5.close()
        for tmp, final in self.staged:
            if exc_type is None:
                os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
                os.replace(tmp, final)
            elif os.path.exists(tmp):
                os.remove(tmp)
        return False

    def _discard(self) -> None:
        for tmp, _ in self.staged:
            if os.path.exists(tmp):
                os.remove(tmp)

@dataclass(frozen=True)
class FieldmapConfig:
    """Step 2 parameters (config-file keys = field names; options daqsm.config)."""

    inputs: tuple = param((), "susceptibility maps (ppm), folders or a step-1 HDF5 (also given as INPUT...)", type=str)
    output: str = param("", "output .nii/.nii.gz (one input), folder, or .h5", flags=("-o",))
    mask: str = param("", "brain mask for --demean / --mask-output (step-1 HDF5 carries its own)")
    variable: str = param("", "variable name inside .mat/.h5 inputs")
    voxel_size_mm: tuple | None = param(None, "voxel size in mm (overrides the header)", type=float, nargs=3,
                                        aliases=("voxel_size",))
    b0_dir: tuple | None = param(None, "B0 direction in voxel axes (overrides the header)", type=float, nargs=3)
    pad: str = param("auto", "zero padding: none, fast, auto (quarter of each axis per side) or voxels per side")
    d0: float = param(0.0, "kernel value at k=0 (0 default; 1/3 as SEPIA)")
    demean: bool = param(False, "subtract the mean field inside the mask")
    mask_output: bool = param(False, "require a mask and set the field outside it to 0 (the default whenever a "
                              "mask is known)")
    keep_background: bool = param(False, "keep the field outside the mask (not the network's input contract)")
    example: bool = param(False, "use a built-in example (spheres phantom) as input")
    overwrite: bool = param(False, "replace existing outputs")


def write_field_maps(args: FieldmapConfig, maps, out_kind: str, shared_mask) -> None:
    """Compute and write the field map of each of `maps` into `args.output` (staged, renamed at the end)."""
    from tqdm import tqdm

    from daqsm.tf_env import device_name

    engine = FieldEngine(args.pad, args.d0)
    progress = tqdm(maps, desc=f"field maps ({device_name()})", unit="map", disable=len(maps) < 2, file=sys.stderr)
    with StagedOutput(args.output, out_kind) as out:
        for item in progress:
            vs = tuple(args.voxel_size_mm) if args.voxel_size_mm else (item.voxel_size_mm or (1.0, 1.0, 1.0))
            b0 = tuple(args.b0_dir) if args.b0_dir else (item.b0_dir or (0.0, 0.0, 1.0))
            mask = item.mask if item.mask is not None else shared_mask
            if mask is not None and mask.shape != item.chi_ppm.shape:
                raise InputError(f"shape mismatch: mask {mask.shape} vs input {item.name} {item.chi_ppm.shape}")
            field = compute_field(item.chi_ppm, vs, b0, mask, demean=args.demean,
                                  keep_background=args.keep_background, engine=engine)
            out.add(item, field, vs, b0, _sidecar_record(item, vs, b0, args))
        out.add_config(args)


def _sidecar_record(item: ChiMap, vs, b0, args) -> dict:
    """Provenance of one NIfTI field map (daqsm/provenance.py); .h5 outputs carry attrs instead."""
    from daqsm.provenance import build_record

    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "inputs"}
    return build_record(f"local field map of {item.name} by dipole convolution (step 2)", "ppm",
                        sources=[item.name], b0_dir=b0, voxel_size_mm=vs, dipole_pad=args.pad, d0=args.d0,
                        config=settings)
