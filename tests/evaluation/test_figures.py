"""Figures: PNGs are written, valid and of the documented pixel size; bad input exits 2, writes nothing."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from daqsm.evaluation import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture()
def volumes(tmp_path):
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in (24, 20, 16)], indexing="ij"))
    mask = (np.sum((grid / np.array([10, 8, 6])[:, None, None, None]) ** 2, axis=0) <= 1)
    truth = (0.1 * np.sin(grid[0] / 3) * mask).astype(np.float32)
    recon = (0.8 * truth).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    paths = {}
    for name, data in (("truth", truth), ("recon", recon), ("mask", mask.astype(np.uint8))):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), paths[name])
    return paths


@pytest.fixture()
def loss_log(tmp_path):
    path = tmp_path / "log.csv"
    steps = np.arange(1, 51)
    rows = ["step,loss,ndi,tv"] + [f"{s},{1 / s:.6f},{0.5 / s:.6f},{0.01 + 0.001 * s:.6f}" for s in steps]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_slices_png_written_with_expected_size(volumes, tmp_path):
    out = tmp_path / "slices.png"
    assert figures.main(["slices", "--recon", volumes["recon"], "--truth", volumes["truth"], "--mask", volumes["mask"],
                         "-o", str(out)]) == 0
    assert png_size(out) == (900, 900)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_losses_png_written_with_expected_size(loss_log, tmp_path):
    out = tmp_path / "losses.png"
    assert figures.main(["losses", loss_log, "-o", str(out)]) == 0
    assert png_size(out) == (800, 500)


def test_log_scale_only_for_positive_losses(tmp_path):
    x_name, _, curves = figures.read_loss_log(_write(tmp_path / "a.csv", "iteration,loss\n0,2\n1,-1\n"))
    assert x_name == "iteration" and list(curves) == ["loss"] and curves["loss"][1] == -1
    assert figures.loss_figure(str(tmp_path / "a.csv"), tmp_path / "a.png")  # negative values: linear axis, still drawn


def test_elapsed_time_is_not_drawn_as_a_loss(tmp_path):
    """A training log's wall-time column goes on its own panel, never on the (log) loss axis."""
    rows = ["step,loss,ndi,tv,elapsed_s", "0,0.5,0.4,0.02,"]  # step-5 logs: iteration 0 has no time
    rows += [f"{s},{0.5 / s:.6f},{0.4 / s:.6f},0.02,{3.0 + 0.5 * s:.3f}" for s in range(1, 21)]
    log = _write(tmp_path / "run_loss.csv", "\n".join(rows) + "\n")
    fig = figures.build_loss_figure(log)
    try:
        loss_ax, time_ax = fig.axes[:2]
        assert [line.get_label() for line in loss_ax.get_lines()] == ["loss", "ndi", "tv"]
        assert max(float(np.max(line.get_ydata())) for line in loss_ax.get_lines()) <= 0.5
        assert loss_ax.get_yscale() == "log" and loss_ax.get_ylabel() == "loss"
        assert [line.get_label() for line in time_ax.get_lines()] == ["elapsed_s"]
        assert time_ax.get_ylabel() == "elapsed (s)" and time_ax.get_yscale() == "linear"
        assert time_ax.get_xlabel() == "step" and len(fig.axes) == 2
    finally:
        figures._pyplot().close(fig)
    out = tmp_path / "run_loss.png"
    assert figures.main(["losses", log, "-o", str(out)]) == 0
    assert png_size(out) == (800, 500)


def test_log_without_time_column_has_one_panel_without_step_curve(loss_log):
    fig = figures.build_loss_figure(loss_log)
    try:
        assert len(fig.axes) == 1
        assert [line.get_label() for line in fig.axes[0].get_lines()] == ["loss", "ndi", "tv"]
    finally:
        figures._pyplot().close(fig)


def test_colour_window_is_symmetric_percentile_of_truth_inside_mask():
    truth = np.zeros((10, 10, 10), np.float32)
    truth[2:8, 2:8, 2:8] = np.linspace(-0.2, 0.1, 216).reshape(6, 6, 6)
    mask = truth != 0
    w = figures.colour_window(truth, mask)
    assert w == pytest.approx(np.percentile(np.abs(truth[mask]), 99))
    assert 0.19 < w <= 0.2


def test_module_runs_without_tensorflow(volumes, tmp_path):
    """`python -m daqsm.evaluation.figures` must not import TensorFlow (fast, and usable without it)."""
    code = ("import sys; from daqsm.evaluation import figures; "
            f"rc = figures.main(['slices', '--recon', {volumes['recon']!r}, '--truth', {volumes['truth']!r}, "
            f"'-o', {str(tmp_path / 'x.png')!r}]); assert 'tensorflow' not in sys.modules; sys.exit(rc)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    assert png_size(tmp_path / "x.png") == (900, 900)


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", ["shape_mismatch", "missing_truth", "nan_recon", "bad_mask", "not_png",
                                  "exists", "bad_window", "empty_log", "no_numeric_columns", "unknown_column",
                                  "only_time_column"])
