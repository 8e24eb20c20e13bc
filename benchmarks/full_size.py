"""The method's original size end to end, in resumable chunks of at most `--budget-s` (default 9 min).

    python benchmarks/full_size.py --data ../shared/data -w work_full        # call it again until "all done"
    python benchmarks/full_size.py --data ../shared/data -w work_full --precision mixed_float16
    python benchmarks/full_size.py --size tiny -w /tmp/full_tiny             # the same chain, seconds (CPU)

Original settings (docs: physics.md "Settings of the original implementation", README "The method's
real setup"): RC2-like targets at 1 mm from the RC2 segmentation; 500 synthetic maps from the 2016
COSMOS map (made in `parts` files of 50 maps, each a short stage, with seeds seed*1000 + part); their
field maps; one random 128^3 crop per synthetic map and 128^3 target crops; pre-training with a
depth-4, 16-filter U-Net, batch 2, Adam 1e-4, 6 epochs; fine-tuning and RC2 metrics on Sim2Snr1 (SNR1)
and Sim2Snr2 (SNR2).

Chunks: each call runs stages in order until the budget is spent. State lives in files in the work
folder: `full_size_state.json` (stages done, measured durations, pre-training rate, one record per
call) and each stage's own outputs. A stage starts only when its estimate (the measured duration of
its kind, else a default) fits what is left of the budget; pre-training, the long stage, is cut into
step ranges that fit (train.py resumes from its checkpoints and `max_steps` ends a range with a
checkpoint). A call killed mid-stage loses only that stage (outputs are written atomically and each
stage reruns with --overwrite); the next call continues. Exit status 0 while work is left or done;
the last line says which ("continue: ..." or "all done").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STATE = "full_size_state.json"
CASES = {"SNR1": "Sim2Snr1", "SNR2": "Sim2Snr2"}


@dataclass(frozen=True)
class FullSize:
    resolution_mm: float = 1.0
    n_maps: int = 500
    parts: int = 10
    patch_size: int = 128
    target_patch_size: int = 128
    depth: int = 4
    base_filters: int = 16
    batch_size: int = 2
    epochs: int = 6
    learning_rate: float = 1e-4
    finetune_iterations: int = 300
    probe_steps: int = 20            # pre-training steps of the first chunk (measures the rate)
    estimate_scale: float = 1.0      # x DEFAULT_ESTIMATE_S before a stage kind has been measured


SIZES = {"full": FullSize(),
         "tiny": FullSize(resolution_mm=6.0, n_maps=4, parts=2, patch_size=16, target_patch_size=16, depth=2,
                          base_filters=4, epochs=2, learning_rate=1e-3, finetune_iterations=3, probe_steps=2,
                          estimate_scale=0.02)}

#: seconds assumed for a stage kind before one has run (a GPU machine, full size)
DEFAULT_ESTIMATE_S = {"targets": 240, "chi": 90, "fields": 60, "patches": 300, "pretrain_probe": 180,
                      "finetune": 240, "infer": 60, "evaluate": 60}


@dataclass
class Stage:
    name: str
    kind: str
    run: object          # callable() -> None (raises on failure)


def load_state(workdir: Path) -> dict:
    path = workdir / STATE
    if path.exists():
        return json.loads(path.read_text())
    return {"done": [], "durations": {}, "calls": [],
            "pretrain": {"steps_done": 0, "s_per_step": None, "overhead_s": None}}


def save_state(workdir: Path, state: dict) -> None:
    tmp = workdir / (STATE + ".part")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, workdir / STATE)


def estimate(state: dict, kind: str, scale: float = 1.0) -> float:
    measured = state["durations"].get(kind)
    return max(measured) if measured else DEFAULT_ESTIMATE_S.get(kind, 120) * scale


def run_chunk(workdir: Path, stages: list, pretrain_chunk, budget_s: float, clock=time.monotonic,
              estimate_scale: float = 1.0) -> str:
    """Run what fits in `budget_s`; returns 'done' or 'continue'. The planning core, free of TensorFlow.

    Args:
        stages: Stage list in order; the one of kind 'pretrain' is run by `pretrain_chunk`.
        pretrain_chunk: callable(state, seconds_left) -> bool finished; updates state['pretrain'].
    """
    workdir.mkdir(parents=True, exist_ok=True)
    state = load_state(workdir)
    start = clock()
    call = {"ran": [], "budget_s": budget_s}
    state["calls"].append(call)
    try:
        for stage in stages:
            if stage.name in state["done"]:
                continue
            if stage.kind == "pretrain":
                finished = False
                while not finished:  # the probe range, then ranges sized to what is left
                    rate, overhead = state["pretrain"]["s_per_step"], state["pretrain"]["overhead_s"]
                    # at least two steps after start-up must fit (before any range: the probe's estimate)
                    needed = (estimate(state, "pretrain_probe", estimate_scale) if rate is None
                              else overhead + 2 * rate)
                    if call["ran"] and budget_s - (clock() - start) < needed:
                        return "continue"
                    t0 = clock()
                    finished = pretrain_chunk(state, budget_s - (clock() - start))
                    call["ran"].append(f"{stage.name}@{state['pretrain']['steps_done']}")
                    state["durations"].setdefault("pretrain_chunk", []).append(clock() - t0)
                    save_state(workdir, state)
            else:
                if call["ran"] and estimate(state, stage.kind, estimate_scale) > budget_s - (clock() - start):
                    return "continue"  # would overrun this call's budget: the next call starts with it
                t0 = clock()
                stage.run()
                state["durations"].setdefault(stage.kind, []).append(clock() - t0)
                call["ran"].append(stage.name)
            state["done"].append(stage.name)
            save_state(workdir, state)
        return "done"
    finally:
        call["wall_s"] = clock() - start
        save_state(workdir, state)


def _step(module_main, argv) -> None:
    argv = [str(a) for a in argv]
    print(f"$ {module_main.__module__} {' '.join(argv)}", file=sys.stderr, flush=True)
    status = module_main(argv)
    if status:
        raise SystemExit(f"full_size: {module_main.__module__} failed with status {status}")


def build_stages(args, size: FullSize, work: Path) -> tuple[list, object]:
    """The chain of the method's real setup, as stages; and the pre-training chunk function."""
    from daqsm.evaluation import cli as evaluate
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.train_model import train as pretrain
    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu
    from daqsm.training_data.simulator import simulate

    if args.data:
        data = Path(args.data)
        source_chi, source_mask = data / "qsm2016" / "chi_cosmos.nii.gz", data / "qsm2016" / "msk.nii.gz"
        target_source = data / "rc2_phantom"
    else:
        source_chi, source_mask = work / "source" / "chi.nii.gz", work / "source" / "mask.nii.gz"
        target_source = "builtin"
    per_part = math.ceil(size.n_maps / size.parts)
    chis = [work / f"chi_{k}.h5" for k in range(size.parts)]
    fields = [work / f"fields_{k}.h5" for k in range(size.parts)]
    cases = [work / "targets" / name for name in ("Sim1Snr1", "Sim1Snr2", "Sim2Snr1", "Sim2Snr2")]
    run_dir, patches = work / "pretrain", work / "patches.h5"
    precision = ["--precision", args.precision]

    def targets():
        if not args.data:
            from daqsm.evaluation.demo import write_builtin_source

            write_builtin_source(work / "source", size.resolution_mm, args.seed)
        _step(simulate.main, ["--source", target_source, "-o", work / "targets", "--resolution", size.resolution_mm,
                              "--seed", args.seed, "--quiet", "--overwrite"])

    stages = [Stage("targets", "targets", targets)]
    for k in range(size.parts):
        stages.append(Stage(f"chi_{k}", "chi", lambda k=k: _step(genChi.main, [
            source_chi, "--mask", source_mask, "-n", per_part, "-o", chis[k], "--seed", args.seed * 1000 + k,
            "--quiet", "--overwrite"])))
        stages.append(Stage(f"fields_{k}", "fields", lambda k=k: _step(qsmFmapCal_gpu.main, [
            chis[k], "-o", fields[k], "--overwrite"])))
    stages.append(Stage("patches", "patches", lambda: _step(genRDFPatchesSyn.main, [
        "--source", *chis, "--source-fields", *fields, "--target", *cases, "--patch-size", size.patch_size,
        "--no-grid", "--random-crops", 1, "--target-patch-size", size.target_patch_size, "-o", patches,
        "--seed", args.seed, "--quiet", "--overwrite"])))
    stages.append(Stage("pretrain", "pretrain", None))
    model = run_dir / "target_model.keras"
    for column, name in CASES.items():
        stages.append(Stage(f"finetune_{name}", "finetune", lambda name=name: _step(finetune.main, [
            "--model", model, "--case", work / "targets" / name, "-o", work / "finetuned" / f"{name}.nii.gz",
            "--iterations", size.finetune_iterations, "--progress", "false", "--overwrite", "true", *precision])))
        stages.append(Stage(f"infer_{name}", "infer", lambda name=name: _step(infer.main, [
            "--model", model, "--case", work / "targets" / name, "-o", work / "pretrained" / f"{name}.nii.gz",
            "--overwrite", *precision])))

    def tables():
        for label in ("finetuned", "pretrained"):
            argv = []
            for column, name in CASES.items():
                argv += ["--case", work / "targets" / name, "--recon", work / label / f"{name}.nii.gz",
                         "--name", column]
            _step(evaluate.main, argv + ["--markdown", work / f"table_{label}.md", "--json",
                                         work / f"table_{label}.json", "--overwrite"])

    stages.append(Stage("evaluate", "evaluate", tables))

    def pretrain_chunk(state: dict, seconds_left: float) -> bool:
        total = pretrain_total(patches, size)
        done, rate, overhead = (state["pretrain"][k] for k in ("steps_done", "s_per_step", "overhead_s"))
        # 10 % of the budget left as margin for the export and a slower step
        steps = size.probe_steps if rate is None else int((0.9 * seconds_left - overhead) / rate)
        target = min(total, done + max(1, steps))
        t0 = time.perf_counter()
        _step(pretrain.main, ["--datasets_path", patches, "-o", run_dir, "--depth", size.depth,
                              "--base_filters", size.base_filters, "--batch_size", size.batch_size,
                              "--epochs", size.epochs, "--learning_rate", size.learning_rate,
                              "--max_steps", target, "--checkpoint_every", 50, "--progress", "false",
                              "--seed", args.seed, *precision])
        wall = time.perf_counter() - t0
        rate = step_rate(run_dir / "log.csv", done) or wall / max(1, target - done)
        state["pretrain"].update(steps_done=target, total=total, s_per_step=rate,
                                 overhead_s=max(0.0, wall - rate * (target - done)))
        return target >= total

    return stages, pretrain_chunk


