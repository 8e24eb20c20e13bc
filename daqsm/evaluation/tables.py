"""Result tables in the seed's orientation: metric rows x dataset columns (e.g. SNR1, SNR2).

One `Table` is written three ways, each atomically (temp file + rename):
    Markdown  `| metric | SNR1 | SNR2 |`, values to 4 significant digits, notes listed below;
    CSV       header `metric,SNR1,SNR2`, full precision, empty cell for NaN;
    JSON      `{metric: {column: value}}`, full precision, null for NaN (JSON has no NaN).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from daqsm.errors import InputError
from daqsm.training_data.volume_io import atomic_path


@dataclass
class Table:
    """rows (ordered metric names), columns (ordered dataset names), values[row][column], notes."""

    rows: list = field(default_factory=list)
    columns: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def add_column(self, name: str, values: dict, notes=()) -> None:
        """Add one dataset's metrics (row -> value); new rows are appended in the given order."""
        name = str(name)
        if name in self.columns:
            raise InputError(f"column name {name!r} is used twice; give each dataset its own --name")
        self.columns.append(name)
        for row, value in values.items():
            if row not in self.rows:
                self.rows.append(row)
            self.values.setdefault(row, {})[name] = _as_float(value)
        self.notes.extend(f"{name}: {note}" for note in notes)

    def get(self, row: str, column: str) -> float:
        """Value of one cell, NaN when missing."""
        return self.values.get(row, {}).get(column, float("nan"))

    def as_dict(self) -> dict:
        """{metric: {column: value}} with NaN kept as float NaN."""
        return {row: {col: self.get(row, col) for col in self.columns} for row in self.rows}


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def format_value(value: float) -> str:
    """4 significant digits (42.25, 0.0451, 14.6), 'NaN' for missing."""
    if value is None or math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    return f"{value:.4g}"


def to_markdown(table: Table, title: str | None = None) -> str:
    """Markdown table (metric rows, dataset columns), followed by the notes."""
    lines = [f"### {title}", ""] if title else []
    lines.append("| metric | " + " | ".join(table.columns) + " |")
    lines.append("|---|" + "---:|" * len(table.columns))
    for row in table.rows:
        cells = (format_value(table.get(row, col)) for col in table.columns)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if table.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """CSV text: header `metric,<columns>`, repr-precision floats, empty cells for NaN."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["metric"] + table.columns)
    for row in table.rows:
        cells = []
        for col in table.columns:
            value = table.get(row, col)
            cells.append("" if math.isnan(value) else repr(value))
        writer.writerow([row] + cells)
    return buf.getvalue()


def to_json(table: Table) -> str:
    """JSON text `{metric: {column: value}}` with null for NaN."""
    data = {row: {col: (None if math.isnan(v) else v) for col, v in cols.items()}
            for row, cols in table.as_dict().items()}
    return json.dumps(data, indent=2) + "\n"


def read_json_table(path) -> Table:
    """Read a table written by `to_json` (null -> NaN)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: expected a JSON object {{metric: {{column: value}}}}")
    table = Table()
    for row, cols in data.items():
        table.rows.append(row)
        for col in cols:
            if col not in table.columns:
                table.columns.append(col)
        table.values[row] = {col: _as_float(v) for col, v in cols.items()}
    return table


def check_outputs(paths, overwrite: bool = False) -> None:
    """Refuse to overwrite existing outputs (before any metric is computed)."""
    from daqsm.outputs import refuse_existing

    refuse_existing("output", [p for p in paths if p], overwrite)


def write_table(table: Table, markdown=None, csv_path=None, json_path=None, title=None) -> list:
    """Write the requested formats atomically; returns the paths written."""
    import contextlib

    written = []
    # all formats are written to temps first and renamed together: a failed write leaves none
    with contextlib.ExitStack() as stack:
        for path, text in ((markdown, lambda: to_markdown(table, title)), (csv_path, lambda: to_csv(table)),
                           (json_path, lambda: to_json(table))):
            if path:
                tmp = stack.enter_context(atomic_path(path))
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(text())
                written.append(str(path))
    return written