def test_bad_input_exits_2_and_writes_nothing(case, volumes, loss_log, tmp_path, capsys):
    out = tmp_path / "out.png"
    slices = ["slices", "--recon", volumes["recon"], "--truth", volumes["truth"]]
    if case == "shape_mismatch":
        nib.save(nib.Nifti1Image(np.zeros((24, 20, 15), np.float32), np.eye(4)), tmp_path / "small.nii.gz")
        argv = ["slices", "--recon", str(tmp_path / "small.nii.gz"), "--truth", volumes["truth"]]
    elif case == "missing_truth":
        argv = ["slices", "--recon", volumes["recon"], "--truth", str(tmp_path / "nope.nii.gz")]
    elif case == "nan_recon":
        data = np.full((24, 20, 16), np.nan, np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
        argv = ["slices", "--recon", str(tmp_path / "nan.nii.gz"), "--truth", volumes["truth"]]
    elif case == "bad_mask":
        nib.save(nib.Nifti1Image(np.full((24, 20, 16), 2, np.uint8), np.eye(4)), tmp_path / "m2.nii.gz")
        argv = slices + ["--mask", str(tmp_path / "m2.nii.gz")]
    elif case == "not_png":
        out = tmp_path / "out.jpg"
        argv = slices
    elif case == "exists":
        out.write_bytes(b"keep")
        argv = slices
    elif case == "bad_window":
        argv = slices + ["--window", "-1"]
    elif case == "empty_log":
        argv = ["losses", _write(tmp_path / "e.csv", "step,loss\n")]
    elif case == "no_numeric_columns":
        argv = ["losses", _write(tmp_path / "n.csv", "step,note\n1,a\n2,b\n")]
    elif case == "only_time_column":
        argv = ["losses", _write(tmp_path / "t.csv", "step,loss,elapsed_s\n1,0.5,2.0\n"), "--columns", "elapsed_s"]
    else:
        argv = ["losses", loss_log, "--columns", "l1"]
    rc = figures.main(argv + ["-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "error" in err
    if case == "exists":
        assert out.read_bytes() == b"keep"
    else:
        assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_slices_without_truth_show_an_in_vivo_qsm_and_its_residual(volumes, tmp_path):
    """Issue 24: `slices` needed a ground truth, so an in-vivo QSM could not be shown."""
    out = tmp_path / "invivo.png"
    assert figures.main(["slices", "--recon", volumes["recon"], "--mask", volumes["mask"], "-o", str(out)]) == 0
    assert png_size(out) == (900, 300)  # one row: the reconstruction
    assert figures.main(["slices", "--recon", volumes["recon"], "--mask", volumes["mask"], "--residual",
                         volumes["truth"], "-o", str(tmp_path / "r.png")]) == 0
    assert png_size(tmp_path / "r.png") == (900, 600)  # reconstruction + QC residual


def test_orientation_letters_follow_the_affine():
    ras = figures.orientation_letters(np.eye(4))
    # x slice: y horizontal (P -> A), z vertical (I -> S); z slice: x horizontal (L -> R), y vertical
    assert ras == [("P", "A", "I", "S"), ("L", "R", "I", "S"), ("L", "R", "P", "A")]
    flipped = figures.orientation_letters(np.diag([-1.0, 1.0, 1.0, 1.0]))  # LAS: x points left
    assert flipped[2][:2] == ("R", "L")


def test_slices_carry_orientation_letters(volumes, monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "_letter", lambda ax, edges: drawn.append(edges))
    figures.main(["slices", "--recon", volumes["recon"], "--truth", volumes["truth"], "-o", str(tmp_path / "a.png")])
    assert len(drawn) == 9 and drawn[2] == ("L", "R", "P", "A")


def test_loss_plot_is_titled_by_its_run_and_has_no_empty_series(tmp_path):
    run = tmp_path / "step4_pretrain"
    run.mkdir()
    # validation once (one point) and a column that is never filled
    rows = ["step,loss,val_loss,val_never"] + [f"{s},{1 / s},{'' if s != 5 else 0.3},"for s in range(1, 11)]
    (run / "log.csv").write_text("\n".join(rows) + "\n")
    fig = figures.build_loss_figure(run / "log.csv")
    ax = fig.axes[0]
    assert ax.get_title() == "step4_pretrain (log.csv)"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["loss", "val_loss"]  # the empty series is left out
    val = ax.get_lines()[1]
    assert len(val.get_xdata()) == 1 and val.get_marker() == "o"  # a single point is drawn, not an empty line
    assert figures.run_title(tmp_path / "Sim2Snr1_loss.csv") == "Sim2Snr1_loss"
