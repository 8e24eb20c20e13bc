"""Step 5 — per-dataset fine-tuning, the file shell: pre-trained target model + one field map (ppm) -> QSM (ppm, NIfTI).

The fine-tuning itself (objective NDI + lambda_tv * TV [+ prior], lambda_tv per case without truth,
stopping rule, BN in inference mode, padding) is daqsm/network_model/finetune_core.py
(`finetune_volume`, on arrays, writes nothing). This shell owns the files: it validates the config,
claims the output (lock, --overwrite), reads the inputs once and runs daqsm-check's checks on the
loaded arrays, calls the core, then writes the outputs atomically, the QSM last.

Output: OUT.nii.gz, OUT_model.keras, OUT_loss.csv, OUT.config.json, OUT.json (provenance sidecar,
daqsm/provenance.py: iterations, stop reason, noise estimate, lambda_tv with its rule and evidence,
residual / noise energy, model SHA-256, geometry, kernel convention) and the QC map
OUT_residual.nii.gz (ppm, daqsm/qc/residual.py) with OUT_residual.json. `--bids true` names the QSM
OUT_Chimap.nii.gz. The inputs pass daqsm-check's checks (daqsm/training_data/input_check.py) first.

Usage:
    python network_model/model_finetune/train.py --model runs/pre/target_model.keras \\
        --field field.nii.gz --mask mask.nii.gz [--weight mag.nii.gz] [--units hz --b0 3 --te 0.025] \\
        [--iterations 300] -o qsm.nii.gz
    python network_model/model_finetune/train.py --model M.keras --case cases/Sim1Snr1 -o qsm.nii.gz
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from daqsm.config import param, require
from daqsm.errors import InputError
from daqsm.network_model.config import write_resolved_config
from daqsm.network_model.finetune_core import centred_padding, check_params  # noqa: F401  (centred_padding: the step script's name)
from daqsm.network_model.tv_weight import SCAN_ITERATIONS
from daqsm.qc.tv_alpha import RESIDUAL_FACTOR

PROG = "model_finetune/train.py (step 5)"


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of step 5 (every field is a config key and a `--key value` option)."""

    model: str = param("", 'pre-trained target model (.keras) or step-4 run folder; default: the shipped model '
                       '(daqsm/models/, docs/model-card.md)')
    case: str = param("", 'case folder (contract 1) instead of field/mask/weight')
    field: str = param("", 'local field map (NIfTI, .mat v5/v7.3, .h5, .npy; FILE:VAR picks a variable)')
    mask: str = param("", 'brain mask (0/1), same grid')
    weight: str = param("", 'optional NDI weight / magnitude (normalised to max 1 in the mask)')
    units: str = param("ppm", 'field units: ppm, ppb, hz or rad')
    b0_tesla: float | None = param(None, 'B0 in tesla (hz/rad input, and the NDI phase scale)', aliases=("b0",))
    te_s: float | None = param(None,
        'echo time of the weighting echo in seconds (rad input, phase scale)', aliases=("te",))
    phase_rad_per_ppm: float | None = param(None, 'explicit NDI phase scale; else 2 pi gamma_bar b0 te', check="positive")
    voxel_size_mm: tuple[float, float, float] | None = param(None, "override the file's voxel size")
    b0_dir: tuple[float, float, float] | None = param(None, 'override (voxel axes); else from the affine')
    iterations: int = param(300, 'at most', check="int>=0")
    max_minutes: float = param(0.0, "wall-time budget of fine-tuning, the TV weight's scan included: stop after the "
                               "first iteration that ends past it, stop reason 'time' (0: no limit)",
                               check="non_negative")
    fast: bool = param(False, "no fine-tuning: the pre-trained network's map with the same QC residual and sidecar "
                       "(seconds)")
    learning_rate: float = param(1e-3, 'measured: demo Sim2Snr1 rmse 49.0 at 150 it. vs 52.1 with 1e-4', check="positive")
    lr_schedule: str = param("constant", 'learning-rate schedule', choices=("constant", "cosine", "exponential"))
    warmup_iterations: int = param(10, 'linear learning-rate ramp at the start', check="int>=0")
    lambda_tv: str = param("auto", "TV weight: 'auto' picks it per case without ground truth (NLTV's discrepancy "
                           "rule mapped to network units, daqsm/network_model/tv_weight.py); a number overrides it")
    lambda_scan_iterations: int = param(SCAN_ITERATIONS, "--lambda-tv auto: NLTV iterations per alpha of the scan",
                                        check="int>=1")
    residual_factor: float = param(RESIDUAL_FACTOR, "--lambda-tv auto: kappa of the rule's residual target max(kappa x noise "
                                   "residual, 1.3 x residual floor); the truth's own residual is larger where the "
                                   "field holds model error (benchmarks/results_baselines.md); the stop's target "
                                   "stays max(noise, 1.3 x floor)", check="positive")
    prior: str = param("none", "keep the pre-trained prior: none, map (pull to the pre-trained map) or weights "
                       "(L2-SP)", choices=("none", "map", "weights"))
    prior_weight: float = param(0.0, "weight of the prior term (network units)", check="non_negative")
    trainable: str = param("all", "weights updated: all, decoder (decoder + output layer) or norm (BN gamma/beta)",
                           choices=("all", "decoder", "norm"))
    stop_model_error: bool = param(True, "the discrepancy stop uses the lambda rule's target (noise + model "
                                   "error floor) when it is larger than the noise energy")
    dipole_pad: str = param("auto", 'FFT zero-padding of the dipole model (daqsm.training_data.dipole)')
    tau: float = param(1.0, 'discrepancy principle: stop when NDI <= tau * noise energy; 0: off', check="non_negative")
    noise_ppm: float | None = param(None, 'std of W * field noise (ppm); None: estimated from the field', check="non_negative")
    convergence_window: int = param(30, 'iterations per window of the flat-loss test (longer than an Adam spike takes '
                                    'to recover)', check="int>=1")
    convergence_tol: float = param(1e-3, 'stop when a window improves the loss by less than this (relative); 0: off',
                                   check="non_negative")
    output: str = param("",
        'output QSM NIfTI (ppm); also OUT_model.keras, OUT_loss.csv, OUT.config.json, OUT.json', flags=("-o",))
    bids: bool = param(False, 'name the QSM the BIDS way: OUT_Chimap.nii.gz (daqsm/provenance.py)')
    overwrite: bool = param(False, 'replace existing outputs')
    seed: int = param(0, "seed of the weights' initial state and any randomness")
    progress: bool = param(True, 'progress bar (--quiet: none)', negation="quiet")
    precision: str = param("float32",
        'compute precision; OUT_model.keras stays float32', choices=("float32", "mixed_float16", "mixed_bfloat16"))


