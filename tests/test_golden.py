"""End to end: the tiny demo (all five steps, evaluation, figures) and its outputs against golden files.

The golden files come from `python tests/golden/generate.py`; rerun it after an intended change.
Tolerances: the data steps (1-3, simulator) are seeded and exact up to float32 rounding (1e-5
relative); the training steps (4-5) run TensorFlow kernels whose summation order may differ
between CPUs, so their values are compared to 2e-3 relative, the metric table to 1e-2.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluation.metrics import RC2_ROWS
from tests.golden.generate import GOLDEN_NPZ, GOLDEN_TABLE, run_tiny, summarise

EXPECTED_FILES = [
    "source/chi.nii.gz", "targets/Sim2Snr1/local_field.nii.gz", "targets/Sim1Snr2/case.json", "step1_chi.h5",
    "step2_fields.h5", "step3_patches.h5", "step4_pretrain/target_model.keras", "step4_pretrain/log.csv",
    "pretrained/Sim2Snr1.nii.gz", "finetuned/Sim2Snr2.nii.gz", "finetuned/Sim2Snr1_loss.csv",
    "table.md", "table.csv", "table.json", "table_pretrained.json", "figures/finetuned_SNR1.png",
    "figures/pretrain_loss.png",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_demo")
    assert run_tiny(out) == 0
    return out


def test_tiny_demo_writes_every_step_and_the_full_table(tiny_run):
    missing = [f for f in EXPECTED_FILES if not (tiny_run / f).exists()]
    assert not missing
    table = json.loads((tiny_run / "table.json").read_text())
    assert list(table) == list(RC2_ROWS)
    for row in RC2_ROWS:
        assert set(table[row]) == {"SNR1", "SNR2"}
    assert all(isinstance(table["rmse"][c], float) and table["rmse"][c] > 0 for c in ("SNR1", "SNR2"))


def test_tiny_demo_matches_golden(tiny_run):
    summary, table = summarise(tiny_run)
    golden = dict(np.load(GOLDEN_NPZ))
    assert set(summary) == set(golden)
    for key, expected in golden.items():
        rtol = 2e-3 if key.startswith(("step4", "step5")) else 1e-5
        scale = max(float(np.abs(expected).max()), 1e-12)
        np.testing.assert_allclose(summary[key], expected, rtol=rtol, atol=rtol * scale, err_msg=key)
    golden_table = json.loads(GOLDEN_TABLE.read_text())
    for row, columns in golden_table.items():
        for column, value in columns.items():
            if value is None:
                assert table[row][column] is None or math.isnan(table[row][column])
            else:
                assert table[row][column] == pytest.approx(value, rel=1e-2, abs=1e-6), (row, column)
