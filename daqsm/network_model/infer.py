"""Inference: trained target model (contract 3) + local field + mask -> QSM (NIfTI, ppm).

    python network_model/infer.py --model MODEL.keras --field F --mask M \
        [--units ppm|ppb|hz|rad --b0 TESLA --te SECONDS] [--tile 96 --overlap 32 | --whole] -o OUT.nii.gz
    python network_model/infer.py --model MODEL.keras --case CASE_DIR -o OUT.nii.gz

Inputs in any format daqsm.training_data.volume_io reads (NIfTI, .mat v5/v7.3 as FILE.mat[:VAR], .h5,
.npy); the field is converted to ppm. The output keeps the field's affine and header (for .mat/.npy
input the NIfTI mask's, else an affine from --voxel-size or 1 mm with a one-line warning:
daqsm/training_data/field_geometry.py), is 0 outside the mask, and a sidecar OUT.json records the
resolved settings, the input geometry and the model's training geometry (MODEL.keras.json, see
daqsm/network_model/model_info.py); a one-line warning goes to stderr when the two differ. The sidecar is
the provenance record of daqsm/provenance.py (plus these keys); OUT_residual.nii.gz is the
QC data-consistency residual (ppm, daqsm/qc/residual.py) with its own sidecar.
Inputs pass daqsm-check's checks first; --bids names the output OUT_Chimap.nii.gz.

Default is overlapping-tile inference (bounded memory); --whole runs one pass on the volume
zero-padded to a multiple of 2**depth. Either way the network runs on the brain's bounding box plus
2**(depth-1) voxels (daqsm.network_model.tiling.brain_box), as fine-tuning does; the output is on the full grid.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from daqsm.config import ArgumentParser, param, require
from daqsm.errors import InputError, output_path, run_cli
from daqsm.output_lock import check_qsm_set, claim_qsm_set
from daqsm.provenance import bids_chimap_path, write_sidecar
from daqsm.training_data.volume_io import NIFTI_SUFFIXES, read_field, read_mask, suffix_of, write_volume
from daqsm.validate import check_config

PROG = "daqsm-infer"
QC_PAD = "auto"  # dipole padding of the QC residual's forward model (as fine-tuning's default)


@dataclass(frozen=True)
class InferConfig:
    """Settings of one inference run (config-file keys = field names; options daqsm.config)."""

    model: str | None = param(None, "exported target model (.keras, contract 3); default: the shipped model "
                              "(daqsm/models/, docs/model-card.md)")
    field: str | None = param(None, "local field map (NIfTI, FILE.mat[:VAR], .h5, .npy); unit given by units")
    mask: str | None = param(None, "brain mask (0/1) on the field's grid")
    case: str | None = param(None, "case folder (contract 1) instead of field/mask: local_field.nii.gz (ppm), "
                             "mask.nii.gz")
    units: str = param("ppm", "field unit: ppm, ppb, hz or rad")
    b0_tesla: float | None = param(None, "main field in tesla (needed for hz and rad)", aliases=("b0",))
    te_s: float | None = param(None, "echo time in seconds (needed for rad)", aliases=("te",))
    voxel_size_mm: tuple | None = param(None, "input voxel size override, mm (default: from the file / case.json)",
                                        type=float, nargs=3, aliases=("voxel_size",))
    b0_dir: tuple | None = param(None, "input B0 direction in voxel axes (default: from the affine / case.json, "
                                 "else z)", type=float, nargs=3)
    tile: tuple = param((96,), "tile size in voxels (multiple of 2**depth), 1 or 3 ints", type=int, check="int>=1")
    overlap: tuple = param((32,), "overlap between tiles in voxels, 1 or 3 ints", type=int, check="int>=0")
    whole: bool = param(False, "no tiling: one pass on the volume padded to a multiple of 2**depth")
    batch_size: int = param(1, "tiles per network call", check="int>=1")
    divisor: int | None = param(None, "2**depth override (default: the model info, else its pooling layers)", check="int>=1")
    output: str | None = param(None, "output NIfTI (.nii or .nii.gz), chi in ppm", flags=("-o",))
    overwrite: bool = param(False, "replace an existing output")
    precision: str = param("float32", "compute precision (daqsm/network_model/precision.py); the output is float32 "
                           "either way", choices=("float32", "mixed_float16", "mixed_bfloat16"))
    bids: bool = param(False, "name the output the BIDS way, OUT_Chimap.nii.gz (daqsm/provenance.py)")


def build_parser() -> argparse.ArgumentParser:
    from daqsm.network_model.config import add_config_arguments

    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, InferConfig)
    return p


def resolve_config(args: argparse.Namespace) -> InferConfig:
    """Defaults < config file < command-line options (daqsm.config), then the numbers checked."""
    from daqsm.network_model.config import resolve_config as resolve

    cfg = resolve(InferConfig, args)
    check_params(cfg)
    return cfg


def check_params(cfg: InferConfig) -> None:
    """The number rules declared on InferConfig's fields (the command and daqsm-check get them)."""
    from daqsm.network_model.config import key_option

    check_config(cfg, spell=key_option)


