"""Step 1: synthetic susceptibility maps (ppm) from a COSMOS-like map and its mask.

Launcher at the original method's path; the code is `daqsm.training_data.genChi` in the installed package
(`pip install -e .`), also the console command `daqsm-genchi`.
"""
import sys

from daqsm.training_data.genChi import cli

if __name__ == "__main__":
    sys.exit(cli())
