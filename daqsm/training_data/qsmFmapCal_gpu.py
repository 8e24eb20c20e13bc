"""Step 2: field maps (ppm) of susceptibility maps (ppm) by FFT dipole convolution.

    python training_data/qsmFmapCal_gpu.py INPUT... -o OUTPUT [--mask M] [--voxel-size X Y Z]
        [--b0-dir X Y Z] [--pad none|fast|auto|N] [--demean] [--keep-background] [--overwrite]

INPUT: susceptibility maps (NIfTI, .mat v5/v7.3, .h5, .npy), folders of them, or the HDF5 output of
step 1 (dataset `/chi`, (N, x, y, z), optional `/mask`). OUTPUT: a .nii/.nii.gz file (one input),
a folder (one `<name>_field.nii.gz` per map, input affine kept) or a .h5 file (dataset `/field`,
(N, x, y, z) float32 ppm, attrs voxel_size_mm, b0_dir, files: daqsm/training_data/formats/field_h5.py).
Runs on the GPU when TensorFlow sees one, else on the CPU. Voxel size and B0 direction come from the file header (NIfTI affine,
HDF5 attrs) unless given; without either, 1 mm and B0 along the third axis.

Where a mask is known (a step-1 HDF5 carries one, or --mask) the field is set to 0 outside it: the
network's input is the local field x mask in both domains (daqsm/network_model/unet.py). The dipole field
a synthetic map makes outside its mask is real, but measured local fields are zero there, so
training on it would teach the network from signal it never sees. `--keep-background` keeps it.

The script parses and checks the options and calls daqsm/training_data/fieldmaps.py (the library:
FieldmapConfig, iter_chi_maps, FieldEngine / compute_field, StagedOutput, write_field_maps).
"""
from __future__ import annotations

import argparse
import sys

from daqsm.config import ArgumentParser, add_config_options, require, resolve_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import claim_output
from daqsm.training_data.dipole import fft_shape
from daqsm.training_data.fieldmaps import (  # noqa: F401 - ChiMap, compute_field, FieldmapConfig: names callers import
    ChiMap,
    FieldEngine,
    FieldmapConfig,
    StagedOutput,
    compute_field,
    example_maps,
    iter_chi_maps,
    output_kind,
    refuse_existing,
    write_field_maps,
)
from daqsm.training_data.geometry import check_voxel_size, normalise_b0_dir
from daqsm.training_data.volume_io import read_mask
from daqsm.validate import finite

PROG = "qsmFmapCal_gpu"


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
    require(args, ("output",))
    if not args.example:
        require(args, ("inputs",), spell=lambda _key: "INPUT", alternative="--example")
    if args.voxel_size_mm is not None:
        check_voxel_size(args.voxel_size_mm)
    fft_shape((8, 8, 8), args.pad)
    finite("--d0", args.d0)  # a NaN kernel value would write an all-NaN field map
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
        write_field_maps(args, maps, out_kind, shared_mask)
    print(f"{PROG}: wrote {len(maps)} field map(s) (ppm) to {args.output}", file=sys.stderr)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
