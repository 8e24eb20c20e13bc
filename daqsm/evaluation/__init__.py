"""Evaluation: RC2 metrics, result tables, figures and classic inversions for comparison.

metrics.py    the eight QSM Challenge 2.0 metrics, HFEN, XSIM, correlation (numpy only)
tables.py     metric x dataset tables as Markdown, CSV and JSON
figures.py    orthogonal-slice figures and loss curves (PNG)
baselines.py  TKD, closed-form L2-gradient, nonlinear and linear TV (solver: training_data/tv_inversion.py)
baseline_cli.py  the baseline command (daqsm-baseline): solvers + nltv_alpha's `--alpha auto`, `--case`
nltv_alpha.py nonlinear TV's alpha: L-curve, best by truth (stage 2); stage 1 from qc/tv_alpha.py
demo.py       `daqsm-demo`: the five steps, evaluation and figures in one run
qsmci.py      QSM-CI algorithm entry: /input (local field ppm, mask, params.json) -> /output/chimap.nii.gz
cli.py        the evaluation command (`python -m daqsm.evaluation`, daqsm-evaluate)
__main__.py   `python -m daqsm.evaluation`
"""
