"""Step 2: local field maps (ppm) of chi maps by dipole convolution (GPU when TensorFlow sees one).

Launcher at the original method's path; the code is `daqsm.training_data.qsmFmapCal_gpu` in the installed package
(`pip install -e .`), also the console command `daqsm-fieldmap`.
"""
import sys

from daqsm.training_data.qsmFmapCal_gpu import cli

if __name__ == "__main__":
    sys.exit(cli())
