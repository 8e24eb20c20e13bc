"""Step 3: training patches (synthetic source + target crops) into one HDF5 file.

Launcher at the original method's path; the code is `daqsm.training_data.genRDFPatchesSyn` in the installed package
(`pip install -e .`), also the console command `daqsm-patches`.
"""
import sys

from daqsm.training_data.genRDFPatchesSyn import cli

if __name__ == "__main__":
    sys.exit(cli())
