"""End to end: the tiny demo (all five steps, evaluation, figures) and its outputs against golden files.

The golden files come from `python tests/golden/generate.py` (rerun it after an intended change);
tests/golden/compare.py holds the checks and their tolerances. Measured with tests/golden/spread.py
(the tiny demo with 1 vs 2 intra-op threads, oneDNN on/off, op determinism on/off, and TF 2.18.1 /
Keras 3.8.0 / NumPy 1.26.4 against TF 2.21.0 / Keras 3.15.1 / NumPy 2.4.6), tolerance (measured):

- steps 1-3, simulator, step-4 losses of the initial weights: 1e-5 relative (3.3e-7);
- step-4 loss log, every row and loss column: 3 % (0.84 %);
- step-5 loss log of Sim2Snr1: loss and ndi 0.2 % (0.044 %), tv 3 % (0.79 %);
- pre-trained and fine-tuned maps: NRMSE of the central slice 30 % (9.6 %), std and rms 5 % (1.7 %);
- table: rmse 1e-4 relative (2.8e-5), the other rows 8 % (2.4 %).

The trained maps move that much because the tiny network's output is a near-zero map after 3 + 3
steps and because TensorFlow's MaxPool3D gradient on ties differs between its oneDNN and Eigen
kernels (compare.py). A failure lists every failed check, the spread measured for its group, and
the package versions of the golden files against this run's.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from daqsm.evaluation.metrics import RC2_ROWS
from tests.golden import compare as golden_compare
from tests.golden.generate import PACKAGES, load_golden, package_versions, summarise

EXPECTED_FILES = [
    "source/chi.nii.gz", "targets/Sim2Snr1/local_field.nii.gz", "targets/Sim1Snr2/case.json", "step1_chi.h5",
    "step2_fields.h5", "step3_patches.h5", "step4_pretrain/target_model.keras", "step4_pretrain/log.csv",
    "pretrained/Sim2Snr1.nii.gz", "finetuned/Sim2Snr2.nii.gz", "finetuned/Sim2Snr1_loss.csv",
    "table.md", "table.csv", "table.json", "table_pretrained.json", "figures/finetuned_SNR1.png",
    "figures/pretrain_loss.png",
]


def test_tiny_demo_writes_every_step_and_the_full_table(tiny_run):
    missing = [f for f in EXPECTED_FILES if not (tiny_run / f).exists()]
    assert not missing
    table = json.loads((tiny_run / "table.json").read_text())
    assert list(table) == list(RC2_ROWS)
    for row in RC2_ROWS:
        assert set(table[row]) == {"SNR1", "SNR2"}
    assert all(isinstance(table["rmse"][c], float) and table["rmse"][c] > 0 for c in ("SNR1", "SNR2"))


def test_tiny_demo_writes_the_resolved_config_beside_each_output(tiny_run):
    """demo, simulate, genchi and fieldmap each leave their resolved options (every field) beside their output."""
    import dataclasses

    from daqsm.evaluation.demo import DemoConfig
    from daqsm.training_data.qsmFmapCal_gpu import FieldmapConfig
    from daqsm.training_data.simulator.simulate import SimulateConfig
    from daqsm.training_data.synthesis import GenChiCommandConfig

    expected = {"demo_config.json": (DemoConfig, {"size": "tiny", "seed": 0, "output": str(tiny_run)}),
                "targets/simulate_config.json": (SimulateConfig, {"source": "builtin", "resolution": 6.0,
                                                                  "progress": True}),  # every step shows progress
                "step1_chi.config.json": (GenChiCommandConfig, {"n_maps": 2, "seed": 0,
                                                                "output": str(tiny_run / "step1_chi.h5")}),
                "step2_fields.config.json": (FieldmapConfig, {"inputs": [str(tiny_run / "step1_chi.h5")],
                                                              "output": str(tiny_run / "step2_fields.h5")})}
    for name, (cls, values) in expected.items():
        config = json.loads((tiny_run / name).read_text())
        assert set(config) == {f.name for f in dataclasses.fields(cls)}, name
        assert {k: config[k] for k in values} == values, name


def test_tiny_demo_matches_golden(tiny_run):
    summary, table = summarise(tiny_run)
    golden, golden_table, golden_versions = load_golden()
    checks = golden_compare.compare(summary, table, golden, golden_table)
    assert {golden_compare.check_group(c.name) for c in checks} == {"exact", "loss", "map", "table"}
    assert all(c.ok for c in checks), golden_compare.report(checks, golden_versions, package_versions())


def test_golden_files_record_versions_and_settings():
    _, _, versions = load_golden()
    missing = [k for k in (*PACKAGES, "python", "platform", "TF_ENABLE_ONEDNN_OPTS") if k not in versions]
    assert not missing, f"tests/golden/tiny_versions.json lacks {missing}: rerun python tests/golden/generate.py"


# The checks themselves, on the golden data (no pipeline run): each can fail, in the right group.

def _perturbed(key: str, change):
    golden, table, _ = load_golden()
    summary = {k: v.copy() for k, v in golden.items()}
    summary[key] = change(summary[key])
    return [c for c in golden_compare.compare(summary, table, golden, table) if not c.ok]


@pytest.mark.parametrize("key, change, group", [
    ("step1_chi/stats", lambda v: v * (1 + 1e-4), "exact"),           # 1e-4 upstream: not rounding
    ("step4/first_step_losses", lambda v: v * [1, 1, 1, -1], "exact"),  # TV of the initial weights flipped
    ("step4/log", lambda v: v * 1.05, "loss"),
    ("step5/log", lambda v: v * 1.02, "loss"),
    ("step5_finetuned/slice", lambda v: v * 1.5, "map"),
    ("pretrained/slice", lambda v: np.zeros_like(v), "map"),
    ("step5_finetuned/stats", lambda v: v * 1.1, "map"),
])
def test_each_check_fails_on_a_change_beyond_its_tolerance(key, change, group):
    failed = _perturbed(key, change)
    assert {c.name.split("[")[0] for c in failed} == {key}
    assert golden_compare.check_group(key) == group


def test_table_checks_and_report_name_versions():
    golden, table, versions = load_golden()
    changed = json.loads(json.dumps(table))
    changed["rmse"]["SNR1"] *= 1.01
    undefined = next(r for r, cols in table.items() if any(v is None for v in cols.values()))
    column = next(c for c, v in table[undefined].items() if v is None)
    changed[undefined][column] = 0.5  # an undefined metric became defined
    checks = golden_compare.compare(golden, changed, golden, table)
    assert sorted(c.name for c in checks if not c.ok) == sorted(["table/rmse/SNR1", f"table/{undefined}/{column}"])
    text = golden_compare.report(checks, versions, {**versions, "numpy": "0.0"})
    assert "* numpy:" in text and "table/rmse/SNR1" in text and "tensorflow" in text
    assert math.isinf(golden_compare.compare({}, table, golden, table)[0].value)  # a missing output fails