def read_inputs(cfg: InferConfig, warn=None):
    """Field (Volume, ppm), mask (bool) and input geometry (voxel size, B0 dir, affine), checked.

    warn: callable(line) for the assumed-geometry note; default: a warning on stderr.

    `daqsm-check --step infer` (daqsm/network_model/check_cli.py) calls this function, so its "ok" is inference's.
    """
    case_info = {}
    field_path, mask_path, units = cfg.field, cfg.mask, cfg.units
    b0_tesla, te_s = cfg.b0_tesla, cfg.te_s
    if cfg.case:
        if cfg.field or cfg.mask:
            raise InputError("--case: give either a case folder or --field/--mask, not both")
        from daqsm.training_data.formats import case_folder

        folder = case_folder.check_case(cfg.case, "--case")
        field_path = os.path.join(folder, case_folder.FIELD_NAME)
        mask_path = os.path.join(folder, case_folder.MASK_NAME)
        units = "ppm"  # contract 1: the case's local field is in ppm
        case_info = case_folder.read_info(folder)
        b0_tesla = b0_tesla if b0_tesla is not None else case_info.get("b0_tesla")
    if not cfg.case:
        require(cfg, ("field", "mask"), alternative="--case DIR")
    from daqsm.training_data.input_check import check_case, check_files

    if cfg.case:  # daqsm-check's checks, before the model is loaded
        check_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
    else:
        check_files(field_path, mask_path, None, units, b0_tesla, te_s, cfg.voxel_size_mm, cfg.b0_dir)
    field = read_field(field_path, units, b0_tesla, te_s)
    mask = read_mask(mask_path, like=field, like_name=f"field {field_path}")
    from daqsm.training_data.field_geometry import assumption_line, resolve_field_geometry

    # .mat/.npy carry no geometry: a NIfTI mask on the same grid lends its affine (field_geometry)
    geom = resolve_field_geometry(field, [("mask", mask_path)], cfg.voxel_size_mm or case_info.get("voxel_size_mm"),
                                  cfg.b0_dir or case_info.get("b0_dir"))
    note = assumption_line(geom, f"field {field_path}")
    if note:
        (warn or (lambda line: print(f"{PROG}: warning: {line}", file=sys.stderr)))(note)
    field.header = geom.header
    field.attrs["geometry_sources"] = geom.sources
    return field, mask, geom.geometry.voxel_size_mm, geom.geometry.b0_dir, geom.affine, b0_tesla


def predict_volume(model, field_ppm, mask, divisor: int, tile=(96,), overlap=(32,), whole: bool = False,
                   batch_size: int = 1):
    """Apply a target model to one volume on the brain's bounding box (module doc).

    Args:
        model: Keras target model (contract 3), inputs [field, mask].
        field_ppm: float32 (x, y, z) local field in ppm.
        mask: (x, y, z) brain mask 0/1.
        divisor: 2**depth of the model.
        tile, overlap: 1 or 3 ints (voxels); whole: one pass instead of tiles.
        batch_size: tiles per network call.

    Returns:
        (chi float32 (x, y, z) in ppm, 0 outside the box; the box (3 slices); number of tiles).
    """
    from daqsm.network_model import tiling

    field_ppm = np.asarray(field_ppm, np.float32)
    predict = tiling.keras_predictor(model)
    box = tiling.brain_box(mask, divisor)
    field_b, mask_b = field_ppm[box], np.asarray(mask)[box]
    chi = np.zeros(field_ppm.shape, np.float32)
    if whole:
        chi[box] = tiling.predict_whole(predict, field_b, mask_b, divisor)
        return chi, box, 1
    tiling.check_tiling(tile, overlap, divisor)
    n_tiles = tiling.count_tiles(field_b.shape, tile, overlap, divisor)
    chi[box] = tiling.predict_tiled(predict, field_b, mask_b, tile, overlap, divisor, batch_size)
    return chi, box, n_tiles