def output_paths(output: str) -> dict:
    """Companion files of OUT.nii.gz: OUT_model.keras, OUT_loss.csv, OUT.config.json, OUT.json (sidecar),
    OUT_residual.nii.gz (QC residual map, ppm) and its sidecar OUT_residual.json."""
    from daqsm.outputs import qsm_set

    return qsm_set(output)  # the one companion rule (steps 5, infer, baselines)


def load_target_model(path: str):
    """Load an exported target model of this package (contract 3): (model, depth and scales)."""
    from daqsm.network_model.model_info import load_model_file
    from daqsm.network_model.unet import describe_target_model

    model = load_model_file(path)
    try:
        info = describe_target_model(model)
    except (ValueError, KeyError) as err:
        raise InputError(f"model {path}: not a target model of this package ({err})") from None
    return model, info


def load_inputs(cfg: FinetuneConfig):
    """Read the inputs once, run daqsm-check's checks on what was read (target_data.load_case/_files) and
    require the NDI phase scale (target_data.phase_scale): everything step 5 refuses in its inputs.

    `daqsm-check` (daqsm/network_model/check_cli.py) calls this function, so its "ok" is step 5's.
    """
    from daqsm.network_model.target_data import load_case, load_files, phase_scale

    if cfg.case:
        if cfg.field or cfg.mask:
            raise InputError("give either --case or --field/--mask, not both")
        target = load_case(cfg.case, cfg.voxel_size_mm, cfg.b0_dir, check=True)
    else:
        require(cfg, ("field", "mask"), alternative="--case DIR")
        target = load_files(cfg.field, cfg.mask, cfg.weight or None, cfg.units, cfg.b0_tesla, cfg.te_s,
                            cfg.voxel_size_mm, cfg.b0_dir, check=True)
    phase_scale(target, cfg.phase_rad_per_ppm)
    return target


