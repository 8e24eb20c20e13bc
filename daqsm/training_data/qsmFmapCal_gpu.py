"""Step 2: field maps (ppm) of susceptibility maps (ppm) by FFT dipole convolution.

    python training_data/qsmFmapCal_gpu.py INPUT... -o OUTPUT [--mask M] [--voxel-size X Y Z]
        [--b0-dir X Y Z] [--pad none|fast|auto|N] [--demean] [--keep-background] [--overwrite]

INPUT: susceptibility maps (NIfTI, .mat v5/v7.3, .h5, .npy), folders of them, or the HDF5 output of
step 1 (dataset `/chi`, (N, x, y, z), optional `/mask`). OUTPUT: a .nii/.nii.gz file (one input),
a folder (one `<name>_field.nii.gz` per map, input affine kept) or a .h5 file (dataset `/field`,
(N, x, y, z) float32 ppm, attrs voxel_size_mm, b0_dir, files: daqsm/training_data/formats/field_h5.py). Runs on the GPU when TensorFlow
sees one, else on the CPU. Voxel size and B0 direction come from the file header (NIfTI affine,
HDF5 attrs) unless given; without either, 1 mm and B0 along the third axis.

Where a mask is known (a step-1 HDF5 carries one, or --mask) the field is set to 0 outside it: the
network's input is the local field x mask in both domains (daqsm/network_model/unet.py). The dipole field
a synthetic map makes outside its mask is real, but measured local fields are zero there, so
training on it would teach the network from signal it never sees. `--keep-background` keeps it.

The script parses and checks the options and calls daqsm/training_data/fieldmaps.py (the library:
iter_chi_maps, FieldEngine / compute_field, StagedOutput).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import claim_output
from daqsm.validate import check_numbers, finite
from daqsm.training_data.dipole import fft_shape
from daqsm.training_data.fieldmaps import (  # noqa: F401 - ChiMap, compute_field: names older code imports from here
    ChiMap,
    FieldEngine,
    StagedOutput,
    compute_field,
    example_maps,
    iter_chi_maps,
    output_kind,
    refuse_existing,
)
from daqsm.training_data.geometry import check_voxel_size, normalise_b0_dir
from daqsm.training_data.volume_io import read_mask

PROG = "qsmFmapCal_gpu"


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
    from daqsm.provenance import command

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
    maps = list(example_maps()) if args.example else list(iter_chi_maps(args.inputs, args.variable or None))
    if not maps:
        raise InputError("INPUT: expected at least one susceptibility map (or --example), got none")
    shared_mask = None
    if args.mask:
        shared_mask = read_mask(args.mask, like=maps[0].chi_ppm, like_name=f"input {maps[0].name}")
    if (args.demean or args.mask_output) and shared_mask is None and any(m.mask is None for m in maps):
        raise InputError("--demean/--mask-output: expected a mask (--mask M), found none")
    if args.mask_output and args.keep_background:
        raise InputError("--mask-output and --keep-background: expected one of them, got both")
    out_kind = output_kind(args.output, len(maps))
    refuse_existing(args.output, out_kind, maps, args.overwrite)
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
    """Provenance of one NIfTI field map (daqsm/provenance.py); .h5 outputs carry attrs instead."""
    from daqsm.provenance import build_record

    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "inputs"}
    return build_record(f"local field map of {item.name} by dipole convolution (step 2)", "ppm",
                        sources=[item.name], b0_dir=b0, voxel_size_mm=vs, dipole_pad=args.pad, d0=args.d0,
                        config=settings)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
