"""Figures: orthogonal slices of a reconstruction (against a ground truth when there is one), loss curves (PNG).

    python -m daqsm.evaluation.figures slices --recon R --truth T [--mask M] [--window PPM] -o OUT.png
    python -m daqsm.evaluation.figures slices --recon QSM.nii.gz --mask M --residual QSM_residual.nii.gz -o OUT.png
    python -m daqsm.evaluation.figures losses LOG.csv [--columns loss ndi tv] -o OUT.png

Slices: a 3 x 3 grid - rows reconstruction, ground truth, difference (reconstruction - truth),
columns the three orthogonal planes through the centre of the mask - all in one colour window in
ppm, symmetric about 0: [-w, w] with w the 99th percentile of |truth| inside the mask (or --window),
so that the difference row reads on the same scale as the maps; one colour bar per row, in ppm.
Without a truth (an in-vivo QSM) only the reconstruction row is drawn, windowed on itself. Voxel
aspect ratios come from the files' voxel size; when the reconstruction is a NIfTI, each panel's edges
carry the anatomical direction letters of its affine (R/L, A/P, S/I, nibabel's aff2axcodes).
`--residual OUT_residual.nii.gz` (the QC map that fine-tuning and inference write, ppm) adds a row
on its own scale [0, 99th percentile]: where the reconstruction does not explain the measured field
(300 pixels of height per row: 900 x 1200 with a truth, 900 x 600 without).

Losses: a CSV log with a header; the x axis is the column named step / iteration / epoch (else the
first), every other numeric column is a loss curve except the wall time `elapsed_s`, which is not a
loss: it goes on its own panel below (seconds, linear axis). The loss axis is logarithmic when all
its values are > 0. Columns without a value are left out; sparse ones (validation every N steps)
get markers so a single point shows. The default title names the run: the log's folder for a
generic `log.csv` (step 4), else the file name without `.csv` (`Sim2Snr1_loss`, step 5).

Figures have a fixed pixel size (slices 900 x 900, losses 800 x 500) and are written atomically.
Uses matplotlib's Agg backend; imports no TensorFlow.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from daqsm.config import ArgumentParser, add_config_options, param, require, resolve_config
from daqsm.errors import InputError, output_path, run_cli, shape_mismatch
from daqsm.training_data.volume_io import atomic_path, check_mask, check_same_grid, read_volume
from daqsm.validate import positive

PROG = "daqsm-figures"
SLICES_SIZE_IN, LOSSES_SIZE_IN, DPI = (9.0, 9.0), (8.0, 5.0), 100
WINDOW_PERCENTILE = 99.0
X_COLUMNS = ("step", "iteration", "iter", "epoch")
#: columns of a loss log that are not losses: wall time since the loop started (training_loop.run_loop)
TIME_COLUMNS = ("elapsed_s",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's first import in this process
    import matplotlib.pyplot as plt

    return plt


def colour_window(truth_ppm, mask=None, percentile: float = WINDOW_PERCENTILE) -> float:
    """Half-width w (ppm) of the symmetric window [-w, w]: a percentile of |truth| inside the mask."""
    values = np.abs(np.asarray(truth_ppm)[mask] if mask is not None else np.asarray(truth_ppm))
    w = float(np.percentile(values, percentile)) if values.size else 0.0
    return w if w > 0 else max(float(values.max(initial=0.0)), 1e-3)


def centre_index(mask, shape) -> tuple[int, int, int]:
    """Slice indices through the centre of the mask's bounding box (volume centre without a mask)."""
    if mask is None or not np.any(mask):
        return tuple(n // 2 for n in shape)
    idx = np.nonzero(mask)
    return tuple(int((i.min() + i.max()) // 2) for i in idx)


_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def orientation_letters(affine) -> list:
    """Per plane (x, y, z slices): (left, right, bottom, top) anatomical letters of its edges.

    The planes are drawn as `_planes` draws them: horizontal = the lower remaining voxel axis, vertical
    = the higher, origin lower; a letter is where that axis points in RAS+ (nibabel's aff2axcodes).
    """
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(np.asarray(affine, dtype=np.float64))
    letters = []
    for horizontal, vertical in ((1, 2), (0, 2), (0, 1)):
        h, v = codes[horizontal], codes[vertical]
        letters.append((_OPPOSITE.get(h, "?"), h, _OPPOSITE.get(v, "?"), v))
    return letters


def _letter(ax, edges) -> None:
    left, right, bottom, top = edges
    style = dict(transform=ax.transAxes, color="yellow", fontsize=9, fontweight="bold")
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)


def _planes(volume, centre):
    """The three orthogonal slices through `centre`, each transposed for imshow (origin lower)."""
    cx, cy, cz = centre
    return [volume[cx, :, :].T, volume[:, cy, :].T, volume[:, :, cz].T]


def slice_figure(recon_ppm, truth_ppm, path, mask=None, voxel_size_mm=(1.0, 1.0, 1.0), window_ppm=None,
                 title: str | None = None, residual_ppm=None, affine=None) -> str:
    """Write the 3 x 3 slice figure (module doc) as PNG; returns the path.

    Args:
        recon_ppm: float (x, y, z) reconstruction in ppm.
        truth_ppm: float (x, y, z) ground truth in ppm, or None (in-vivo: no truth and difference rows).
        path: output .png.
        mask: optional bool (x, y, z); outside it both maps are shown as 0.
        voxel_size_mm: 3 floats, for the pixel aspect ratios.
        window_ppm: half-width of the colour window (default: colour_window of the truth).
        title: figure title.
        residual_ppm: optional float (x, y, z) QC residual map (OUT_residual.nii.gz, ppm): a 4th row,
            on its own scale [0, 99th percentile in the mask].
        affine: optional 4x4 voxel -> scanner affine: orientation letters on every panel.
    """
    recon = np.asarray(recon_ppm, dtype=np.float32)
    has_truth = truth_ppm is not None
    truth = np.asarray(truth_ppm if has_truth else recon, dtype=np.float32)
    if recon.shape != truth.shape:
        raise shape_mismatch("reconstruction", recon.shape, "truth", truth.shape)
    if recon.ndim != 3:
        raise InputError(f"reconstruction: expected a 3-D volume, found shape {recon.shape}")
    if mask is not None:
        mask = check_mask(mask, "mask", truth, "truth")
        recon, truth = recon * mask, truth * mask
    w = float(window_ppm) if window_ppm is not None else colour_window(truth, mask)
    if not (math.isfinite(w) and w > 0):
        raise InputError(f"window: expected a positive number of ppm, got {window_ppm!r}")
    centre = centre_index(mask, truth.shape)
    vs = [float(v) for v in voxel_size_mm]
    # imshow aspect = physical height / width of a pixel, for each plane (rows = 2nd axis shown)
    aspects = [vs[2] / vs[1], vs[2] / vs[0], vs[1] / vs[0]]
    plane_names = [f"x = {centre[0]}", f"y = {centre[1]}", f"z = {centre[2]}"]
    rows = [("reconstruction", recon), ("ground truth", truth), ("difference", recon - truth)] if has_truth \
        else [("reconstruction", recon)]
    if residual_ppm is not None:
        residual = np.asarray(residual_ppm, dtype=np.float32)
        if residual.shape != truth.shape:
            raise shape_mismatch("residual", residual.shape, "truth", truth.shape)
        rows.append(("QC residual", residual))
    plt = _pyplot()
    size = (SLICES_SIZE_IN[0], SLICES_SIZE_IN[1] * len(rows) / 3)
    fig, axes = plt.subplots(len(rows), 3, figsize=size, dpi=DPI, layout="constrained", squeeze=False)
    letters = orientation_letters(affine) if affine is not None else None
    for r, (label, volume) in enumerate(rows):
        if label == "QC residual":  # a magnitude (>= 0) on its own scale
            top = float(np.percentile(volume[mask] if mask is not None else volume, WINDOW_PERCENTILE)) or 1e-6
            cmap, vmin, vmax = "magma", 0.0, top
        else:
            cmap, vmin, vmax = "gray", -w, w
        for c, plane in enumerate(_planes(volume, centre)):
            ax = axes[r, c]
            image = ax.imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect=aspects[c],
                              interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if letters is not None:
                _letter(ax, letters[c])
            if r == 0:
                ax.set_title(plane_names[c])
            if c == 0:
                ax.set_ylabel(label)
        bar = fig.colorbar(image, ax=axes[r, :].tolist(), shrink=0.9)
        bar.set_label("ppm")
    fig.suptitle(title or f"window \u00b1{w:.3g} ppm")
    return _save(fig, path, plt)


def read_loss_log(path) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
    """Read a CSV loss log: (x column name, x values, {column: values}); non-numeric cells are NaN."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: loss log not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as err:  # a binary file given as a log
        raise InputError(f"{path}: expected a text CSV loss log, found binary data ({type(err).__name__})") from None
    if len(rows) < 2 or not rows[0]:
        raise InputError(f"{path}: expected a CSV with a header row and at least one data row, found {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    table = np.full((len(rows) - 1, len(header)), np.nan)
    for i, row in enumerate(rows[1:]):
        for j, cell in enumerate(row[: len(header)]):
            try:
                table[i, j] = float(cell)
            except ValueError:
                pass
    lower = [h.lower() for h in header]
    x_col = next((lower.index(n) for n in X_COLUMNS if n in lower), 0)
    # other step-like columns (a log with both step and epoch) are axes, not curves
    curves = {h: table[:, j] for j, h in enumerate(header)
              if j != x_col and lower[j] not in X_COLUMNS and np.any(np.isfinite(table[:, j]))}
    if not [c for c in curves if c.lower() not in TIME_COLUMNS]:
        raise InputError(f"{path}: expected numeric loss columns besides {header[x_col]!r}, found none "
                         f"(columns: {', '.join(header)})")
    x = table[:, x_col]
    if not np.all(np.isfinite(x)):
        x = np.arange(len(x), dtype=float)
    return header[x_col], x, curves


def loss_figure(log_path, path, columns=None, title: str | None = None) -> str:
    """Write the loss curves of a CSV log (module doc) as PNG; returns the path.

    Args:
        log_path: CSV file with a header (step column plus loss columns).
        path: output .png.
        columns: columns to plot (default all numeric ones); `elapsed_s` goes on the time panel.
        title: figure title (default the log's file name).
    """
    plt = _pyplot()
    return _save(build_loss_figure(log_path, columns, title), path, plt)


def build_loss_figure(log_path, columns=None, title: str | None = None):
    """The matplotlib Figure of `loss_figure`: axes[0] the losses, axes[1] (if any) elapsed seconds."""
    x_name, x, curves = read_loss_log(log_path)
    if columns:
        missing = [c for c in columns if c not in curves]
        if missing:
            raise InputError(f"{log_path}: no numeric column {missing[0]!r}; present: {', '.join(curves)}")
        curves = {c: curves[c] for c in columns}
    times = {k: v for k, v in curves.items() if k.lower() in TIME_COLUMNS}
    losses = {k: v for k, v in curves.items() if k not in times}
    if not losses:
        raise InputError(f"{log_path}: --columns {' '.join(columns)}: none of them is a loss "
                         f"({', '.join(TIME_COLUMNS)} is wall time)")
    plt = _pyplot()
    if times:
        fig, (ax, ax_time) = plt.subplots(2, 1, figsize=LOSSES_SIZE_IN, dpi=DPI, layout="constrained", sharex=True,
                                          gridspec_kw={"height_ratios": (3, 1)})
    else:
        fig, ax = plt.subplots(figsize=LOSSES_SIZE_IN, dpi=DPI, layout="constrained")
    for name, values in losses.items():
        ok = np.isfinite(values)
        sparse = np.count_nonzero(ok) < max(2, len(ok) // 2)  # validation rows: markers, or one point is invisible
        ax.plot(x[ok], values[ok], label=name, linewidth=1.2, marker="o" if sparse else None, markersize=4)
    finite = np.concatenate([v[np.isfinite(v)] for v in losses.values()])
    if finite.size and np.all(finite > 0):  # log scale shows the slow late decrease of a loss
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or run_title(log_path))
    if times:
        for name, values in times.items():
            ok = np.isfinite(values)
            ax_time.plot(x[ok], values[ok], label=name, linewidth=1.2, color="0.3")
        ax_time.set_ylabel("elapsed (s)")
        ax_time.grid(True, alpha=0.3)
        ax_time.set_xlabel(x_name)
    else:
        ax.set_xlabel(x_name)
    return fig


def run_title(log_path) -> str:
    """The run a log belongs to: its folder for a generic log.csv, else the file name without .csv."""
    name = os.path.basename(str(log_path))
    stem = name[:-4] if name.lower().endswith(".csv") else name
    if stem.lower() in ("log", "loss", "losses"):
        folder = os.path.basename(os.path.dirname(os.path.abspath(str(log_path))))
        return f"{folder} ({name})" if folder else stem
    return stem


def _save(fig, path, plt) -> str:
    path = str(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _check_output(path, overwrite: bool) -> None:
    if not str(path).lower().endswith(".png"):
        raise InputError(f"{path}: expected an output ending in .png")
    from daqsm.outputs import refuse_existing

    refuse_existing("-o", [path], overwrite)
    output_path("-o", path)


@dataclass(frozen=True)
class SlicesConfig:
    """`slices`: reconstruction / truth / difference in three orthogonal planes."""

    recon: str = param("", "reconstruction (ppm), any volume_io format")
    truth: str = param("", "ground truth (ppm) on the same grid; omit for an in-vivo QSM (no truth)")
    mask: str = param("", "brain mask (0/1); sets the window and the slice centre")
    window: float | None = param(None, "colour window half-width in ppm (default: 99th percentile of |truth|)")
    residual: str = param("", "QC residual map (OUT_residual.nii.gz, ppm) shown as a 4th row")
    title: str = param("", "figure title")
    output: str = param("", "output .png", flags=("-o",))
    overwrite: bool = param(False, "replace an existing output")


@dataclass(frozen=True)
class LossesConfig:
    """`losses`: loss curves from a CSV log."""

    log: str = param("", "CSV log: step column + loss columns (also the positional LOG)")
    columns: tuple | None = param(None, "columns to plot (default all numeric; elapsed_s on its own panel)", type=str)
    title: str = param("", "figure title")
    output: str = param("", "output .png", flags=("-o",))
    overwrite: bool = param(False, "replace an existing output")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slices", help=SlicesConfig.__doc__.split(": ", 1)[1])
    add_config_options(s, SlicesConfig, group_title=None, config_option=True)
    loss = sub.add_parser("losses", help=LossesConfig.__doc__.split(": ", 1)[1])
    loss.add_argument("positional_log", nargs="?", metavar="LOG", help="CSV log (= --log)")
    loss.add_argument("--config", metavar="FILE", help="JSON or YAML file of the parameters below")
    add_config_options(loss, LossesConfig, group_title=None)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        values = vars(args)
        if getattr(args, "positional_log", None):
            values = {**values, "log": args.positional_log}
        cfg = resolve_config(SlicesConfig if args.command == "slices" else LossesConfig, args.config, values)
        require(cfg, ("recon", "output") if args.command == "slices" else ("log", "output"))
        _check_output(cfg.output, cfg.overwrite)
        from daqsm.output_lock import claim_output

        with claim_output("-o", cfg.output):  # two runs on one figure: the second stops with the PID
            _draw(args, cfg)
        return 0

    def _draw(args, cfg) -> None:
        if args.command == "slices":
            if cfg.window is not None:
                positive("--window", cfg.window)
            recon = read_volume(cfg.recon)
            truth = read_volume(cfg.truth) if cfg.truth else None
            if truth is not None:
                check_same_grid(recon, f"reconstruction {cfg.recon}", truth, f"truth {cfg.truth}")
            mask = None
            if cfg.mask:
                mask = check_mask(read_volume(cfg.mask, dtype=None), cfg.mask, recon, f"reconstruction {cfg.recon}")
            residual = read_volume(cfg.residual).data if cfg.residual else None
            geometry = truth if truth is not None and truth.voxel_size_mm else recon
            slice_figure(recon.data, truth.data if truth is not None else None, cfg.output, mask,
                         geometry.voxel_size_mm or (1.0, 1.0, 1.0), cfg.window, cfg.title or None, residual,
                         affine=recon.affine if recon.header is not None else None)
        else:
            loss_figure(cfg.log, cfg.output, list(cfg.columns) if cfg.columns else None, cfg.title or None)
        print(f"wrote {cfg.output}")

    return run_cli(body, PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