def finetune(cfg: FinetuneConfig, monitor=None, monitor_every: int = 10) -> int:
    """Run step 5; returns the exit status (0, or 1 when stopped on a non-finite loss).

    Args:
        cfg: the resolved config.
        monitor: optional callable(iteration, chi) with chi float32 (x, y, z) ppm on the full grid,
            called after every `monitor_every` updates (benchmarks compare iterates with a ground
            truth here; the stopping rule never sees it).
    """
    require(cfg, ("output",))
    if not cfg.case:
        require(cfg, ("field", "mask"), alternative="--case DIR")
    if cfg.bids:
        from dataclasses import replace

        from daqsm.provenance import bids_chimap_path

        cfg = replace(cfg, output=bids_chimap_path(cfg.output), bids=False)
    from daqsm.output_lock import check_qsm_set, claim_qsm_set

    inputs = [cfg.case] if cfg.case else [cfg.field, cfg.mask, cfg.weight]
    check_qsm_set("-o", cfg.output, cfg.overwrite, inputs)  # the whole set, before any work
    check_params(cfg)
    if cfg.fast:  # the pre-trained map: zero updates, everything else (QC, sidecar) as fine-tuning writes it
        from dataclasses import replace

        cfg = replace(cfg, iterations=0)
    if not cfg.model:  # the shipped pre-trained model, verified against its manifest
        from dataclasses import replace

        from daqsm.network_model.shipped import default_model_path

        cfg = replace(cfg, model=default_model_path())
    from daqsm.network_model.precision import check_precision

    check_precision(cfg.precision)
    with claim_qsm_set("-o", cfg.output, cfg.overwrite, inputs) as qset:
        return _finetune(cfg, qset, monitor, monitor_every)


