"""`daqsm-demo`: the five steps in order, then evaluation, in one output folder.

    daqsm-demo -o demo_out                      # built-in phantom, ~10 min on a 2-core CPU
    daqsm-demo -o real_out --data ../shared/data  # the method's setup: 2016 COSMOS -> RC2-like cases
    daqsm-demo -o tiny_out --size tiny          # every code path in well under a minute (a smoke test)
    daqsm-demo -o demo_out --overwrite          # run again: the demo's own folder is replaced whole

Sizes: `tiny` checks that every code path runs (6 mm, 2 maps, 3 training steps: its table is a smoke
test, not a result); `small` (default) is the method at 3 mm on a laptop CPU; `real` is the method's
geometry (1 mm, 64^3 patches, depth 4), default with --data. `--pretrain-steps` and
`--finetune-iterations` override the size's step-4 steps and step-5 iterations.

Source domain: the built-in phantom (a different seed and no calcification) or, with --data, the
2016 challenge COSMOS map. Target domain: the four RC2-like cases Sim{1,2}Snr{1,2} simulated from
the built-in phantom or, with --data, from the RC2 segmentation. Each step runs through the same
`main(argv)` as its documented command, and the command is printed.

Output folder:
    source/                 source chi (ppm) and mask the synthetic maps start from
    targets/Sim*Snr*/       RC2-like cases (daqsm.training_data.simulator.simulate layout)
    step1_chi.h5            synthetic susceptibility maps (ppm)           step 1
    step2_fields.h5         their field maps (ppm)                         step 2
    step3_patches.h5        source + target patches                        step 3
    step4_pretrain/         run folder, log.csv, target_model.keras        step 4
    pretrained/ finetuned/  QSM (ppm) of Sim2Snr1 (SNR1) and Sim2Snr2 (SNR2); step 5 logs
    table.md/.csv/.json     RC2 metrics of the fine-tuned network (SNR1, SNR2)
    table_pretrained.*      the same for the pre-trained network
    figures/                orthogonal slices (recon, truth, difference) and loss curves
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from daqsm.config import ArgumentParser, add_config_options, param, resolve_config, write_config
from daqsm.errors import InputError, output_path, run_cli
from daqsm.outputs import config_companion, qsm_set
from daqsm.validate import integer_at_least

PROG = "daqsm-demo"
#: marker file of a folder the demo made: --overwrite replaces only such a folder
MARKER = ".daqsm-demo"
COLUMNS = {"SNR1": "Sim2Snr1", "SNR2": "Sim2Snr2"}


@dataclass(frozen=True)
class DemoSize:
    """Sizes of one demo run (resolution of the targets, number of maps, network, iterations)."""

    resolution_mm: float = 3.0
    n_maps: int = 16
    patch_size: int = 32
    target_patch_size: int = 0       # 0: step 3's whole-brain target crops
    target_batch_size: int = 1
    depth: int = 3
    base_filters: int = 12
    pretrain_steps: int = 500
    finetune_iterations: int = 150
    finetune_lr: float = 1e-3
    lambda_tv_finetune: str = "auto"  # per case from the data (daqsm/network_model/tv_weight.py)
    tile: int = 0


SIZES = {
    # a fixed lambda keeps the tiny run (the test suite's golden files) free of the lambda rule's scan
    "tiny": DemoSize(resolution_mm=6.0, n_maps=2, patch_size=16, depth=2, base_filters=4, pretrain_steps=3,
                     finetune_iterations=3, lambda_tv_finetune="0.002"),
    # 48^3 target crops hold most of a 3 mm brain (144 mm) at a CPU demo's cost
    "small": DemoSize(target_patch_size=48),
    # the method's geometry (1 mm RC2 grid, 64^3 patches, 4 poolings) with a CPU-sized network
    "real": DemoSize(resolution_mm=1.0, n_maps=24, patch_size=64, target_patch_size=128, depth=4, base_filters=8,
                     pretrain_steps=500, finetune_iterations=100),
}


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo (config-file keys = field names; options daqsm.config)."""

    output: str = param("demo_out", "output folder", flags=("-o",))
    data: str | None = param(None, "shared data folder with qsm2016/ and rc2_phantom/: run the method's real setup")
    size: str | None = param(None, "tiny | small (default) | real (default with --data)", choices=tuple(sorted(SIZES)))
    pretrain_steps: int | None = param(None, "override the number of pre-training steps")
    finetune_iterations: int | None = param(None, "override the fine-tuning iterations")
    seed: int = param(0, "seed of every step")
    overwrite: bool = param(False, "replace an existing output folder made by the demo (all of it)")
    progress: bool = param(True, "progress bars in every step (--quiet: none)", negation="quiet")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(parser, DemoConfig, group_title=None, config_option=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from daqsm.output_lock import folder_removed_on_error

        cfg = resolve_config(DemoConfig, args.config, vars(args))
        with folder_removed_on_error(cfg.output):
            return run_demo(cfg)

    return run_cli(body, PROG)


def _step(title: str, module_main, argv) -> None:
    """Print the documented command, run it in-process, stop on failure."""
    argv = [str(a) for a in argv]
    print(f"\n== {title}\n$ {module_main.__module__} {shlex.join(argv)}", file=sys.stderr, flush=True)
    status = module_main(argv)
    if status:
        raise SystemExit(status)


def run_demo(args) -> int:
    from daqsm.evaluation import cli as evaluate
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.train_model import train as pretrain
    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu
    from daqsm.training_data.simulator import simulate

    size = SIZES[args.size or ("real" if args.data else "small")]
    if args.pretrain_steps:
        size = replace(size, pretrain_steps=args.pretrain_steps)
    if args.finetune_iterations:
        size = replace(size, finetune_iterations=args.finetune_iterations)
    for option, value in (("--pretrain-steps", args.pretrain_steps), ("--finetune-iterations", args.finetune_iterations)):
        if value is not None:
            integer_at_least(option, value, 1)
    if args.data:  # checked before the output folder is made: a wrong --data leaves nothing behind
        data = Path(args.data)
        for needed in (data / "qsm2016" / "chi_cosmos.nii.gz", data / "rc2_phantom" / "SegmentedModel.nii.gz"):
            if not needed.exists():
                raise InputError(f"--data {data}: expected {needed.relative_to(data)}, not found")
    out = Path(args.output)
    output_path("-o", out, kind="folder")
    if out.exists() and any(out.iterdir()):
        replace_demo_folder(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by daqsm-demo: `daqsm-demo --overwrite` may replace this whole folder\n")
    quiet = [] if args.progress else ["--quiet"]
    smoke = (args.size or ("real" if args.data else "small")) == "tiny"

    # Source domain map and target-domain cases
    if args.data:
        data = Path(args.data)
        source_chi, source_mask = data / "qsm2016" / "chi_cosmos.nii.gz", data / "qsm2016" / "msk.nii.gz"
        target_source = data / "rc2_phantom"
    else:
        source_chi, source_mask = write_builtin_source(out / "source", size.resolution_mm, args.seed)
        target_source = "builtin"
    _step("targets: RC2-like cases", simulate.main,
          ["--source", target_source, "-o", out / "targets", "--resolution", size.resolution_mm, "--seed", args.seed,
           ] + quiet)
    cases = sorted(p for p in (out / "targets").iterdir() if p.is_dir())

    _step("step 1: synthetic susceptibility maps", genChi.main,
          [source_chi, "--mask", source_mask, "-n", size.n_maps, "-o", out / "step1_chi.h5", "--seed", args.seed]
          + quiet)
    _step("step 2: field maps", qsmFmapCal_gpu.main, [out / "step1_chi.h5", "-o", out / "step2_fields.h5"])
    _step("step 3: patches", genRDFPatchesSyn.main,
          ["--source", out / "step1_chi.h5", "--source-fields", out / "step2_fields.h5", "--target", *cases,
           "--patch-size", size.patch_size, "-o", out / "step3_patches.h5", "--seed", args.seed, *quiet]
          + (["--target-patch-size", size.target_patch_size] if size.target_patch_size else []))
    run_dir = out / "step4_pretrain"
    _step("step 4: domain-adaptive pre-training", pretrain.main,
          ["--datasets_path", out / "step3_patches.h5", "-o", run_dir, "--depth", size.depth,
           "--base_filters", size.base_filters, "--max_steps", size.pretrain_steps, "--batch_size", 2,
           "--target_batch_size", size.target_batch_size,
           "--learning_rate", 1e-3 if size.pretrain_steps < 2000 else 1e-4, "--lr_schedule", "cosine",
           "--validate_every", max(size.pretrain_steps // 4, 1), "--seed", args.seed,
           "--progress", str(args.progress).lower(), "--resume", "false"])
    model = run_dir / "target_model.keras"

    recon = {"pretrained": {}, "finetuned": {}}
    for column, case_name in COLUMNS.items():
        case = out / "targets" / case_name
        pre = out / "pretrained" / f"{case_name}.nii.gz"
        tiling = ["--tile", size.tile, "--overlap", size.tile // 3] if size.tile else ["--whole"]
        _step(f"pre-trained network on {case_name}", infer.main,
              ["--model", model, "--case", case, "-o", pre] + tiling)
        fine = out / "finetuned" / f"{case_name}.nii.gz"
        _step(f"step 5: fine-tuning on {case_name}", finetune.main,
              ["--model", model, "--case", case, "--iterations", size.finetune_iterations,
               "--learning_rate", size.finetune_lr, "--lambda_tv", size.lambda_tv_finetune, "-o", fine,
               "--progress", str(args.progress).lower(), "--seed", args.seed])
        recon["pretrained"][column], recon["finetuned"][column] = pre, fine

    for label, suffix in (("pretrained", "_pretrained"), ("finetuned", "")):
        argv = []
        for column, case_name in COLUMNS.items():
            argv += ["--case", out / "targets" / case_name, "--recon", recon[label][column], "--name", column]
        argv += ["--markdown", out / f"table{suffix}.md", "--csv", out / f"table{suffix}.csv",
                 "--json", out / f"table{suffix}.json", "--title", f"RC2 metrics, {label} network" + SMOKE_NOTE * smoke,
                 "--overwrite"]
        _step(f"evaluation: {label} network", evaluate.main, argv)

    from daqsm.evaluation import figures

    figs = out / "figures"
    for label, columns in recon.items():
        for column, path in columns.items():
            case = out / "targets" / COLUMNS[column]
            _step(f"figure: {label} {column}", figures.main,
                  ["slices", "--recon", path, "--truth", case / "chi.nii.gz", "--mask", case / "mask.nii.gz",
                   "-o", figs / f"{label}_{column}.png", "--title", f"{label} network, {COLUMNS[column]}", "--overwrite"])
    _step("figure: pre-training loss", figures.main, ["losses", run_dir / "log.csv", "-o", figs / "pretrain_loss.png",
                                                       "--overwrite"])
    for column, case_name in COLUMNS.items():
        log = qsm_set(out / "finetuned" / f"{case_name}.nii.gz")["log"]
        _step(f"figure: fine-tuning loss {column}", figures.main,
              ["losses", log, "-o", figs / f"finetune_loss_{column}.png", "--overwrite"])
    write_config(args, config_companion(out, "demo", folder=True))  # the demo's own options; each step wrote its own
    print(f"\n{PROG}: done; results in {out} (table.md, table.json, figures/, demo_config.json)", file=sys.stderr)
    if smoke:
        print(f"{PROG}: note: --size tiny is a smoke test of the code paths; its table means nothing "
              "(the default size gives the README's table)", file=sys.stderr)
    return 0


SMOKE_NOTE = (" — SMOKE TEST (--size tiny: 6 mm, 2 maps, 3 training steps; checks that every step runs, "
              "the numbers mean nothing)")


def replace_demo_folder(out: Path, overwrite: bool) -> None:
    """Empty an existing demo output folder for a new run, but only one the demo made (its MARKER)."""
    import shutil

    if not overwrite:
        raise InputError(f"-o {out}: folder exists and is not empty; use --overwrite")
    if not (out / MARKER).is_file():
        raise InputError(f"-o {out}: expected a folder made by daqsm-demo (with {MARKER}) to replace, found "
                         "another non-empty folder; choose a new -o")
    from daqsm.output_lock import claim_output

    with claim_output("-o", out, kind="folder"):  # a demo still writing into it holds step locks; refuse rather than race
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def write_builtin_source(folder: Path, resolution_mm: float, seed: int):
    """Source-domain map from the built-in phantom: another texture seed, no calcification."""
    import numpy as np

    from daqsm.training_data.simulator.phantom import make_phantom
    from daqsm.training_data.volume_io import write_volume

    phantom = make_phantom(resolution_mm, seed=seed + 1000, calcification=False)
    chi_path, mask_path = folder / "chi.nii.gz", folder / "mask.nii.gz"
    write_volume(chi_path, phantom.chi_ppm, affine=phantom.affine)
    write_volume(mask_path, phantom.mask.astype(np.uint8), affine=phantom.affine)
    from daqsm.provenance import build_record, write_sidecar

    settings = {"resolution_mm": resolution_mm, "seed": seed + 1000, "calcification": False}
    for path, what, units in ((chi_path, "built-in phantom susceptibility (source domain)", "ppm"),
                              (mask_path, "built-in phantom brain mask", None)):
        write_sidecar(path, build_record(what, units, sources=["builtin"], voxel_size_mm=phantom.voxel_size_mm,
                                         d0=None, config=settings))
    return chi_path, mask_path


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
