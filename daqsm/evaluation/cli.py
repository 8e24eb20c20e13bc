"""`python -m daqsm.evaluation` / `daqsm-evaluate`: RC2 metric table for one or more reconstructions.

Columns (one per dataset, e.g. SNR1, SNR2) come from repeated option sets
    --recon R --truth T --seg S --mask M [--name SNR1]
from case folders (data contract 1: truth, segmentation and mask read from the folder)
    --case CASE_DIR --recon R [--name ...]
or from a config file (JSON/YAML) `{"columns": [{"name", "recon", "truth", "seg", "mask", "case"}],
"json": ..., "csv": ..., "markdown": ..., "extra": false, "overwrite": false}` (paths relative to
the config file). A single --truth/--seg/--mask/--case is shared by all --recon (methods side by side).
`--challenge2016 DIR` evaluates against the 2016 challenge's chi_33 (and chi_cosmos), with per-ROI
means of its evaluation_mask.

Units: all volumes in ppm. Exit status 2 on bad input; nothing is written then.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, fields

from daqsm.config import ArgumentParser, require
from daqsm.errors import InputError, output_path, run_cli

PROG = "python -m daqsm.evaluation"
CASE_FILES = {"truth": "chi.nii.gz", "seg": "segmentation.nii.gz", "mask": "mask.nii.gz"}
CHALLENGE_2016_FILES = {"truth": "chi_33.nii.gz", "mask": "msk.nii.gz", "rois": "evaluation_mask.nii.gz",
                        "cosmos": "chi_cosmos.nii.gz"}


@dataclass(frozen=True)
class ColumnSpec:
    """One table column: a reconstruction and what it is compared with (paths)."""

    name: str
    recon: str
    truth: str | None = None
    seg: str | None = None
    mask: str | None = None
    case: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    """Outputs and options of one evaluation run (defaults = command-line defaults)."""

    columns: tuple = ()
    json: str | None = None
    csv: str | None = None
    markdown: str | None = None
    extra: bool = False
    overwrite: bool = False
    challenge2016: str | None = None
    title: str | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    col = parser.add_argument_group("columns (repeat each option once per column)")
    col.add_argument("--recon", action="append", default=[], help="reconstruction, ppm (NIfTI/.mat/.h5/.npy)")
    col.add_argument("--truth", action="append", default=[], help="ground-truth susceptibility, ppm")
    col.add_argument("--seg", action="append", default=[], help="RC2 segmentation (labels 1-16)")
    col.add_argument("--mask", action="append", default=[], help="evaluation (brain) mask, 0/1")
    col.add_argument("--name", action="append", default=[], help="column name (default: case folder or file name)")
    col.add_argument("--case", action="append", default=[],
                     help="case folder with chi.nii.gz, segmentation.nii.gz, mask.nii.gz")
    parser.add_argument("--config", help="JSON/YAML file listing the columns and outputs")
    parser.add_argument("--challenge2016", metavar="DIR",
                        help="2016 challenge folder (chi_33, msk, evaluation_mask [, chi_cosmos])")
    parser.add_argument("--json", help="write {metric: {column: value}} here")
    parser.add_argument("--csv", help="write the table as CSV here")
    parser.add_argument("--markdown", help="write the table as Markdown here")
    parser.add_argument("--extra", action="store_true", default=None,
                        help="add HFEN, XSIM and correlation rows to the eight RC2 rows")
    parser.add_argument("--title", help="title line of the Markdown table")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace existing outputs")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), PROG)


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


# --- configuration ---------------------------------------------------------------------------


def load_config_file(path) -> dict:
    """Read a JSON or YAML mapping; relative paths in it are resolved against its folder."""
    from daqsm.config import read_config_file, unknown_key

    data = read_config_file(path)
    known = {f.name for f in fields(EvaluateConfig)}
    for key in data:  # the one layer's rule (daqsm/config.py); columns are a list of mappings
        if key not in known:
            raise unknown_key(f"config {path}", key, sorted(known))
    base = os.path.dirname(os.path.abspath(path))
    resolve = lambda p: p if p is None or os.path.isabs(str(p)) else os.path.join(base, str(p))  # noqa: E731
    columns = []
    col_keys = {f.name for f in fields(ColumnSpec)}
    for i, col in enumerate(data.get("columns") or []):
        if not isinstance(col, dict):
            raise InputError(f"--config {path}: columns[{i}] must be a mapping")
        for key in col:
            if key not in col_keys:
                raise unknown_key(f"config {path}: columns[{i}]", key, sorted(col_keys))
        if "recon" not in col:
            raise InputError(f"--config {path}: columns[{i}] has no 'recon'")
        columns.append({k: (resolve(v) if k != "name" else v) for k, v in col.items()})
    data["columns"] = columns
    for key in ("json", "csv", "markdown", "challenge2016"):
        if data.get(key) is not None:
            data[key] = resolve(data[key])
    return data


def resolve_config(args) -> EvaluateConfig:
    """Config file first, then command-line options override (columns: one source only)."""
    settings = load_config_file(args.config) if args.config else {}
    cli_columns = _columns_from_args(args, bool(args.challenge2016 or settings.get("challenge2016")))
    if cli_columns and settings.get("columns"):
        raise InputError("columns: give them either in --config or with --recon on the command line, not both")
    if cli_columns:
        columns = cli_columns
    else:
        columns = [_fill_column(ColumnSpec(**{"name": None, **c}), i)
                   for i, c in enumerate(settings.get("columns", []))]
    for key in ("json", "csv", "markdown", "extra", "overwrite", "challenge2016", "title"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    settings["columns"] = tuple(columns)
    if not columns:
        require(args, ("recon",), alternative="--config FILE with columns")
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"column names must differ; {', '.join(dupes)} used twice (give --name per column)")
    return EvaluateConfig(**settings)


def _columns_from_args(args, challenge: bool) -> list:
    n = len(args.recon)
    lists = {"truth": args.truth, "seg": args.seg, "mask": args.mask, "name": args.name, "case": args.case}
    if n == 0:
        given = [f"--{k}" for k, v in lists.items() if v]
        if given:
            raise InputError(f"{', '.join(given)} given without --recon")
        return []
    for key, values in lists.items():
        if values and len(values) not in (1, n) or (key == "name" and values and len(values) != n):
            raise InputError(f"--{key}: given {len(values)} times for {n} --recon; expected once or once per --recon")
    columns = []
    for i in range(n):
        pick = {k: (v[i] if len(v) == n else v[0]) if v else None for k, v in lists.items()}
        spec = ColumnSpec(name=pick["name"], recon=args.recon[i], truth=pick["truth"], seg=pick["seg"],
                          mask=pick["mask"], case=pick["case"])
        columns.append(spec if challenge else _fill_column(spec, i))
    if challenge:
        columns = [ColumnSpec(**{**c.__dict__, "name": c.name or _stem(c.recon)}) for c in columns]
    return columns


def _fill_column(spec: ColumnSpec, index: int) -> ColumnSpec:
    """Fill truth/seg/mask from the case folder and a default name."""
    values = dict(spec.__dict__)
    if spec.case:
        if not os.path.isdir(spec.case):
            raise InputError(f"--case {spec.case}: folder not found")
        for key, filename in CASE_FILES.items():
            if values[key] is None:
                candidate = os.path.join(spec.case, filename)
                if os.path.exists(candidate):
                    values[key] = candidate
                elif key != "seg":
                    raise InputError(f"--case {spec.case}: no {filename} (expected a case folder, data contract 1)")
    for key in ("truth", "mask"):
        if values[key] is None:
            raise InputError(f"column {index + 1} ({spec.recon}): no --{key} (give --{key} or --case)")
    if values["name"] is None:
        values["name"] = os.path.basename(os.path.normpath(spec.case)) if spec.case else _stem(spec.recon)
    return ColumnSpec(**values)


def _stem(path) -> str:
    name = os.path.basename(str(path))
    for suffix in (".nii.gz", ".nii", ".mat", ".h5", ".hdf5", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- running ---------------------------------------------------------------------------------


def _read_inputs(spec: ColumnSpec):
    from daqsm.training_data.volume_io import check_mask, check_same_grid, read_volume

    truth_vol, recon_vol = read_volume(spec.truth), read_volume(spec.recon)
    # shape and affine: a map stored with a flipped axis must not be scored voxel by voxel
    check_same_grid(recon_vol, f"reconstruction {spec.recon}", truth_vol, f"ground truth {spec.truth}")
    truth, recon = truth_vol.data, recon_vol.data
    mask = check_mask(read_volume(spec.mask, dtype=None), str(spec.mask), truth_vol, f"ground truth {spec.truth}")
    seg = None
    if spec.seg:
        seg = read_volume(spec.seg, dtype=None).data
        if seg.shape != truth.shape:
            raise InputError(f"shape mismatch: segmentation {spec.seg} {seg.shape} vs ground truth {truth.shape}")
    return recon, truth, seg, mask


def _run(args) -> int:
    from daqsm.evaluation import tables

    config = resolve_config(args)
    tables.check_outputs((config.json, config.csv, config.markdown), config.overwrite)
    for option, path in (("--json", config.json), ("--csv", config.csv), ("--markdown", config.markdown)):
        if path:
            output_path(option, path)
    import contextlib

    from daqsm.output_lock import claim_output

    with contextlib.ExitStack() as held:  # two runs on one table: the second stops with the PID
        for option, path in (("--json", config.json), ("--csv", config.csv), ("--markdown", config.markdown)):
            if path:
                held.enter_context(claim_output(option, path))
        return _evaluate(config, tables)


def _evaluate(config, tables) -> int:
    from daqsm.evaluation import metrics

    table = tables.Table()
    if config.challenge2016:
        _run_challenge2016(config, table)
    else:
        for spec in config.columns:
            recon, truth, seg, mask = _read_inputs(spec)
            result = metrics.all_metrics(recon, truth, seg, mask) if config.extra else \
                metrics.rc2_metrics(recon, truth, seg, mask)
            table.add_column(spec.name, result.values, result.notes)
    text = tables.to_markdown(table, config.title)
    print(text, end="")
    tables.write_table(table, config.markdown, config.csv, config.json, config.title)
    return 0


def _run_challenge2016(config: EvaluateConfig, table) -> None:
    from daqsm.evaluation import metrics
    from daqsm.training_data.volume_io import check_mask, read_volume

    folder = config.challenge2016
    paths = {k: os.path.join(folder, v) for k, v in CHALLENGE_2016_FILES.items()}
    for key in ("truth", "mask"):
        if not os.path.exists(paths[key]):
            raise InputError(f"--challenge2016 {folder}: no {CHALLENGE_2016_FILES[key]} "
                             "(expected the 2016 challenge layout)")
    chi_33 = read_volume(paths["truth"]).data
    mask = check_mask(read_volume(paths["mask"], dtype=None).data, paths["mask"], chi_33, "chi_33")
    rois = read_volume(paths["rois"], dtype=None).data if os.path.exists(paths["rois"]) else None
    cosmos = read_volume(paths["cosmos"]).data if os.path.exists(paths["cosmos"]) else None
    for spec in config.columns:
        recon = read_volume(spec.recon).data
        if recon.shape != chi_33.shape:
            raise InputError(f"shape mismatch: reconstruction {spec.recon} {recon.shape} vs chi_33 {chi_33.shape}")
        result = metrics.challenge2016_metrics(recon, chi_33, mask, rois, cosmos)
        table.add_column(spec.name, result.values, result.notes)
    if rois is not None:
        ref = metrics.roi_means(chi_33, rois)
        table.add_column("chi_33", ref.values)
        table.notes.append("chi_33: the reference column holds the reference's own ROI means")
