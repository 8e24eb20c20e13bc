"""Step 3 — training patches: synthetic maps + field maps (source) and target datasets -> one HDF5.

    python genRDFPatchesSyn.py --source SYNTH.h5 [--source-fields FIELDS.h5] \
        --target CASE [CASE ...] -o patches.h5 [--patch-size 64] [--stride 64] [--brain-threshold 0.2]
    python genRDFPatchesSyn.py --source SYNTH.h5 --target CASE --mode crop --patch-size 160 -o crops.h5

Target crops: by default one crop per target volume around its whole brain (bounding box plus
`--target-margin`, rounded up to a multiple of 16, one size for all targets), because the target
data-consistency loss needs the field's sources inside the crop; `--target-patch-size P` cuts
grid patches (and `--random-crops`) of size P instead, e.g. 128 (the original's crop) when memory
is short. Every field is written x mask (the network's input contract).

Inputs and their formats: training_data/patch_inputs.py. Patch grid, crop mode and the HDF5 layout
(contract 2): training_data/patches.py. Stride defaults to the patch size (no overlap; the last
patch of an axis is moved back flush with the end): the augmented maps already vary enough, and a
half-patch stride writes ~8x more data (a 500-map 64^3 run would be tens of GB).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, config_to_dict, option_name, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import claim_output
from daqsm.validate import check_numbers
from training_data.geometry import int_triple
from training_data.patch_inputs import SourceInputs, TargetInputs
from training_data.patches import PatchFileWriter, bbox_crop_origin, bbox_crop_size, select_origins
from training_data.units import FIELD_UNITS
from training_data.volume_io import HDF5_SUFFIXES, atomic_path, suffix_of

PROG = "genRDFPatchesSyn"
MODES = ("patches", "crop")


@dataclass(frozen=True)
class PatchConfig:
    """Step 3 parameters (config file keys = option names with '_')."""

    patch_size: tuple = field(default=(64, 64, 64), metadata={
        "type": int, "help": "patch (or crop) size, voxels: 1 or 3 numbers"})
    stride: tuple | None = field(default=None, metadata={
        "type": int, "nargs": "+", "help": "grid step, voxels: 1 or 3 numbers; default the patch size"})
    mode: str = field(default="patches", metadata={"choices": MODES,
                                                   "help": "grid patches, or one crop per volume around the mask"})
    target_patch_size: tuple | None = field(default=None, metadata={
        "type": int, "nargs": "+",
        "help": "target patch size, voxels (1 or 3 numbers); default: one whole-brain crop per target"})
    target_margin: int = field(default=8, metadata={"help": "voxels around the brain in whole-brain target crops"})
    brain_threshold: float = field(default=0.2, metadata={"help": "keep patches with this brain fraction or more"})
    grid: bool = field(default=True, metadata={"help": "cut the grid patches (patches mode)"})
    random_crops: int = field(default=0, metadata={"help": "extra randomly placed patches per volume"})
    seed: int = field(default=0, metadata={"help": "seed of the random crops"})
    compression: str = field(default="lzf", metadata={"choices": ("lzf", "gzip", "none"),
                                                      "help": "HDF5 compression of the patches"})
    field_units: str = field(default="ppm", metadata={"choices": FIELD_UNITS,
                                                      "help": "units of NIfTI/MAT source field files"})
    b0_tesla: float | None = field(default=None, metadata={"type": float, "help": "B0 in tesla for hz/rad fields",
                                                           "aliases": ("b0",)})
    te_s: float | None = field(default=None, metadata={"type": float, "help": "TE in seconds for rad fields",
                                                       "aliases": ("te",)})
    target_field_units: str = field(default="ppm", metadata={"choices": FIELD_UNITS,
                                                             "help": "units of --target-field files"})
    target_b0_tesla: float | None = field(default=None, metadata={"type": float, "help": "B0 of --target-field files"})
    target_te_s: float | None = field(default=None, metadata={"type": float,
                                                              "help": "TE of --target-field files (and of the weight)"})
    weight_echo: int = field(default=2, metadata={"help": "echo (1-based) of a 4-D magnitude used as weight"})
    voxel_size_mm: tuple | None = field(default=None, metadata={"type": float, "nargs": 3,
                                                                "help": "override the source voxel size, mm"})
    b0_dir: tuple | None = field(default=None, metadata={"type": float, "nargs": 3,
                                                         "help": "override the source B0 direction"})

    def __post_init__(self):
        size = int_triple(self.patch_size, "--patch-size")
        object.__setattr__(self, "patch_size", size)
        stride = size if self.stride is None else int_triple(self.stride, "--stride")
        object.__setattr__(self, "stride", stride)
        if min(size) <= 0:
            raise InputError(f"--patch-size: expected positive sizes, got {size}")
        if min(stride) <= 0:
            raise InputError(f"--stride: expected positive steps, got {stride}")
        if self.target_patch_size is not None:
            target = int_triple(self.target_patch_size, "--target-patch-size")
            if min(target) <= 0:
                raise InputError(f"--target-patch-size: expected positive sizes, got {target}")
            object.__setattr__(self, "target_patch_size", target)
        if self.target_margin < 0:
            raise InputError(f"--target-margin: expected >= 0 voxels, got {self.target_margin}")
        if not 0.0 <= self.brain_threshold <= 1.0:
            raise InputError(f"--brain-threshold: expected a fraction in [0, 1], got {self.brain_threshold}")
        if self.random_crops < 0:
            raise InputError(f"--random-crops: expected >= 0, got {self.random_crops}")
        if self.weight_echo < 1:
            raise InputError(f"--weight-echo: expected an echo number >= 1, got {self.weight_echo}")
        if self.mode == "patches" and not self.grid and not self.random_crops:
            raise InputError("--no-grid needs --random-crops > 0 (no patch would be cut)")


def _same(a, b, tol=1e-3) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b, atol=tol))


def write_patches(out, sources: SourceInputs, targets: TargetInputs, config: PatchConfig, quiet: bool = False) -> dict:
    """Cut and write all patches to `out` (temp file + rename). Returns counts and timing."""
    import h5py

    t0 = time.perf_counter()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        counts = cut_patches(h5, sources, targets, config, quiet)
    return {**counts, "seconds": time.perf_counter() - t0}


def cut_patches(h5, sources, targets, config: PatchConfig, quiet: bool = True) -> dict:
    """Cut the patches of every source and target volume into an open h5py.File (contract 2).

    Args:
        h5: an h5py.File open for writing (a file on disk, or in memory with driver="core").
        sources, targets: objects with len() and load(k) -> PatchVolume (patch_inputs.SourceInputs,
            TargetInputs or ArrayInputs) and `files` (names recorded in the group attrs).
        config: PatchConfig.

    Returns:
        {'source': N, 'target': M} patch counts.
    """
    from tqdm import tqdm

    crop = config.mode == "crop"
    stride = (-1, -1, -1) if crop else config.stride
    extra = {"brain_threshold": float(config.brain_threshold), "seed": int(config.seed),
             "config": json.dumps(config_to_dict(config)), "step": PROG}
    counts = {}
    target_bbox = config.target_patch_size is None
    target_size = config.target_patch_size
    if target_bbox and len(targets):
        target_size = bbox_crop_size((targets.load(k).mask for k in range(len(targets))), config.target_margin)
    writer = PatchFileWriter(h5, config.patch_size, stride, config.mode, config.compression, extra,
                             target_patch_size=target_size, target_mode="bbox" if target_bbox else "patches")
    for group_id, (group, inputs) in enumerate((("source", sources), ("target", targets))):
        first = None
        third = "chi" if group == "source" else "weight"
        bar = tqdm(range(len(inputs)), desc=f"{PROG} {group}", unit="vol", disable=quiet, file=sys.stderr)
        for k in bar:
            vol = inputs.load(k)
            if first is None:
                first = vol
            for attr, name in (("voxel_size_mm", "voxel size"), ("b0_dir", "B0 direction"),
                               ("b0_tesla", "B0"), ("te_s", "TE")):
                if not _same(getattr(vol, attr), getattr(first, attr)):
                    raise InputError(f"{group} {vol.label}: {name} {getattr(vol, attr)} differs from "
                                     f"{first.label} {getattr(first, attr)}; write separate patch files")
            size = writer.sizes[group]
            if crop or (group == "target" and target_bbox):
                origins = bbox_crop_origin(vol.mask, size)[None]
            else:
                stride_g = config.stride if group == "source" else size
                rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(group_id, k)))
                origins = select_origins(vol.mask, size, stride_g, config.brain_threshold,
                                         config.random_crops, rng, config.grid)
            writer.append(group, k, origins, field=vol.field_ppm, mask=vol.mask, **{third: vol.third})
        counts[group] = writer.count(group)
        if counts[group] == 0 and len(inputs) and not quiet:
            print(f"{PROG}: warning: --{group}: no patch cut from {len(inputs)} volume(s)", file=sys.stderr)
        vs = first.voxel_size_mm if first else None
        b0 = first.b0_dir if first else None
        writer.set_group_attrs(group, vs, b0, inputs.files, getattr(first, "b0_tesla", None),
                               getattr(first, "te_s", None))
    if not sum(counts.values()):  # an empty patch file would only fail later, in step 4
        raise InputError(f"--source/--target: expected at least one patch, cut none (brains smaller than "
                         f"the patch size or --brain-threshold {config.brain_threshold:g} too high?)")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Step 3: cut training patches (or whole-volume crops) of synthetic maps with their "
        "field maps (source) and of target datasets into one HDF5 file (fields and chi in ppm).")
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--source", nargs="+", required=True, metavar="PATH",
                    help="genChi output (.h5 with /chi,/mask[,/field], or its NIfTI folder), or chi files")
    io.add_argument("--source-fields", nargs="+", metavar="PATH",
                    help="field maps of the sources: .h5 with /field (step 2), a folder, or files (e.g. MATLAB)")
    io.add_argument("--source-masks", nargs="+", metavar="MASK", help="masks for chi files (1 or one per file)")
    io.add_argument("--target", nargs="+", default=[], metavar="CASE", help="target case folder(s) (contract 1)")
    io.add_argument("--target-field", nargs="+", default=[], metavar="FILE", help="target local field file(s)")
    io.add_argument("--target-mask", nargs="+", default=[], metavar="FILE", help="their brain mask(s)")
    io.add_argument("--target-weight", nargs="+", default=[], metavar="FILE",
                    help="their magnitude (4-D: --weight-echo is used) or weight files")
    io.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="output patch file (.h5/.hdf5)")
    io.add_argument("--config", metavar="FILE", help="JSON/YAML file of parameters")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output")
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_options(parser, PatchConfig)
    return parser


def main(argv=None) -> int:
    """Command body; exit status 2 on bad input, with nothing written."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = resolve_config(PatchConfig, args.config, vars(args))
        check_numbers(config, {"b0_tesla": "positive", "te_s": "positive", "target_b0_tesla": "positive",
                               "target_te_s": "positive", "voxel_size_mm": "positive", "b0_dir": "finite",
                               "brain_threshold": (0.0, 1.0)}, spell=option_name)
        if suffix_of(args.output) not in HDF5_SUFFIXES:
            raise InputError(f"-o {args.output}: expected an .h5/.hdf5 output file")
        if os.path.exists(args.output) and not args.overwrite:
            raise InputError(f"{args.output}: output file exists; use --overwrite to replace it")
        output_path("-o", args.output)
        sources = SourceInputs(args.source, args.source_fields, args.source_masks, config.field_units,
                               config.b0_tesla, config.te_s, config.voxel_size_mm, config.b0_dir)
        targets = TargetInputs(args.target, args.target_field, args.target_mask, args.target_weight,
                               config.target_field_units, config.target_b0_tesla, config.target_te_s,
                               config.weight_echo)
        if not len(targets) and not args.quiet:
            print(f"{PROG}: warning: no target dataset given; /target will be empty", file=sys.stderr)
        with claim_output("-o", args.output):
            stats = write_patches(args.output, sources, targets, config, args.quiet)
            write_config(config, os.path.splitext(args.output)[0] + ".config.json")
        if not args.quiet:
            print(f"{PROG}: wrote {stats['source']} source and {stats['target']} target patches to {args.output} "
                  f"in {stats['seconds']:.1f} s", file=sys.stderr)
        return 0

    return run_cli(body, PROG)


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
