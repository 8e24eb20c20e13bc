"""`python -m daqsm.evaluation`: the RC2 metric table (see daqsm/evaluation/cli.py for the options)."""
from __future__ import annotations

from daqsm.evaluation.cli import build_parser, cli, main  # noqa: F401  (main/build_parser re-exported for tests)

if __name__ == "__main__":
    cli()