def step_rate(log_csv: Path, after_step: int) -> float | None:
    """Seconds per pre-training step after the first of a range, from log.csv's elapsed_s (the first
    step of a range carries the tracing); None with fewer than two rows."""
    import csv

    with open(log_csv, newline="") as fh:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(fh) if int(r["step"]) > after_step]
    if len(rows) < 2:
        return None
    return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])


def pretrain_total(patches: Path, size: FullSize) -> int:
    """Steps of `epochs` epochs, as train.py counts them (default val_fraction 0.1, seed 0)."""
    from daqsm.network_model.data import read_patch_group, split_indices

    source, target = read_patch_group(patches, "source"), read_patch_group(patches, "target")
    n_src = len(split_indices(source.count, 0.1, 0)[0])
    n_tgt = len(split_indices(target.count, 0.1, 1)[0])
    return size.epochs * max(1, math.ceil(n_src / size.batch_size), math.ceil(n_tgt / size.batch_size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--workdir", required=True, help="work folder (state and outputs)")
    parser.add_argument("--data", help="shared data folder (qsm2016/, rc2_phantom/); required for --size full")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds per call (default 540 = 9 min)")
    parser.add_argument("--precision", default="float32", help="float32 | mixed_float16 | mixed_bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-iterations", type=int)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.finetune_iterations:
        size = replace(size, finetune_iterations=args.finetune_iterations)
    if args.size == "full" and not args.data:
        parser.error("--size full needs --data (the 2016 COSMOS map and the RC2 segmentation)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "full_size_settings.json"
    current = {"size": asdict(size), "precision": args.precision, "seed": args.seed, "data": args.data}
    if settings.exists() and json.loads(settings.read_text()) != current:
        parser.error(f"{work}: was started with other settings ({settings}); use another --workdir")
    settings.write_text(json.dumps(current, indent=2))
    stages, pretrain_chunk = build_stages(args, size, work)
    outcome = run_chunk(work, stages, pretrain_chunk, args.budget_s, estimate_scale=size.estimate_scale)
    state = load_state(work)
    left = [s.name for s in stages if s.name not in state["done"]]
    call = state["calls"][-1]
    print(f"full_size: this call ran {', '.join(call['ran']) or 'nothing'} in {call['wall_s']:.0f} s")
    print("full_size: all done" if outcome == "done" else
          f"full_size: continue: {len(left)} stage(s) left ({left[0]} next); run the same command again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
