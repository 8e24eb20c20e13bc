"""Step 5 — per-dataset fine-tuning: pre-trained target model + one field map (ppm) -> QSM (ppm, NIfTI).

The step itself (loss, stopping rule, outputs) is network_model/finetuning.py; this script parses
the options (network_model/finetuning.FinetuneConfig, one `--key` per field, or a `--config`
file) and calls it. From Python on arrays: `daqsm.finetune`.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python network_model/model_finetune/train.py` from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from daqsm.config import ArgumentParser  # noqa: E402
from daqsm.errors import run_cli  # noqa: E402
from network_model.config import add_config_arguments, resolve_config  # noqa: E402
from network_model.finetuning import (  # noqa: E402, F401  (the step's names, importable from its script as before)
    PROG,
    FinetuneConfig,
    centred_padding,
    finetune,
    load_inputs,
    load_target_model,
    output_paths,
)


def build_parser() -> argparse.ArgumentParser:
    from network_model import finetuning

    parser = ArgumentParser(prog="train.py", description=finetuning.__doc__.split("\n\n")[0],
                                     epilog=finetuning.__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, FinetuneConfig)
    return parser


def main(argv=None) -> int:
    from training_data.provenance import command

    args = build_parser().parse_args(argv)
    with command("daqsm-finetune", argv):
        return run_cli(lambda: finetune(resolve_config(FinetuneConfig, args)), PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
