"""`daqsm-export`: a target model (.keras, pre-trained or fine-tuned) -> ONNX, checked with onnxruntime.

    daqsm-export --model M.keras -o M.onnx [--opset 17] [--check-size 32 32 32] [--overwrite] [--config FILE]

The ONNX graph is the target model's inference graph (data contract 3): the target domain's batch
normalisations with their moving statistics (export_target_model already turned DSBN into plain
BN layers; `training=False` here), the field multiplied by the mask, chi multiplied by the mask.

ONNX interface (what a QSMxT-style pipeline feeds it):
    inputs   field_ppm  float32 (1, x, y, z, 1)  local field in ppm of B0, background removed
             mask       float32 (1, x, y, z, 1)  brain mask, 0/1, same grid
    output   chi_ppm    float32 (1, x, y, z, 1)  susceptibility in ppm, 0 outside the mask
x, y, z are dynamic but must each be divisible by 2**depth (zero-pad the volume first, as
daqsm/network_model/tiling.py does). The voxel size and B0 direction the model was trained for are in
the model's info file (MODEL.keras.json) and copied into the ONNX metadata (`daqsm_model_info`).

After writing, the ONNX model runs in onnxruntime on a random test volume (`--check-size`, default
32^3 rounded up to 2**depth) and the command fails unless max |chi_onnx - chi_keras| <= 1e-5 ppm.
A sidecar M.json records the source model's SHA-256 and the measured difference.

Needs the optional extra: pip install "daqsm[onnx]" (tf2onnx, onnx, onnxruntime).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from daqsm.config import (
    ArgumentParser,
    add_config_options,
    config_to_dict,
    option_name,
    param,
    require,
    resolve_config,
)
from daqsm.errors import InputError, output_path, run_cli
from daqsm.validate import check_config

PROG = "daqsm-export"
INPUT_NAMES = ("field_ppm", "mask")
OUTPUT_NAME = "chi_ppm"
TOLERANCE_PPM = 1e-5
DEFAULT_OPSET = 17


def _require_onnx():
    missing = []
    for module in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InputError(f"ONNX export: expected {', '.join(missing)} installed, not found "
                         '(pip install "daqsm[onnx]")')


def export_onnx(model, path: str, opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> str:
    """Write the inference graph of a target keras model as ONNX with dynamic spatial axes.

    Args:
        model: keras.Model [field_ppm, mask] -> chi_ppm (contract 3).
        path: output .onnx file (written atomically).
        opset: ONNX opset.
        metadata: extra key -> JSON-able value stored in the ONNX metadata_props.

    Returns:
        The path.
    """
    import tensorflow as tf
    import tf2onnx

    from daqsm.training_data.volume_io import atomic_path

    spec = [tf.TensorSpec((1, None, None, None, 1), tf.float32, name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=spec)
    def inference(field_ppm, mask):
        return {OUTPUT_NAME: model([field_ppm, mask], training=False)}

    proto, _ = tf2onnx.convert.from_function(inference, input_signature=spec, opset=int(opset))
    proto.doc_string = ("daqsm target model: field_ppm (1,x,y,z,1) ppm and mask (1,x,y,z,1) 0/1 -> chi_ppm "
                        "(1,x,y,z,1) ppm; x, y, z divisible by 2**depth")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(proto.SerializeToString())
    return path


def check_volume(shape, seed: int = 0):
    """A field (ppm, smooth-ish random, ~0.05 ppm) and a ball mask, each (1, x, y, z, 1) float32."""
    rng = np.random.default_rng(seed)
    field = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (sum(g**2 for g in grid) < 0.8).astype(np.float32)
    return field[None, ..., None], mask[None, ..., None]


def compare_onnx(model, onnx_path: str, shape, seed: int = 0) -> float:
    """max |ONNX - Keras| in ppm on `check_volume(shape)` (onnxruntime, CPU)."""
    import onnxruntime as ort

    field, mask = check_volume(shape, seed)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {"field_ppm": field, "mask": mask})[0]
    want = np.asarray(model([field, mask], training=False))
    return float(np.max(np.abs(got - want)))


@dataclass(frozen=True)
class ExportConfig:
    """Settings of one export (config-file keys = field names; options daqsm.config)."""

    model: str | None = param(None, "target model (.keras) or a step-4 run folder")
    output: str | None = param(None, "output .onnx", flags=("-o",))
    opset: int = param(DEFAULT_OPSET, "ONNX opset", check="int>=1")
    check_size: tuple = param((32, 32, 32), "test volume (x y z voxels) for the onnxruntime check, rounded up to "
                              "2**depth", type=int, nargs=3, check="int>=1")
    overwrite: bool = param(False, "replace an existing output")

    def __post_init__(self):
        check_config(self, spell=option_name)  # the declared rules, for a config built directly too


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, ExportConfig, group_title=None, config_option=True)
    return p


def run(args: ExportConfig) -> dict:
    """Export, check, write the sidecar (it holds the resolved config); returns the sidecar record."""
    require(args, ("model", "output"))
    if not args.output.endswith(".onnx"):
        raise InputError(f"-o {args.output}: expected a file ending in .onnx")
    from daqsm.outputs import refuse_existing
    from daqsm.provenance import sidecar_path

    refuse_existing("-o", [args.output, sidecar_path(args.output)], args.overwrite)
    output_path("-o", args.output)  # before the model is read: a bad location costs no TensorFlow start
    _require_onnx()
    from daqsm.output_lock import claim_output

    # one export per output at a time; a killed export's temp files are removed by the next run
    with claim_output("-o", args.output, companions=[sidecar_path(args.output)]):
        return _export(args)


def _export(args: ExportConfig) -> dict:
    """The export itself, inside the output's lock."""
    from daqsm import provenance
    from daqsm.network_model.finetuning import load_target_model
    from daqsm.network_model.model_info import read_model_info, resolve_model_path
    from daqsm.provenance import write_sidecar

    model, info = load_target_model(args.model)
    divisor = 2 ** info["depth"]
    shape = tuple(int(-(-max(int(n), 1) // divisor) * divisor) for n in args.check_size)
    model_info = read_model_info(resolve_model_path(args.model))
    meta = {"daqsm_version": provenance.package_version(), "daqsm_divisor": str(divisor),
            "daqsm_units": "field_ppm: ppm, mask: 0/1, chi_ppm: ppm", "daqsm_model_info": model_info}
    from daqsm.outputs import atomic_path

    # exported and checked under a temp name: only a checked model ever has the final name
    with atomic_path(args.output) as staged:
        export_onnx(model, staged, args.opset, meta)
        try:
            diff = compare_onnx(model, staged, shape)
        except Exception as err:  # onnxruntime cannot load or run it: one line, nothing written
            raise InputError(f"-o {args.output}: the exported model fails its onnxruntime check "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                             "nothing written") from None
        if not diff <= TOLERANCE_PPM:
            raise InputError(f"-o {args.output}: ONNX output expected within {TOLERANCE_PPM:g} ppm of Keras, "
                             f"found max difference {diff:.3g} ppm; nothing written")
    record = provenance.build_record(
        "ONNX export of a daqsm target model (inference graph, target-domain BN)", None,
        sources=[args.model], d0=None, model=args.model,
        config=config_to_dict(args),
        Interface={"inputs": {"field_ppm": "float32 (1, x, y, z, 1), ppm", "mask": "float32 (1, x, y, z, 1), 0/1"},
                   "outputs": {OUTPUT_NAME: "float32 (1, x, y, z, 1), ppm"}, "divisor": divisor},
        Check={"runtime": "onnxruntime", "shape": list(shape), "max_abs_diff_ppm": diff,
               "tolerance_ppm": TOLERANCE_PPM})
    write_sidecar(args.output, record)
    print(f"wrote {args.output}: inputs field_ppm, mask (1, x, y, z, 1), x, y, z divisible by {divisor} "
          f"-> chi_ppm; onnxruntime vs keras max |diff| {diff:.2g} ppm on {shape}")
    return record


def main(argv=None) -> int:
    from daqsm import provenance

    args = build_parser().parse_args(argv)

    def body() -> int:
        run(resolve_config(ExportConfig, args.config, vars(args)))
        return 0

    with provenance.command(PROG, argv):
        return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
