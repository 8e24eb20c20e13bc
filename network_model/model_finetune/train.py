"""Step 5: per-dataset fine-tuning (NDI + TV) of a target model -> QSM NIfTI (ppm).

Launcher at the original method's path; the code is `daqsm.network_model.model_finetune.train` in the installed package
(`pip install -e .`), also the console command `daqsm-finetune`.
"""
import sys

from daqsm.network_model.model_finetune.train import cli

if __name__ == "__main__":
    sys.exit(cli())
