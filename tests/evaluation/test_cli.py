"""`python -m daqsm.evaluation`: several columns, case folders, config files, and bad input -> exit 2."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from daqsm.evaluation import metrics
from daqsm.evaluation.__main__ import main
from daqsm.training_data.volume_io import write_volume
from tests.evaluation.test_metrics import _case


@pytest.fixture()
def files(tmp_path):
    y, seg, mask = _case(shape=(24, 24, 24))
    paths = {
        "truth": write_volume(tmp_path / "chi.nii.gz", y),
        "seg": write_volume(tmp_path / "segmentation.nii.gz", seg.astype(np.uint16)),
        "mask": write_volume(tmp_path / "mask.nii.gz", mask.astype(np.uint8)),
        "half": write_volume(tmp_path / "half.nii.gz", (0.5 * y).astype(np.float32)),
    }
    return tmp_path, paths


def test_truth_vs_itself_gives_zero_table(files, capsys):
    tmp, p = files
    out = tmp / "out" / "table.json"
    args = []
    for name in ("SNR1", "SNR2"):
        args += ["--recon", p["truth"], "--truth", p["truth"], "--seg", p["seg"], "--mask", p["mask"], "--name", name]
    rc = main(args + ["--json", str(out), "--csv", str(tmp / "out" / "t.csv"), "--markdown", str(tmp / "out" / "t.md")])
    assert rc == 0
    table = json.loads(out.read_text())
    assert list(table) == list(metrics.RC2_ROWS)
    for row, cols in table.items():
        assert set(cols) == {"SNR1", "SNR2"}
        for value in cols.values():
            assert value == pytest.approx(0.0, abs=1e-6), row
    assert "| metric | SNR1 | SNR2 |" in capsys.readouterr().out
    assert (tmp / "out" / "t.csv").read_text().startswith("metric,SNR1,SNR2")


def test_case_folder_shared_truth_and_extra_rows(files):
    tmp, p = files
    out = tmp / "t.json"
    rc = main(["--case", str(tmp), "--recon", p["half"], "--recon", p["truth"], "--name", "half", "--name", "same",
               "--extra", "--json", str(out)])
    assert rc == 0
    table = json.loads(out.read_text())
    assert table["rmse"]["half"] == pytest.approx(50.0, rel=1e-5)
    assert table["HFEN"]["same"] == pytest.approx(0.0, abs=1e-6)
    assert table["XSIM"]["same"] == pytest.approx(1.0)


def test_config_file_yaml(files):
    tmp, p = files
    cfg = tmp / "eval.yaml"
    cfg.write_text("columns:\n  - {name: SNR1, recon: half.nii.gz, case: .}\njson: res.json\n")
    assert main(["--config", str(cfg)]) == 0
    assert json.loads((tmp / "res.json").read_text())["rmse"]["SNR1"] == pytest.approx(50.0, rel=1e-5)
    cfg.write_text("columns: []\nbogus: 1\n")
    assert main(["--config", str(cfg)]) == 2


def test_missing_labels_are_noted(files, capsys):
    tmp, p = files
    seg = np.zeros((24, 24, 24), np.uint16)
    seg[4:20, 4:20, 4:20] = 8
    write_volume(tmp / "seg8.nii.gz", seg)
    out = tmp / "t.json"
    assert main(["--recon", p["half"], "--truth", p["truth"], "--seg", str(tmp / "seg8.nii.gz"), "--mask", p["mask"],
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["CalcStreak"]["half"] is None and table["rmse_detrend_DGM"]["half"] is None
    assert table["rmse"]["half"] == pytest.approx(50.0, rel=1e-5)
    assert "CalcStreak: no calcification" in capsys.readouterr().out


def test_bad_inputs_exit_2_and_write_nothing(files, capsys):
    tmp, p = files
    nan = np.zeros((24, 24, 24), np.float32)
    nan[3, 3, 3] = np.nan
    write_volume(tmp / "nan.nii.gz", nan)
    write_volume(tmp / "small.nii.gz", np.zeros((20, 24, 24), np.float32))
    out = tmp / "never.json"
    base = ["--truth", p["truth"], "--seg", p["seg"], "--mask", p["mask"], "--json", str(out)]
    bad = [
        ["--recon", str(tmp / "nan.nii.gz")] + base,              # NaN in the reconstruction
        ["--recon", str(tmp / "small.nii.gz")] + base,            # shape mismatch
        ["--recon", str(tmp / "missing.nii.gz")] + base,          # missing file
        ["--recon", p["half"], "--json", str(out)],               # no truth / mask
        ["--recon", p["half"], "--recon", p["half"]] + base,      # duplicate column names
        ["--case", str(tmp / "nowhere"), "--recon", p["half"]],   # missing case folder
        ["--recon", p["half"], "--truth", p["truth"], "--mask", p["seg"], "--json", str(out)],  # non-binary mask
    ]
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err, err
    assert not out.exists()
    out.write_text("{}")
    assert main(["--recon", p["half"]] + base) == 2          # existing output without --overwrite
    assert main(["--recon", p["half"]] + base + ["--overwrite"]) == 0
    assert not math.isnan(json.loads(out.read_text())["rmse"]["half"])


def test_help_is_instant():
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


@pytest.mark.realdata
def test_challenge2016_mode(shared_data, tmp_path):
    out = tmp_path / "t.json"
    chi = shared_data / "qsm2016" / "chi_33.nii.gz"
    assert main(["--challenge2016", str(shared_data / "qsm2016"), "--recon", str(chi), "--name", "self",
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["nrmse_chi33"]["self"] == pytest.approx(0.0, abs=1e-6)
    assert table["roi_1_caudate"]["self"] == pytest.approx(table["roi_1_caudate"]["chi_33"])
