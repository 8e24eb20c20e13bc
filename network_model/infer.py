"""Inference: target model + local field (ppm) + mask -> QSM NIfTI (ppm), tiled for large volumes.

Launcher at the original method's path; the code is `daqsm.network_model.infer` in the installed package
(`pip install -e .`), also the console command `daqsm-infer`.
"""
import sys

from daqsm.network_model.infer import cli

if __name__ == "__main__":
    sys.exit(cli())