def _finetune(cfg: FinetuneConfig, qset, monitor, monitor_every: int) -> int:
    """The file shell around the core (daqsm.network_model.finetune_core), inside the lock of the output's
    whole set (daqsm.output_lock.QsmSet); the QSM is written last (qset.commit)."""
    import csv

    from daqsm.network_model.finetune_core import finetune_volume
    from daqsm.network_model.model_info import save_model_atomic, spatial_divisor, write_model_info
    from daqsm.network_model.precision import check_device, check_precision
    from daqsm.network_model.target_data import phase_scale
    from daqsm.outputs import atomic_path
    from daqsm.provenance import write_sidecar
    from daqsm.training_data.volume_io import write_volume

    paths = qset.paths
    precision = check_precision(cfg.precision)
    target = load_inputs(cfg)  # read once, checked on the loaded arrays, phase scale known
    if getattr(target, "geometry_note", None):
        print(f"{PROG}: warning: {target.geometry_note}", file=sys.stderr)
    phase = phase_scale(target, cfg.phase_rad_per_ppm)
    check_device(precision)
    model, info = load_target_model(cfg.model)
    result = finetune_volume(model, target, cfg, info, monitor, monitor_every,
                             say=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    if result.status == "nan":
        print(f"{PROG}: stopped: non-finite loss at iteration {result.record['FineTuning']['iterations']}; "
              "nothing written (lower --learning_rate or check the field units)", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    # the QSM goes last: a run killed before it leaves an incomplete set that the rerun replaces, and
    # an --overwrite rerun removes the old QSM first, so it never stands beside new companions
    qset.start_writing()
    save_model_atomic(result.model, paths["model"])
    write_model_info(paths["model"], target.geometry.voxel_size_mm, target.geometry.b0_dir,
                     spatial_divisor(result.model), fine_tuned_on=str(cfg.case or cfg.field))
    columns = list(dict.fromkeys(k for row in result.log for k in row))
    with atomic_path(paths["log"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        writer.writeheader()
        writer.writerows(result.log)
    write_resolved_config(cfg, paths["config"])
    ft = result.record["FineTuning"]
    what = "fine-tuned"
    if cfg.iterations == 0:  # --fast
        ft["stop_reason"], what = "fast: pre-trained network, no fine-tuning", "pre-trained"
    qc = write_residual(paths, result.chi, target, cfg.dipole_pad, float(phase), ft["noise_ppm"], cfg, what)
    record = {"Units": "ppm", "Description": f"susceptibility map, {what} domain-adaptive network (step 5)",
              **result.record, "QC": qc}
    if getattr(target, "geometry_sources", None):  # where voxel size, B0 direction and affine came from
        record["GeometrySources"] = target.geometry_sources
    write_sidecar(paths["qsm"], provenance_record(cfg, target, what), record)
    qset.commit(lambda qsm: write_volume(qsm, result.chi, target.affine, target.header))  # last: the set is complete
    initial, final, energy = ft["initial"], ft["final"], ft["noise_energy"]
    ratio = f", ndi / noise energy {final['ndi'] / energy:.3g}" if energy else ""
    print(f"{PROG}: stopped ({ft['stop_reason']}) after {ft['iterations']} iterations, lambda_tv "
          f"{ft['lambda_tv']:.4g} ({ft['LambdaTV']['rule']}): loss {initial['loss']:.5g} -> "
          f"{final['loss']:.5g} (ndi {initial['ndi']:.5g} -> {final['ndi']:.5g}{ratio}); wrote {paths['qsm']}")
    return 0


def provenance_record(cfg: FinetuneConfig, target, what: str) -> dict:
    """The sidecar's provenance keys (daqsm/provenance.py) for this run's outputs."""
    from daqsm.provenance import build_record
    from daqsm.training_data.formats.case_folder import read_info

    b0 = cfg.b0_tesla
    if cfg.case and b0 is None:
        b0 = read_info(cfg.case).get("b0_tesla")
    sources = [cfg.case] if cfg.case else [cfg.field, cfg.mask, cfg.weight]
    return build_record(f"{what} network (step 5)", "ppm", sources=sources, b0_tesla=b0,
                        b0_dir=target.geometry.b0_dir, voxel_size_mm=target.geometry.voxel_size_mm,
                        dipole_pad=cfg.dipole_pad, config=cfg, model=cfg.model)


def write_residual(paths: dict, chi, target, dipole_pad, phase: float, noise_ppm, cfg, what: str) -> dict:
    """QC residual map (daqsm/qc/residual.py) beside the QSM, with its sidecar; returns the summary."""
    from daqsm.network_model.tiling import brain_box
    from daqsm.provenance import write_sidecar
    from daqsm.qc.residual import residual_in_box
    from daqsm.training_data.volume_io import write_volume

    geometry = target.geometry
    box = brain_box(target.mask, 8)  # memory set by the brain, not the grid (as inference's QC)
    residual, summary = residual_in_box(chi, target.field_ppm, target.mask, target.weight, geometry.voxel_size_mm,
                                        geometry.b0_dir, dipole_pad, phase, box, noise_ppm)
    summary["NoiseEstimated"] = cfg.noise_ppm is None
    write_volume(paths["residual"], residual, target.affine, target.header)
    write_sidecar(paths["residual"], provenance_record(cfg, target, what),
                  {"Description": f"weighted data-consistency residual W|exp(i s f) - exp(i s D*chi)|/s of "
                                  f"{os.path.basename(paths['qsm'])} (ppm)", "PhaseRadPerPpm": phase, "QC": summary})
    return summary
