"""Step 1 — synthetic susceptibility maps (ppm) from one or more source maps (e.g. COSMOS) + masks.

    python training_data/genChi.py SOURCE [SOURCE ...] --mask MASK [MASK ...] -n N -o OUT [--seed S]

Each sample is one source map (sample i uses source i mod the number of sources) put through the
augmentations of daqsm/training_data/augment.py: elastic deformation + small affine, a contrast change,
and (in a third of the samples) strong sources. Output (OUT ending in .h5/.hdf5): the step-1
HDF5 (/chi (N, x, y, z) ppm, /mask, /params, /source_index; daqsm/training_data/formats/chi_h5.py)
or, when OUT is a folder (ends with '/' or exists as one): OUT/chi_0000.nii.gz, OUT/mask_0000.nii.gz
(uint8), ..., OUT/params.json, with the source's affine. The resolved parameters go next to the
output (OUT.config.json, or OUT/genchi_config.json).

Sample i draws from a generator seeded by (seed, i) only, so a map does not depend on N, on the
chunking or on other samples. Maps are written one at a time (chunked): memory stays at a few
volumes whatever N is; the file is written under a temporary name and renamed at the end.

The script parses, checks the output and calls daqsm/training_data/synthesis.py (the library: GenChiConfig,
load_sources, synthesize, the two writers).
"""
from __future__ import annotations

import argparse
import os
import sys

from daqsm.config import (
    ArgumentParser,
    add_config_options,
    config_path_beside,
    option_name,
    resolve_config,
    write_config,
)
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import check_owned_folder, claim_output
from daqsm.outputs import refuse_existing
from daqsm.validate import check_numbers
from daqsm.training_data.synthesis import (  # noqa: F401 - SourceMap, synthesize: names older code imports from here
    NIFTI_PATTERNS,
    PROG,
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
    refuse_existing("-o", [out, config_path_for(out)], overwrite)


def config_path_for(out: str) -> str:
    """OUT.config.json beside an HDF5 file; OUT/genchi_config.json in a NIfTI folder."""
    return config_path_beside(out, "genchi", folder=is_folder_output(out))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Step 1: synthetic susceptibility maps (ppm) from source maps (e.g. COSMOS) "
        "by elastic deformation, contrast changes and added sources.")
    parser.add_argument("source_paths", nargs="+", metavar="SOURCE",
                        help="source chi map(s) in ppm: NIfTI, .mat (FILE.mat:VAR) or .h5 (FILE.h5:DATASET)")
    parser.add_argument("--mask", nargs="+", required=True, metavar="MASK",
                        help="brain mask(s) 0/1 on the source grid: one for all sources or one per source")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output .h5/.hdf5 file, or a folder (ending with '/') for NIfTI files")
    parser.add_argument("-n", dest="n_maps", type=int, default=None, help="number of maps (= --n-maps)")
    parser.add_argument("--config", metavar="FILE", help="JSON/YAML file of parameters (see the options below)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(parser, GenChiConfig)
    return parser


def main(argv=None) -> int:
    """Command body; returns the exit status (2 on bad input, nothing written)."""
    from daqsm.training_data.provenance import command

    args = build_parser().parse_args(argv)

    def body() -> int:
        config = resolve_config(GenChiConfig, args.config, vars(args))
        check_numbers(config, {"voxel_size_mm": "positive", "b0_dir": "finite"}, spell=option_name)
        check_output(args.output, args.overwrite)
        folder = is_folder_output(args.output)
        output_path("-o", args.output, kind="folder" if folder else "file")
        sources = load_sources(args.source_paths, args.mask, config.voxel_size_mm, config.b0_dir)
        with claim_output("-o", args.output, kind="folder" if folder else "file", command="daqsm-genchi",
                          companions=() if folder else [config_path_for(args.output)]):
            if folder:
                out = write_maps_nifti(args.output, sources, config, args.overwrite, args.quiet)
            else:
                out = write_maps_hdf5(args.output, sources, config, args.quiet)
                write_config(config, config_path_for(args.output))
        if not args.quiet:
            print(f"{PROG}: wrote {config.n_maps} maps to {out}", file=sys.stderr)
        return 0

    with command("daqsm-genchi", argv):
        return run_cli(body, PROG)


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
