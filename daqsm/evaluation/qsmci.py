"""QSM-CI algorithm entry: the public QSM-CI contract in, a fine-tuned QSM out (docs/qsmci/).

    python -m daqsm.evaluation.qsmci --input /input --output /output [--fast] [--iterations N]

Input folder: `localfield.nii.gz` (local field, ppm), `mask.nii.gz` (0/1), `params.json` with
`TE` (s; a list for several echoes: the 2nd echo's TE is the phase scale's, as case folders decide),
`B0` (T), `B0_dir` (voxel axes) and `voxel_size` (mm). Output: `chimap.nii.gz` (ppm, the field's
affine), beside it the sidecar, QC residual and loss log of daqsm-finetune. The weights are the
pre-trained model the package ships in daqsm/models/ (SHA-256 verified, no network at run time; with
none installed, one line, exit 2), fine-tuned on the input
(test-time fine-tuning); `--fast` writes the pre-trained network's map.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from daqsm.errors import InputError, run_cli

PROG = "daqsm.evaluation.qsmci"


def read_params(path: str) -> dict:
    """QSM-CI params.json -> b0_tesla, te_s, b0_dir, voxel_size_mm (checked, one-line errors)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: expected QSM-CI params.json (TE, B0, B0_dir, voxel_size), not found")
    try:
        with open(path, encoding="utf-8") as fh:
            params = json.load(fh)
    except ValueError as err:
        raise InputError(f"{path}: expected JSON, cannot parse ({str(err).splitlines()[0]})") from None
    missing = [k for k in ("TE", "B0") if k not in params]
    if missing:
        raise InputError(f"{path}: expected keys TE (s) and B0 (T), missing {', '.join(missing)}")
    te = params["TE"]
    te = [te] if isinstance(te, (int, float)) else list(te)
    te_s = float(te[1] if len(te) > 1 else te[0])  # the weighting echo (formats/case_folder.WEIGHT_ECHO)
    out = {"b0_tesla": float(params["B0"]), "te_s": te_s}
    if params.get("B0_dir") is not None:
        out["b0_dir"] = tuple(float(v) for v in params["B0_dir"])
    if params.get("voxel_size") is not None:
        out["voxel_size_mm"] = tuple(float(v) for v in params["voxel_size"])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default="/input", help="QSM-CI input folder (default /input)")
    p.add_argument("--output", default="/output", help="output folder (default /output)")
    p.add_argument("--fast", action="store_true", help="no fine-tuning: the pre-trained network's map")
    p.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations at most")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from daqsm.network_model.finetuning import FinetuneConfig, finetune

        params = read_params(os.path.join(args.input, "params.json"))
        cfg = FinetuneConfig(field=os.path.join(args.input, "localfield.nii.gz"),
                             mask=os.path.join(args.input, "mask.nii.gz"), units="ppm",
                             output=os.path.join(args.output, "chimap.nii.gz"), fast=args.fast,
                             iterations=args.iterations, overwrite=True, progress=False, **params)
        return finetune(cfg)

    return run_cli(body, PROG)


if __name__ == "__main__":
    sys.exit(main())
