"""Step 2: field maps (ppm) of susceptibility maps (ppm) by FFT dipole convolution.

    python training_data/qsmFmapCal_gpu.py INPUT... -o OUTPUT [--mask M] [--voxel-size X Y Z]
        [--b0-dir X Y Z] [--pad none|fast|auto|N] [--demean] [--keep-background] [--overwrite]

INPUT: susceptibility maps (NIfTI, .mat v5/v7.3, .h5, .npy), folders of them, or the HDF5 output of
step 1 (dataset `/chi`, (N, x, y, z), optional `/mask`). OUTPUT: a .nii/.nii.gz file (one input),
a folder (one `<name>_field.nii.gz` per map, input affine kept) or a .h5 file (dataset `/field`,
(N, x, y, z) float32 ppm, attrs voxel_size_mm, b0_dir, files: training_data/formats/field_h5.py). Runs on the GPU when TensorFlow
sees one, else on the CPU. Voxel size and B0 direction come from the file header (NIfTI affine,
HDF5 attrs) unless given; without either, 1 mm and B0 along the third axis.

Where a mask is known (a step-1 HDF5 carries one, or --mask) the field is set to 0 outside it: the
network's input is the local field x mask in both domains (network_model/unet.py). The dipole field
a synthetic map makes outside its mask is real, but measured local fields are zero there, so
training on it would teach the network from signal it never sees. `--keep-background` keeps it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, config_path_beside, param, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import claim_output
from daqsm.validate import check_numbers, finite
from training_data.dipole import fft_shape
from training_data.formats.chi_h5 import is_chi_h5
from training_data.geometry import check_voxel_size, normalise_b0_dir
from training_data.volume_io import (
    ALL_SUFFIXES,
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    check_mask,
    read_mask,
    read_volume,
    split_variable,
    suffix_of,
    write_volume,
)

PROG = "qsmFmapCal_gpu"


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


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Units: chi in ppm in, local field in ppm of B0 out.")
    parser.add_argument("positional_inputs", nargs="*", metavar="INPUT",
                        help="susceptibility maps (ppm), folders or a step-1 HDF5 (= --inputs)")
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML file of the parameters below")
    add_config_options(parser, FieldmapConfig)
    return parser


def main(argv=None) -> int:
    from training_data.provenance import command

    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_inputs:
            values = {**values, "inputs": args.positional_inputs}
        cfg = resolve_config(FieldmapConfig, args.config, values)
        return _run(cfg)

    with command("daqsm-fieldmap", argv):
        return run_cli(body, PROG)


def _run(args: FieldmapConfig) -> int:
    # Validate the overrides before any work, so a bad option never leaves a partial output.
    if args.b0_dir is not None:
        normalise_b0_dir(args.b0_dir)
    if not args.output:
        raise InputError("-o/--output: expected an output .nii/.nii.gz, folder or .h5, got none")
    if args.voxel_size_mm is not None:
        check_voxel_size(args.voxel_size_mm)
    fft_shape((8, 8, 8), args.pad)
    finite("--d0", args.d0)  # a NaN kernel value would write an all-NaN field map
    check_numbers(args, {"voxel_size_mm": "positive", "b0_dir": "finite"},
                  spell=lambda k: "--" + k.replace("_", "-"))
    maps = list(_example_maps()) if args.example else list(iter_chi_maps(args.inputs, args.variable or None))
    if not maps:
        raise InputError("INPUT: expected at least one susceptibility map (or --example), got none")
    shared_mask = None
    if args.mask:
        shared_mask = read_mask(args.mask, like=maps[0].chi_ppm, like_name=f"input {maps[0].name}")
    if (args.demean or args.mask_output) and shared_mask is None and any(m.mask is None for m in maps):
        raise InputError("--demean/--mask-output: expected a mask (--mask M), found none")
    if args.mask_output and args.keep_background:
        raise InputError("--mask-output and --keep-background: expected one of them, got both")
    out_kind = _output_kind(args.output, len(maps))
    _refuse_existing(args.output, out_kind, maps, args.overwrite)
    output_path("-o", args.output, kind="folder" if out_kind == "folder" else "file")
    with claim_output("-o", args.output, kind="folder" if out_kind == "folder" else "file"):
        return _write(args, maps, out_kind, shared_mask)


def _write(args, maps, out_kind, shared_mask) -> int:

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
            out.add(item, field, vs, b0, _sidecar(item, vs, b0, args))
        out.add_config(args)
    print(f"{PROG}: wrote {len(maps)} field map(s) (ppm) to {args.output}", file=sys.stderr)
    return 0


def _sidecar(item: ChiMap, vs, b0, args) -> dict:
    """Provenance of one NIfTI field map (training_data/provenance.py); .h5 outputs carry attrs instead."""
    from training_data.provenance import build_record

    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "inputs"}
    return build_record(f"local field map of {item.name} by dipole convolution (step 2)", "ppm",
                        sources=[item.name], b0_dir=b0, voxel_size_mm=vs, dipole_pad=args.pad, d0=args.d0,
                        config=settings)


class FieldEngine:
    """TensorFlow dipole forward model, one operator per geometry (its kernel built once)."""

    def __init__(self, pad="auto", d0: float = 0.0):
        self.pad, self.d0, self._ops = pad, d0, {}

    def __call__(self, chi_ppm: np.ndarray, voxel_size_mm, b0_dir) -> np.ndarray:
        from training_data.dipole import dipole_operator_tf

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
        pad, d0: FFT padding and D(k=0) (training_data.dipole).
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
            # hidden files are skipped: a killed run's temps (.tmp-*) are no inputs
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
    from training_data.formats.chi_h5 import iter_chi_maps as iter_step1

    for i, data, mask, vs, b0 in iter_step1(path):
        vs, b0 = vs or (1.0, 1.0, 1.0), b0 or (0.0, 0.0, 1.0)
        mask = check_mask(mask, f"{path}:/mask[{i}]", data) if mask is not None else None
        yield ChiMap(f"{Path(path).stem}_{i:04d}", data, mask, np.diag(list(vs) + [1.0]), None, vs, b0)


def _example_maps():
    """Three spheres of +/-0.1-0.3 ppm in a 64^3, 1 mm grid: a built-in example input."""
    grid = np.indices((64, 64, 64), dtype=np.float32)
    chi = np.zeros((64, 64, 64), np.float32)
    for centre, radius, value in (((32, 32, 32), 10, 0.1), ((20, 40, 30), 5, 0.3), ((44, 24, 36), 6, -0.2)):
        chi[np.sum((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2, axis=0) <= radius**2] = value
    yield ChiMap("example_spheres", chi, None, np.eye(4), None, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))


def _output_kind(output: str, n_maps: int) -> str:
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


def _refuse_existing(output, kind, maps, overwrite):
    targets = [output] if kind != "folder" else [os.path.join(output, f"{m.name}_field.nii.gz") for m in maps]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise InputError(f"-o {existing[0]}: output exists; use --overwrite to replace it")


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
            from training_data.provenance import sidecar_path, write_sidecar

            final = self.output if self.kind == "file" else os.path.join(self.output, f"{item.name}_field.nii.gz")
            tmp = self._temp_for(final)
            write_volume(tmp, field, affine=item.affine, header=item.header, voxel_size_mm=vs)
            if sidecar is not None and suffix_of(final) in NIFTI_SUFFIXES:
                self.staged.append((write_sidecar(tmp, sidecar), sidecar_path(final)))
        self.names.append(item.name)

    def add_config(self, config) -> str:
        """Stage the resolved config beside the outputs (daqsm.config.config_path_beside)."""
        final = config_path_beside(self.output, "fieldmap", folder=self.kind == "folder")
        return write_config(config, self._temp_for(final))

    def _temp_for(self, final: str) -> str:
        """A unique temp name beside `final` (two runs never share one), named after the output."""
        import tempfile

        from daqsm.output_lock import temp_prefix
        from training_data.volume_io import suffix_of

        folder = os.path.dirname(os.path.abspath(final))
        # folder outputs: the temps sit inside the output folder, named after the output folder
        # (so that the next run's stale-temp clean-up finds them) plus the map's name
        prefix = temp_prefix(self.output) + (os.path.basename(final) + "-" if self.kind == "folder" else "")
        if self.kind == "folder":
            folder = os.path.dirname(os.path.abspath(self.output.rstrip(os.sep)))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix_of(final), dir=folder)
        os.close(fd)
        self.staged.append((tmp, final))
        return tmp

    def _add_h5(self, item, field, vs, b0):
        import h5py

        from training_data.formats.field_h5 import FieldH5Writer

        if self.h5 is None:
            tmp = self._temp_for(self.output)
            self.h5 = h5py.File(tmp, "w")
            self.writer = FieldH5Writer(self.h5, self.output)
        self.writer.add(field, vs, b0)

    def __exit__(self, exc_type, exc, tb):
        if self.h5 is not None:
            if exc_type is None:
                self.writer.finish(self.names)
            self.h5.close()
        for tmp, final in self.staged:
            if exc_type is None:
                os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
                os.replace(tmp, final)
            elif os.path.exists(tmp):
                os.remove(tmp)
        return False


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
