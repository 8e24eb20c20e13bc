"""Inference: trained target model (contract 3) + local field + mask -> QSM (NIfTI, ppm).

    python network_model/infer.py --model MODEL.keras --field F --mask M \
        [--units ppm|ppb|hz|rad --b0 TESLA --te SECONDS] [--tile 96 --overlap 32 | --whole] -o OUT.nii.gz
    python network_model/infer.py --model MODEL.keras --case CASE_DIR -o OUT.nii.gz

Inputs in any format training_data.volume_io reads (NIfTI, .mat v5/v7.3 as FILE.mat[:VAR], .h5,
.npy); the field is converted to ppm. The output keeps the field's affine and header (for non-NIfTI
inputs an affine from --voxel-size), is 0 outside the mask, and a sidecar OUT.json records the
resolved settings, the input geometry and the model's training geometry (MODEL.keras.json, see
network_model/model_info.py); a one-line warning goes to stderr when the two differ. The sidecar is
the provenance record of training_data/provenance.py (plus these keys); OUT_residual.nii.gz is the
QC data-consistency residual (ppm, training_data/qc_residual.py) with its own sidecar.
Inputs pass daqsm-check's checks first; --bids names the output OUT_Chimap.nii.gz.

Default is overlapping-tile inference (bounded memory); --whole runs one pass on the volume
zero-padded to a multiple of 2**depth. Either way the network runs on the brain's bounding box plus
2**(depth-1) voxels (network_model.tiling.brain_box), as fine-tuning does; the output is on the full grid.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

if __package__ in (None, ""):  # `python network_model/infer.py` from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training_data.errors import InputError, output_path, run_cli  # noqa: E402
from training_data.output_lock import claim_output  # noqa: E402
from training_data.provenance import write_sidecar  # noqa: E402
from training_data.validate import check_numbers  # noqa: E402
from training_data.volume_io import NIFTI_SUFFIXES, read_field, read_mask, suffix_of, write_volume  # noqa: E402

PROG = "daqsm-infer"
QC_PAD = "auto"  # dipole padding of the QC residual's forward model (as fine-tuning's default)


@dataclass(frozen=True)
class InferConfig:
    """Settings of one inference run (config-file keys = field names).

    Attributes:
        model: exported target model (.keras, contract 3).
        field: local field map file; unit given by `units`.
        mask: brain mask file (0/1) on the field's grid.
        case: case folder (contract 1) instead of field/mask: local_field.nii.gz (ppm), mask.nii.gz.
        units: field unit, ppm | ppb | hz | rad.
        b0_tesla: main field in tesla (needed for hz and rad).
        te_s: echo time in seconds (needed for rad).
        voxel_size_mm: input voxel size override (3 floats; else from the file / case.json).
        b0_dir: input B0 direction override in voxel axes (else from the affine / case.json).
        tile: tile size in voxels (multiple of 2**depth), 1 or 3 ints.
        overlap: overlap between tiles in voxels, 1 or 3 ints.
        whole: run the whole volume in one pass instead of tiles.
        batch_size: tiles per network call.
        divisor: 2**depth override (else from the model info or its pooling layers).
        output: output NIfTI (.nii or .nii.gz), chi in ppm.
        overwrite: replace an existing output.
        precision: float32 | mixed_float16 | mixed_bfloat16 (network_model/precision.py); the
            output is float32 either way.
        bids: name the output the BIDS way, OUT_Chimap.nii.gz (training_data/provenance.py).
    """

    model: str | None = None
    field: str | None = None
    mask: str | None = None
    case: str | None = None
    units: str = "ppm"
    b0_tesla: float | None = None
    te_s: float | None = None
    voxel_size_mm: tuple | None = None
    b0_dir: tuple | None = None
    tile: tuple = (96,)
    overlap: tuple = (32,)
    whole: bool = False
    batch_size: int = 1
    divisor: int | None = None
    output: str | None = None
    overwrite: bool = False
    precision: str = "float32"
    bids: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults are None so that a config file value is only overridden by options actually given.
    p.add_argument("--config", help="JSON/YAML file with InferConfig keys (options override it)")
    p.add_argument("--model", help="trained target model, .keras (contract 3)")
    p.add_argument("--field", help="local field map (NIfTI, FILE.mat[:VAR], .h5, .npy)")
    p.add_argument("--mask", help="brain mask (0/1) on the field's grid")
    p.add_argument("--case", help="case folder with local_field.nii.gz (ppm) and mask.nii.gz")
    p.add_argument("--units", help="field unit: ppm (default), ppb, hz, rad")
    p.add_argument("--b0", dest="b0_tesla", type=float, help="B0 in tesla (hz, rad)")
    p.add_argument("--te", dest="te_s", type=float, help="echo time in seconds (rad)")
    p.add_argument("--voxel-size", dest="voxel_size_mm", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="input voxel size in mm (default: from the file)")
    p.add_argument("--b0-dir", dest="b0_dir", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="input B0 direction in voxel axes (default: from the affine, else z)")
    p.add_argument("--tile", type=int, nargs="+", help="tile size, 1 or 3 ints (default 96)")
    p.add_argument("--overlap", type=int, nargs="+", help="tile overlap in voxels (default 32)")
    p.add_argument("--whole", action="store_const", const=True, help="no tiling: one pass on the padded volume")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="tiles per network call (default 1)")
    p.add_argument("--divisor", type=int, help="2**depth of the model (default: model info / its layers)")
    p.add_argument("-o", "--output", help="output NIfTI, chi in ppm")
    p.add_argument("--overwrite", action="store_const", const=True, help="replace an existing output")
    p.add_argument("--precision", help="float32 (default), mixed_float16 or mixed_bfloat16: convolutions in "
                   "reduced precision, output float32")
    p.add_argument("--bids", action="store_const", const=True, help="BIDS name for the output: OUT_Chimap.nii.gz")
    return p


def resolve_config(args: argparse.Namespace) -> InferConfig:
    """Config file values, then command-line options; unknown file keys are rejected."""
    values = {}
    if args.config:
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    import typing

    from network_model.config import _coerce

    hints = typing.get_type_hints(InferConfig)
    for key, value in values.items():  # config-file values are type-checked like options
        if key in ("tile", "overlap", "voxel_size_mm", "b0_dir") and value is not None:
            item = int if key in ("tile", "overlap") else float
            values[key] = tuple(_coerce(key, v, item) for v in np.ravel(value).tolist())
        else:
            values[key] = _coerce(key, value, hints[key])
    cfg = InferConfig(**values)
    check_numbers(cfg, {"b0_tesla": "positive", "te_s": "positive", "voxel_size_mm": "positive",
                        "b0_dir": "finite", "tile": "int>=1", "overlap": "int>=0", "batch_size": "int>=1",
                        "divisor": "int>=1"}, spell=lambda k: "--" + k.replace("_", "-"))
    return cfg


def load_config_file(path) -> dict:
    """Read a JSON or YAML mapping of InferConfig keys."""
    from training_data.step_config import read_config_file

    data = read_config_file(path)
    known = [f.name for f in dataclasses.fields(InferConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"{path}: unknown config keys {', '.join(unknown)}; expected some of {', '.join(known)}")
    return data


def sidecar_path(output: str) -> str:
    """OUT.nii.gz -> OUT.json."""
    suffix = suffix_of(output)
    return output[: -len(suffix)] + ".json"


def read_inputs(cfg: InferConfig):
    """Field (Volume, ppm), mask (bool) and input geometry (voxel size, B0 dir, affine)."""
    case_info = {}
    field_path, mask_path, units = cfg.field, cfg.mask, cfg.units
    b0_tesla, te_s = cfg.b0_tesla, cfg.te_s
    if cfg.case:
        if cfg.field or cfg.mask:
            raise InputError("--case: give either a case folder or --field/--mask, not both")
        if not os.path.isdir(cfg.case):
            raise InputError(f"{cfg.case}: expected a case folder, not found")
        field_path = os.path.join(cfg.case, "local_field.nii.gz")
        mask_path = os.path.join(cfg.case, "mask.nii.gz")
        units = "ppm"  # contract 1: the case's local field is in ppm
        from training_data.case_json import read_case_json

        case_info = read_case_json(cfg.case)
        b0_tesla = b0_tesla if b0_tesla is not None else case_info.get("b0_tesla")
    if not field_path or not mask_path:
        raise InputError("inputs: expected --field and --mask, or --case")
    from training_data.input_check import check_case, check_files

    if cfg.case:  # daqsm-check's checks, before the model is loaded
        check_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
    else:
        check_files(field_path, mask_path, None, units, b0_tesla, te_s, cfg.voxel_size_mm, cfg.b0_dir)
    field = read_field(field_path, units, b0_tesla, te_s)
    mask = read_mask(mask_path, like=field.data, like_name=f"field {field_path}")
    voxel_size = cfg.voxel_size_mm or case_info.get("voxel_size_mm") or field.voxel_size_mm
    b0_dir = cfg.b0_dir or case_info.get("b0_dir") or field.b0_dir
    affine = field.affine
    if field.header is None and voxel_size is not None:  # .mat/.npy: build the affine from the voxel size
        affine = np.diag(list(map(float, voxel_size)) + [1.0])
    return field, mask, voxel_size, b0_dir, affine, b0_tesla


def run(cfg: InferConfig, log=print, warn=None) -> dict:
    """Run inference as configured; returns the record written to the sidecar."""
    from network_model import tiling
    from network_model.model_info import geometry_warning, load_model_file, read_model_info, resolve_model_path, spatial_divisor

    warn = warn or (lambda msg: print(f"{PROG}: warning: {msg}", file=sys.stderr))
    if not cfg.output:
        raise InputError("-o/--output: expected an output NIfTI path")
    if cfg.bids:
        from training_data.provenance import bids_chimap_path

        cfg = dataclasses.replace(cfg, output=bids_chimap_path(cfg.output), bids=False)
    if suffix_of(cfg.output) not in NIFTI_SUFFIXES:
        raise InputError(f"{cfg.output}: expected an output ending in .nii or .nii.gz")
    for path in (cfg.output, residual_path(cfg.output)):
        if os.path.exists(path) and not cfg.overwrite:
            raise InputError(f"{path}: output exists; give --overwrite to replace it")
    for path in (cfg.output, residual_path(cfg.output), sidecar_path(cfg.output)):
        output_path("-o", path)
    tiling.check_tiling(cfg.tile, cfg.overlap, 1)
    if cfg.batch_size < 1:
        raise InputError(f"--batch-size: expected a positive integer, got {cfg.batch_size}")
    from network_model.precision import check_device, with_precision

    precision = check_device(cfg.precision)
    field, mask, voxel_size, b0_dir, affine, b0_tesla = read_inputs(cfg)
    model = load_model_file(cfg.model)
    if precision != "float32":
        model = with_precision(model, precision)
    info = read_model_info(resolve_model_path(cfg.model))
    divisor = cfg.divisor or info.get("divisor") or spatial_divisor(model)
    message = geometry_warning(info, voxel_size, b0_dir)
    if message:
        warn(message)
    start = time.perf_counter()
    predict = tiling.keras_predictor(model)
    box = tiling.brain_box(mask, divisor)
    field_b, mask_b = field.data[box], np.asarray(mask)[box]
    chi = np.zeros(field.data.shape, np.float32)
    if cfg.whole:
        chi[box] = tiling.predict_whole(predict, field_b, mask_b, divisor)
        n_tiles = 1
    else:
        tiling.check_tiling(cfg.tile, cfg.overlap, divisor)
        n_tiles = tiling.count_tiles(field_b.shape, cfg.tile, cfg.overlap, divisor)
        chi[box] = tiling.predict_tiled(predict, field_b, mask_b, cfg.tile, cfg.overlap, divisor, cfg.batch_size)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(chi)):
        raise InputError(f"{cfg.model}: the model produced NaN/Inf values; nothing written")
    record = {
        "output": cfg.output, "shape": list(chi.shape),  # settings: "Config", units: "Units" (provenance)
        "input_voxel_size_mm": list(map(float, voxel_size)) if voxel_size is not None else None,
        "input_b0_dir": list(map(float, b0_dir)) if b0_dir is not None else None,
        "b0_tesla": b0_tesla, "model_info": {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.items()},
        "geometry_warning": message, "divisor": int(divisor), "mode": "whole" if cfg.whole else "tiled",
        "tiles": int(n_tiles), "seconds": round(seconds, 3), "box": [[b.start, b.stop] for b in box],
    }
    write_volume(cfg.output, chi.astype(np.float32), affine=affine, header=field.header)
    record["QC"] = write_qc(cfg, chi, field.data, np.asarray(mask), voxel_size, b0_dir, b0_tesla, affine, field.header)
    write_sidecar(cfg.output, provenance_record(cfg, voxel_size, b0_dir, b0_tesla, "susceptibility map, "
                                                "pre-trained / exported target network (inference)"), record)
    log(f"wrote {cfg.output}: chi in ppm, shape {chi.shape}, {record['mode']} ({n_tiles} tiles), "
        f"{seconds:.1f} s")
    return record


def residual_path(output: str) -> str:
    """OUT.nii.gz -> OUT_residual.nii.gz (QC map, ppm)."""
    return output[: -len(suffix_of(output))] + "_residual.nii.gz"


def provenance_record(cfg: InferConfig, voxel_size, b0_dir, b0_tesla, description: str) -> dict:
    from training_data.provenance import build_record

    return build_record(description, "ppm", sources=[cfg.case] if cfg.case else [cfg.field, cfg.mask],
                        b0_tesla=b0_tesla, b0_dir=b0_dir, voxel_size_mm=voxel_size, dipole_pad=QC_PAD,
                        config=cfg, model=cfg.model)


def write_qc(cfg: InferConfig, chi, field_ppm, mask, voxel_size, b0_dir, b0_tesla, affine, header) -> dict:
    """QC residual map beside the output, defined as fine-tuning's (training_data/qc_residual.py).

    A case folder gives fine-tuning's W (2nd echo magnitude) and phase scale (network_model.target_data);
    separate files W = mask and the phase scale from --b0/--te (the small-angle form without them).
    """
    from training_data.qc_residual import residual_map_ppm, residual_summary
    from training_data.units import rad_per_ppm

    weight = None
    if cfg.case:
        from network_model.target_data import load_case

        target = load_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir)
        weight, phase = target.weight, target.phase_rad_per_ppm
    else:
        phase = rad_per_ppm(b0_tesla, cfg.te_s) if b0_tesla and cfg.te_s else None
    residual = residual_map_ppm(chi, field_ppm, mask, weight, voxel_size or (1.0, 1.0, 1.0),
                                b0_dir or (0.0, 0.0, 1.0), QC_PAD, phase)
    summary = residual_summary(residual, field_ppm, mask, weight)
    out = residual_path(cfg.output)
    write_volume(out, residual, affine=affine, header=header)
    write_sidecar(out, provenance_record(cfg, voxel_size, b0_dir, b0_tesla, "weighted data-consistency residual "
                                         f"of {os.path.basename(cfg.output)} (ppm)"),
                  {"PhaseRadPerPpm": phase, "QC": summary})
    return summary


def main(argv=None) -> int:
    from training_data.provenance import command

    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = resolve_config(args)
        if cfg.output:
            output_path("-o", cfg.output)
            with claim_output("-o", cfg.output):
                run(cfg)
        else:
            run(cfg)
        return 0

    with command(PROG, argv):
        return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
