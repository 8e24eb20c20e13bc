"""`daqsm-check`: run the input readers of the step that follows, without its model or TensorFlow.

    daqsm-check CASE_DIR
    daqsm-check --field F --mask M [--magnitude MAG] [--units ppm|ppb|hz|rad --b0 TESLA --te S]
    daqsm-check --step infer ...      (the inputs of daqsm-infer instead of step 5)
    daqsm-check --config FILE        (keys: the long option names, e.g. case, field, b0_tesla)

"ok" means the step accepts the inputs and reads them as printed, because this command calls the
step's own readers, not a copy: step 5 (default, `--step finetune`) reads with
`daqsm.network_model.finetuning.load_inputs` (daqsm-check's checks on the loaded arrays, then the NDI
phase scale, which step 5 needs: --b0 and --te, or b0_tesla and te_s in case.json); `--step infer`
with `daqsm.network_model.infer.read_inputs` (no phase scale needed). Both run the number rules of
their step. The checks themselves are daqsm/training_data/input_check.py. Prints what the step reads
and exits 0; exits 2 with the step's own one-line refusal otherwise. Nothing is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config
from daqsm.errors import InputError, run_cli

PROG = "daqsm-check"
STEPS = ("finetune", "infer")


@dataclass(frozen=True)
class CheckConfig:
    """What to check (config-file keys = field names; options daqsm.config). Nothing is written."""

    case: str | None = param(None, "case folder (local_field.nii.gz, mask.nii.gz, [magnitude.nii.gz, case.json]); "
                             "also the positional CASE_DIR")
    field: str | None = param(None, "local field map (NIfTI, FILE.mat[:VAR], .h5, .npy)")
    mask: str | None = param(None, "brain mask (0/1) on the field's grid")
    magnitude: str | None = param(None, "magnitude / NDI weight, step 5's --weight", aliases=("weight",))
    units: str = param("ppm", "field unit: ppm, ppb, hz or rad (any case)")
    b0_tesla: float | None = param(None, "B0 in tesla (needed for hz and rad, and step 5's phase scale)",
                                   aliases=("b0",))
    te_s: float | None = param(None, "echo time of the weighting echo in seconds (rad, step 5's phase scale)",
                               aliases=("te",))
    phase_rad_per_ppm: float | None = param(None, "step 5's explicit NDI phase scale", check="positive")
    voxel_size_mm: tuple | None = param(None, "voxel size override, mm", type=float, nargs=3,
                                        aliases=("voxel_size",))
    b0_dir: tuple | None = param(None, "B0 direction override, voxel axes", type=float, nargs=3)
    step: str = param("finetune", "the step whose readers run: finetune (step 5) or infer", choices=STEPS)


@dataclass
class StepReading:
    """What the step read, as it will use it (printed by `text`)."""

    step: str
    field_name: str
    shape: tuple
    mask_voxels: int
    voxel_size_mm: tuple
    b0_dir: tuple
    field_p99_ppm: float
    phase_rad_per_ppm: float | None
    weight_source: str = "the mask"
    geometry_sources: dict | None = None
    notes: list = dataclasses.field(default_factory=list)

    def text(self) -> str:
        vs, b0 = self.voxel_size_mm, self.b0_dir
        angle = math.degrees(math.acos(min(1.0, abs(b0[2]) / max(float(np.linalg.norm(b0)), 1e-12))))
        lines = [f"field {self.field_name}: shape {tuple(self.shape)}; mask {self.mask_voxels} voxels",
                 f"voxel size {vs[0]:.3g} x {vs[1]:.3g} x {vs[2]:.3g} mm; B0 direction (voxel axes) "
                 f"({b0[0]:.3f}, {b0[1]:.3f}, {b0[2]:.3f}), {angle:.1f} deg from the 3rd axis",
                 f"field: 99th percentile of |field| in the mask {self.field_p99_ppm:.4g} ppm"]
        if self.geometry_sources:
            src = self.geometry_sources
            lines.append(f"geometry from: voxel size {src.get('voxel_size_mm')}; B0 direction {src.get('b0_dir')}; "
                         f"output affine {src.get('affine')}")
        if self.step == "finetune":
            lines.append(f"weight W: {self.weight_source}")
            lines.append(f"phase scale {self.phase_rad_per_ppm:.4g} rad/ppm")
        else:
            lines.append("QC phase scale " + (f"{self.phase_rad_per_ppm:.4g} rad/ppm" if self.phase_rad_per_ppm
                                              else "unknown: the small-angle form"))
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _p99(field_ppm, mask) -> float:
    inside = np.abs(np.asarray(field_ppm, np.float64)[np.asarray(mask) > 0])
    return float(np.percentile(inside, 99)) if inside.size else 0.0


def read_for_finetune(cfg: CheckConfig) -> StepReading:
    """Step 5's readers (finetuning.load_inputs) and number rules on cfg's inputs."""
    from daqsm.network_model.finetune_core import check_params
    from daqsm.network_model.finetuning import FinetuneConfig, load_inputs
    from daqsm.network_model.target_data import phase_scale

    step_cfg = FinetuneConfig(case=cfg.case or "", field=cfg.field or "", mask=cfg.mask or "",
                              weight=cfg.magnitude or "", units=cfg.units, b0_tesla=cfg.b0_tesla, te_s=cfg.te_s,
                              phase_rad_per_ppm=cfg.phase_rad_per_ppm, voxel_size_mm=cfg.voxel_size_mm,
                              b0_dir=cfg.b0_dir)
    check_params(step_cfg)
    target = load_inputs(step_cfg)
    name = cfg.field or os.path.join(cfg.case, "local_field.nii.gz")
    notes = [target.geometry_note] if target.geometry_note else []
    return StepReading("finetune", name, target.field_ppm.shape, int(np.count_nonzero(target.mask)),
                       tuple(target.geometry.voxel_size_mm), tuple(target.geometry.b0_dir),
                       _p99(target.field_ppm, target.mask), phase_scale(target, step_cfg.phase_rad_per_ppm),
                       target.weight_source, target.geometry_sources, notes)


def read_for_infer(cfg: CheckConfig) -> StepReading:
    """Inference's readers (infer.read_inputs) and number rules on cfg's inputs."""
    from daqsm.network_model import infer

    step_cfg = infer.InferConfig(case=cfg.case, field=cfg.field, mask=cfg.mask, units=cfg.units,
                                 b0_tesla=cfg.b0_tesla, te_s=cfg.te_s, voxel_size_mm=cfg.voxel_size_mm,
                                 b0_dir=cfg.b0_dir)
    infer.check_params(step_cfg)
    notes: list = []
    field, mask, voxel_size, b0_dir, _affine, b0_tesla = infer.read_inputs(step_cfg, warn=notes.append)
    _weight, phase = infer.qc_weight_and_phase(step_cfg, b0_tesla)
    if cfg.magnitude:
        notes.append("daqsm-infer reads no magnitude: --magnitude was not checked")
    name = cfg.field or os.path.join(cfg.case, "local_field.nii.gz")
    return StepReading("infer", name, field.data.shape, int(np.count_nonzero(mask)), tuple(voxel_size),
                       tuple(b0_dir), _p99(field.data, mask), phase, "the mask",
                       field.attrs.get("geometry_sources"), notes)


def check(cfg: CheckConfig) -> StepReading:
    """Run the readers of `cfg.step` on the inputs; raises the step's InputError on the first problem."""
    if cfg.step not in STEPS:
        raise InputError(f"--step: expected one of {', '.join(STEPS)}, found {cfg.step!r}")
    return read_for_finetune(cfg) if cfg.step == "finetune" else read_for_infer(cfg)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[2])
    p.add_argument("positional_case", nargs="?", metavar="CASE_DIR", help="case folder (= --case)")
    add_config_options(p, CheckConfig, group_title=None, config_option=True)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if args.positional_case:
            values = {**values, "case": args.positional_case}
        from daqsm.network_model.config import key_option  # the steps' spelling, so the lines match

        reading = check(resolve_config(CheckConfig, args.config, values, spell=key_option))
        print(reading.text())
        print(f"{PROG}: ok ({'step 5' if reading.step == 'finetune' else 'daqsm-infer'} reads these inputs as shown)")
        return 0

    return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
