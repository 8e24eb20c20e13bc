"""Tables: orientation (metric rows x dataset columns) and Markdown / CSV / JSON round trips."""
from __future__ import annotations

import csv
import json
import math

import pytest

from daqsm.errors import InputError
from daqsm.evaluation import tables


def _table():
    table = tables.Table()
    table.add_column("SNR1", {"rmse": 42.25, "CalcStreak": float("nan")}, ["CalcStreak: no label 16"])
    table.add_column("SNR2", {"rmse": 39.36, "CalcStreak": 0.0426})
    return table


def test_markdown_orientation_and_notes():
    text = tables.to_markdown(_table(), title="RC2")
    lines = text.splitlines()
    assert lines[2] == "| metric | SNR1 | SNR2 |"
    assert "| rmse | 42.25 | 39.36 |" in lines
    assert "| CalcStreak | NaN | 0.0426 |" in lines
    assert "- SNR1: CalcStreak: no label 16" in lines


def test_files_parse(tmp_path):
    table = _table()
    paths = dict(markdown=tmp_path / "t.md", csv_path=tmp_path / "t.csv", json_path=tmp_path / "t.json")
    written = tables.write_table(table, **paths)
    assert len(written) == 3
    data = json.loads((tmp_path / "t.json").read_text())
    assert data == {"rmse": {"SNR1": 42.25, "SNR2": 39.36}, "CalcStreak": {"SNR1": None, "SNR2": 0.0426}}
    rows = list(csv.reader((tmp_path / "t.csv").open()))
    assert rows[0] == ["metric", "SNR1", "SNR2"]
    assert rows[2] == ["CalcStreak", "", "0.0426"]
    back = tables.read_json_table(tmp_path / "t.json")
    assert back.columns == ["SNR1", "SNR2"] and back.rows == ["rmse", "CalcStreak"]
    assert math.isnan(back.get("CalcStreak", "SNR1"))
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_duplicate_column_and_existing_output(tmp_path):
    table = _table()
    with pytest.raises(InputError, match="twice"):
        table.add_column("SNR1", {"rmse": 1.0})
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(InputError, match="--overwrite"):
        tables.check_outputs([str(tmp_path / "t.json")])
    tables.check_outputs([str(tmp_path / "t.json")], overwrite=True)


def test_format_value():
    assert tables.format_value(14.60) == "14.6"
    assert tables.format_value(0.04513) == "0.04513"
    assert tables.format_value(float("nan")) == "NaN"
