"""Step 4: domain-adaptive pre-training (DSBN U-Net, L1 + NDI + TV) -> target model .keras.

Launcher at the original method's path; the code is `daqsm.network_model.train_model.train` in the installed package
(`pip install -e .`), also the console command `daqsm-train`.
"""
import sys

from daqsm.network_model.train_model.train import cli

if __name__ == "__main__":
    sys.exit(cli())
