"""Step 3 — training patches: synthetic maps + field maps (source) and target datasets -> one HDF5.

    python genRDFPatchesSyn.py --source SYNTH.h5 [--source-fields FIELDS.h5] \
        --target CASE [CASE ...] -o patches.h5 [--patch-size 64] [--stride 64] [--brain-threshold 0.2]
    python genRDFPatchesSyn.py --source SYNTH.h5 --target CASE --mode crop --patch-size 160 -o crops.h5
    python genRDFPatchesSyn.py --config c.json   (every option a key: source, target, output, patch_size, ...)

Target crops: by default one crop per target volume around its whole brain (bounding box plus
`--target-margin`, rounded up to a multiple of 16, one size for all targets), because the target
data-consistency loss needs the field's sources inside the crop; `--target-patch-size P` cuts
grid patches (and `--random-crops`) of size P instead, e.g. 128 (the original's crop) when memory
is short. Every field is written x mask (the network's input contract).

Inputs and their formats: daqsm/training_data/patch_inputs.py. Parameters (PatchConfig), patch grid, crop
mode and the cutting (cut_patches, write_patches): daqsm/training_data/patches.py; the HDF5 layout
(contract 2): daqsm/training_data/formats/patch_h5.py. This script parses, checks and calls them.
Stride defaults to the patch size (no overlap; the last patch of an axis is moved back flush with
the end): the augmented maps already vary enough, and a half-patch stride writes ~8x more data (a
500-map 64^3 run would be tens of GB).
"""
from __future__ import annotations

import argparse
import sys

from daqsm.config import ArgumentParser, add_config_options, require, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import claim_output
from daqsm.outputs import config_companion, refuse_existing
from daqsm.training_data.patch_inputs import SourceInputs, TargetInputs
from daqsm.training_data.patches import MODES, PatchCommandConfig, PatchConfig, cut_patches, write_patches  # noqa: F401
from daqsm.training_data.volume_io import HDF5_SUFFIXES, suffix_of

PROG = "genRDFPatchesSyn"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Step 3: cut training patches (or whole-volume crops) of synthetic maps with their "
        "field maps (source) and of target datasets into one HDF5 file (fields and chi in ppm).")
    parser.add_argument("--config", metavar="FILE", help="JSON/YAML file of parameters (every option below is a key)")
    add_config_options(parser, PatchCommandConfig)
    return parser


def main(argv=None) -> int:
    """Command body; exit status 2 on bad input, with nothing written."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = resolve_config(PatchCommandConfig, args.config, vars(args))
        require(config, ("source", "output"), spell=lambda k: "-o/--output" if k == "output" else "--source")
        if suffix_of(config.output) not in HDF5_SUFFIXES:
            raise InputError(f"-o {config.output}: expected an .h5/.hdf5 output file")
        config_out = config_companion(config.output, "patches", folder=False)
        refuse_existing("-o", [config.output, config_out], config.overwrite)
        output_path("-o", config.output)
        sources = SourceInputs(config.source, config.source_fields or None, config.source_masks or None,
                               config.field_units, config.b0_tesla, config.te_s, config.voxel_size_mm, config.b0_dir)
        targets = TargetInputs(config.target, config.target_field, config.target_mask, config.target_weight,
                               config.target_field_units, config.target_b0_tesla, config.target_te_s,
                               config.weight_echo)
        if not len(targets) and not config.quiet:
            print(f"{PROG}: warning: no target dataset given; /target will be empty", file=sys.stderr)
        with claim_output("-o", config.output, companions=[config_out]):
            stats = write_patches(config.output, sources, targets, config, config.quiet)
            write_config(config, config_out)
        if not config.quiet:
            print(f"{PROG}: wrote {stats['source']} source and {stats['target']} target patches to {config.output} "
                  f"in {stats['seconds']:.1f} s", file=sys.stderr)
        return 0

    return run_cli(body, PROG)


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
