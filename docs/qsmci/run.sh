#!/bin/bash
# QSM-CI entry point: /input (localfield.nii.gz in ppm, mask.nii.gz, params.json) -> /output/chimap.nii.gz (ppm)
set -euo pipefail
python -m daqsm.evaluation.qsmci --input /input --output /output "$@"