def input_paths(cfg: InferConfig) -> list:
    """What inference reads: an output may not replace any of it."""
    return [cfg.case] if cfg.case else [cfg.field, cfg.mask, cfg.model]


def run(cfg: InferConfig, log=print, warn=None, qset=None) -> dict:
    """Run inference as configured; returns the record written to the sidecar.

    `qset`: the held set of the output (daqsm.output_lock.claim_qsm_set); the CLI passes it.
    """
    from daqsm.network_model import tiling
    from daqsm.network_model.model_info import (
        geometry_warning,
        load_model_file,
        read_model_info,
        resolve_model_path,
        spatial_divisor,
    )

    warn = warn or (lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr))
    require(cfg, ("output",))
    if cfg.bids:
        from daqsm.provenance import bids_chimap_path

        cfg = dataclasses.replace(cfg, output=bids_chimap_path(cfg.output), bids=False)
    if suffix_of(cfg.output) not in NIFTI_SUFFIXES:
        raise InputError(f"{cfg.output}: expected an output ending in .nii or .nii.gz")
    check_qsm_set("-o", cfg.output, cfg.overwrite, input_paths(cfg))  # the whole set, before any work
    tiling.check_tiling(cfg.tile, cfg.overlap, 1)
    if cfg.batch_size < 1:
        raise InputError(f"--batch-size: expected a positive integer, got {cfg.batch_size}")
    from daqsm.network_model.precision import check_device, with_precision

    precision = check_device(cfg.precision)
    field, mask, voxel_size, b0_dir, affine, b0_tesla = read_inputs(cfg)
    if not cfg.model:  # the shipped pre-trained model, verified against its manifest
        from daqsm.network_model.shipped import default_model_path

        cfg = dataclasses.replace(cfg, model=default_model_path())
    model = load_model_file(cfg.model)
    if precision != "float32":
        model = with_precision(model, precision)
    info = read_model_info(resolve_model_path(cfg.model))
    needed = spatial_divisor(model)
    divisor = cfg.divisor or info.get("divisor") or needed
    if int(divisor) % int(needed):  # the network's poolings cannot take such tiles: one line, not a TF error
        raise InputError(f"--divisor {divisor}: expected a multiple of {needed} (2**depth of {cfg.model})")
    message = geometry_warning(info, voxel_size, b0_dir)
    if message:
        warn(message)
    start = time.perf_counter()
    chi, box, n_tiles = predict_volume(model, field.data, mask, divisor, cfg.tile, cfg.overlap, cfg.whole,
                                       cfg.batch_size)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(chi)):
        raise InputError(f"{cfg.model}: the model produced NaN/Inf values; nothing written")
    record = {
        "output": cfg.output, "shape": list(chi.shape),  # settings: "Config", units: "Units" (provenance)
        "input_voxel_size_mm": list(map(float, voxel_size)) if voxel_size is not None else None,
        "input_b0_dir": list(map(float, b0_dir)) if b0_dir is not None else None,
        "b0_tesla": b0_tesla, "model_info": {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.items()},
        "geometry_warning": message, "geometry_sources": field.attrs.get("geometry_sources"),
        "divisor": int(divisor), "mode": "whole" if cfg.whole else "tiled",
        "tiles": int(n_tiles), "seconds": round(seconds, 3), "box": [[b.start, b.stop] for b in box],
    }
    # the QC map and the sidecars first, the QSM last: a failing QC leaves no map that makes the set
    # look complete (daqsm.output_lock.QsmSet)
    if qset is not None:
        qset.start_writing()
    record["QC"] = write_qc(cfg, chi, field.data, np.asarray(mask), voxel_size, b0_dir, b0_tesla, affine, field.header)
    write_sidecar(cfg.output, provenance_record(cfg, voxel_size, b0_dir, b0_tesla, "susceptibility map, "
                                                "pre-trained / exported target network (inference)"), record)

    def write_qsm(path):
        write_volume(path, chi.astype(np.float32), affine=affine, header=field.header)

    qset.commit(write_qsm) if qset is not None else write_qsm(cfg.output)
    log(f"wrote {cfg.output}: chi in ppm, shape {chi.shape}, {record['mode']} ({n_tiles} tiles), "
        f"{seconds:.1f} s")
    return record


