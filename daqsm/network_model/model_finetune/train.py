"""Step 5 — per-dataset fine-tuning: pre-trained target model + one field map (ppm) -> QSM (ppm, NIfTI).

The step itself (loss, stopping rule, outputs) is daqsm/network_model/finetuning.py; this script parses
the options (daqsm/network_model/finetuning.FinetuneConfig, one `--key` per field, or a `--config`
file) and calls it. From Python on arrays: `daqsm.finetune`.
"""
from __future__ import annotations

import argparse
import sys

from daqsm.config import ArgumentParser
from daqsm.errors import run_cli
from daqsm.network_model.config import add_config_arguments, resolve_config
from daqsm.network_model.finetuning import (  # noqa: F401  (the step's names, importable from its script as before)
    PROG,
    FinetuneConfig,
    centred_padding,
    finetune,
    load_inputs,
    load_target_model,
    output_paths,
)


def build_parser() -> argparse.ArgumentParser:
    from daqsm.network_model import finetuning

    parser = ArgumentParser(prog="train.py", description=finetuning.__doc__.split("\n\n")[0],
                                     epilog=finetuning.__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, FinetuneConfig)
    return parser


def main(argv=None) -> int:
    from daqsm.provenance import command

    args = build_parser().parse_args(argv)
    with command("daqsm-finetune", argv):
        return run_cli(lambda: finetune(resolve_config(FinetuneConfig, args)), PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
