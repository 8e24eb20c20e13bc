"""Step 4 — domain-adaptive pre-training: patch HDF5 (ppm) -> DSBN U-Net -> target model (.keras).

The step itself (losses, run folder, checkpoints, resume) is daqsm/network_model/pretraining.py; this
script parses the options (daqsm/network_model/pretraining.PretrainConfig, one `--key` per field, or a
`--config` file) and calls it. From Python on arrays: `daqsm.pretrain`.

Usage:
    python network_model/train_model/train.py --datasets_path patches.h5 --run_dir runs/pre
    python network_model/train_model/train.py --config pretrain.yaml --batch_size 4
"""
from __future__ import annotations

import argparse
import sys

from daqsm.config import ArgumentParser
from daqsm.errors import run_cli
from daqsm.network_model.config import add_config_arguments, resolve_config
from daqsm.network_model.pretraining import PROG, PretrainConfig, build_loss_fn, pretrain  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    from daqsm.network_model import pretraining

    parser = ArgumentParser(prog="train.py", description=pretraining.__doc__.split("\n\n")[0],
                                     epilog=pretraining.__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, PretrainConfig)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: pretrain(resolve_config(PretrainConfig, args)), PROG)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