def residual_path(output: str) -> str:
    """OUT.nii.gz -> OUT_residual.nii.gz (QC map, ppm): the companion rule of daqsm.outputs.qsm_set."""
    from daqsm.outputs import qsm_set

    return qsm_set(output)["residual"]


def provenance_record(cfg: InferConfig, voxel_size, b0_dir, b0_tesla, description: str) -> dict:
    from daqsm.provenance import build_record

    return build_record(description, "ppm", sources=[cfg.case] if cfg.case else [cfg.field, cfg.mask],
                        b0_tesla=b0_tesla, b0_dir=b0_dir, voxel_size_mm=voxel_size, dipole_pad=QC_PAD,
                        config=cfg, model=cfg.model)


def write_qc(cfg: InferConfig, chi, field_ppm, mask, voxel_size, b0_dir, b0_tesla, affine, header) -> dict:
    """QC residual map beside the output, defined as fine-tuning's (daqsm/qc/residual.py).

    A case folder gives fine-tuning's W (2nd echo magnitude) and phase scale (daqsm.network_model.target_data);
    separate files W = mask and the phase scale from --b0/--te (the small-angle form without them).
    """
    weight, phase = qc_weight_and_phase(cfg, b0_tesla)
    residual, summary = qc_in_brain_box(chi, field_ppm, mask, weight, voxel_size or (1.0, 1.0, 1.0),
                                        b0_dir or (0.0, 0.0, 1.0), phase)
    out = residual_path(cfg.output)
    write_volume(out, residual, affine=affine, header=header)
    write_sidecar(out, provenance_record(cfg, voxel_size, b0_dir, b0_tesla, "weighted data-consistency residual "
                                         f"of {os.path.basename(cfg.output)} (ppm)"),
                  {"PhaseRadPerPpm": phase, "QC": summary})
    return summary


def qc_weight_and_phase(cfg: InferConfig, b0_tesla):
    """The QC residual's weight W (None: the mask) and phase scale in rad/ppm (None: the small-angle form)."""
    from daqsm.training_data.units import rad_per_ppm

    if cfg.case:
        from daqsm.network_model.target_data import load_case

        target = load_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
        return target.weight, target.phase_rad_per_ppm
    return None, (rad_per_ppm(b0_tesla, cfg.te_s) if b0_tesla and cfg.te_s else None)


def qc_in_brain_box(chi, field_ppm, mask, weight, voxel_size, b0_dir, phase):
    """The QC residual computed on the mask's bounding box, not the whole grid (issue 23).

    W is 0 outside the mask and chi is 0 outside the box, so only the box's padded FFT is needed:
    peak memory is set by the brain, not the grid (benchmarks/results_infer.md). Returns the residual
    float32 (x, y, z) ppm on the full grid and its summary.
    """
    from daqsm.network_model.tiling import brain_box
    from daqsm.qc.residual import residual_in_box

    box = brain_box(mask, 8)  # 4 voxels of margin: the noise estimate's neighbourhood stays inside
    residual, summary = residual_in_box(chi, field_ppm, mask, weight, voxel_size, b0_dir, QC_PAD, phase, box)
    return residual, summary


def main(argv=None) -> int:
    from daqsm.provenance import command

    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = resolve_config(args)
        if cfg.output:
            output_path("-o", cfg.output)
            output = cfg.output if not cfg.bids else bids_chimap_path(cfg.output)
            with claim_qsm_set("-o", output, cfg.overwrite, input_paths(cfg)) as qset:
                run(cfg, qset=qset)
        else:
            run(cfg)
        return 0

    with command(PROG, argv):
        return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
