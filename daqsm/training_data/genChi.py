"""Step 1 — synthetic susceptibility maps (ppm) from one or more source maps (e.g. COSMOS) + masks.

    python training_data/genChi.py SOURCE [SOURCE ...] --mask MASK [MASK ...] -n N -o OUT [--seed S]
    python training_data/genChi.py --config c.json   (every option a key: source, mask, output, n_maps, ...)

Each sample is one source map (sample i uses source i mod the number of sources) put through the
augmentations of daqsm/training_data/augment.py: elastic deformation + small affine, a contrast change,
and (in a third of the samples) strong sources. Output (OUT ending in .h5/.hdf5): the step-1
HDF5 (/chi (N, x, y, z) ppm, /mask, /params, /source_index; daqsm/training_data/formats/chi_h5.py)
or, when OUT is a folder (ends with '/' or exists as one): OUT/chi_0000.nii.gz, OUT/mask_0000.nii.gz
(uint8), ..., OUT/params.json, with the source's affine. The resolved parameters go next to the
output (daqsm.outputs.config_companion: OUT.config.json, or OUT/genchi_config.json).

Sample i draws from a generator seeded by (seed, i) only; maps are written one at a time (memory: a few
volumes whatever N is), under a temporary name renamed at the end. This script parses, checks the output
and calls daqsm/training_data/synthesis.py (GenChiCommandConfig, load_sources, synthesize, the writers).
"""
from __future__ import annotations

import argparse
import os
import sys

from daqsm.config import ArgumentParser, add_config_options, require, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import check_owned_folder, claim_output
from daqsm.outputs import config_companion, refuse_existing
from daqsm.training_data.synthesis import (  # noqa: F401 - SourceMap, synthesize: names older code imports from here
    INPUT_KEYS,
    INPUT_SPELLING,
    NIFTI_PATTERNS,
    PROG,
    GenChiCommandConfig,
    GenChiConfig,
    SourceMap,
    load_sources,
    synthesize,
    write_maps_hdf5,
    write_maps_nifti,
)
from daqsm.training_data.volume_io import HDF5_SUFFIXES, suffix_of


def is_folder_output(out: str) -> bool:
    return out.endswith(("/", os.sep)) or os.path.isdir(out)


def check_output(out: str, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite; refuse unknown output formats."""
    if is_folder_output(out):
        check_owned_folder("-o", out, "daqsm-genchi")  # never a user's folder, even with --overwrite
        if os.path.isdir(out) and not overwrite and any(
                n.startswith(NIFTI_PATTERNS) for n in os.listdir(out)):
            raise InputError(f"{out}: output folder already holds maps; use --overwrite to replace them")
        return
    if suffix_of(out) not in HDF5_SUFFIXES:
        raise InputError(f"-o {out}: expected an .h5/.hdf5 file or a folder (ending with '/') for NIfTI")
    refuse_existing("-o", [out, config_companion(out, "genchi", folder=False)], overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Step 1: synthetic susceptibility maps (ppm) from source maps (e.g. COSMOS) "
        "by elastic deformation, contrast changes and added sources.")
    parser.add_argument("positional_source", nargs="*", metavar="SOURCE", help="source chi map(s) in ppm (= --source)")
    parser.add_argument("-n", dest="n_maps", default=None, help="number of maps (= --n-maps)")
    parser.add_argument("--config", metavar="FILE", help="JSON/YAML file of parameters (see the options below)")
    add_config_options(parser, GenChiCommandConfig)
    return parser


def main(argv=None) -> int:
    """Command body; returns the exit status (2 on bad input, nothing written)."""
    from daqsm.provenance import command

    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_source:
            values = {**values, "source": args.positional_source}
        config = resolve_config(GenChiCommandConfig, args.config, values)
        require(config, INPUT_KEYS, spell=INPUT_SPELLING.get)
        check_output(config.output, config.overwrite)
        folder = is_folder_output(config.output)
        output_path("-o", config.output, kind="folder" if folder else "file")
        sources = load_sources(config.source, config.mask, config.voxel_size_mm, config.b0_dir)
        config_out = config_companion(config.output, "genchi", folder)  # a folder's: staged with its maps
        with claim_output("-o", config.output, kind="folder" if folder else "file", command="daqsm-genchi",
                          companions=() if folder else [config_out]):
            if folder:
                out = write_maps_nifti(config.output, sources, config, config.overwrite, config.quiet)
            else:
                out = write_maps_hdf5(config.output, sources, config, config.quiet)
                write_config(config, config_out)
        if not config.quiet:
            print(f"{PROG}: wrote {config.n_maps} maps to {out}", file=sys.stderr)
        return 0

    with command("daqsm-genchi", argv):
        return run_cli(body, PROG)


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
