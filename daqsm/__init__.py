"""daqsm: domain-adaptive deep QSM, as a Python API on arrays in memory (the commands are thin over it).

Steps (daqsm/api.py; units in each docstring):
    synthesize_maps  step 1  chi map (ppm) + mask -> N synthetic chi maps (ppm) + masks
    field_maps       step 2  chi maps (ppm) + geometry -> field maps (ppm)
    make_patches     step 3  source (field, mask, chi) + target (field, mask, weight) -> patch arrays
    pretrain         step 4  patch arrays or a patch file -> target model (Keras) + loss log
    finetune         step 5  target model + one volume (field ppm, mask, weight) -> chi (ppm) + log
    infer                    target model + field (ppm) + mask -> chi (ppm)
    metrics                  chi, truth (ppm), segmentation, mask -> the eight RC2 metrics

Names are imported on first use (module __getattr__), so `import daqsm` does not import TensorFlow.

Shared infrastructure, importing nothing of the pipeline packages (dependencies point one way:
daqsm.api -> evaluation -> network_model -> qc -> training_data -> the modules below):
    errors.py   InputError and run_cli (one line on stderr, exit status 2)
    tf_env.py   TensorFlow import with the quiet/deterministic settings, seeding
    config.py   the one config layer of every command (dataclass < config file < options)
    validate.py      numbers against their meaning (finite, positive, in range, integer)
    outputs.py       the output contract: refuse-unless---overwrite, temp names, atomic writes, companion
                     names (the resolved config, the sidecar, a map's set)
    output_lock.py   per-output and per-set locks (fcntl), folder ownership markers
    provenance.py    sidecar records (OUT.json): command, config, inputs' SHA-256, versions, and
                     their one atomic writer

Pipeline packages (each __init__.py lists its modules):
    training_data/   steps 1-3: physics (units, geometry, dipole), volume I/O, file formats, the simulator
    qc/              quality control: a field's noise level, a QSM's data-consistency residual map
    network_model/   steps 4-5 and inference (TensorFlow / Keras)
    evaluation/      RC2 metrics, tables, figures, classic baselines, the demo

`daqsm` is the only top-level name pip installs; the step scripts at the original method's paths
(training_data/genChi.py, genRDFPatchesSyn.py, ...) are launchers into it (README, "Where the code lives").
"""
from __future__ import annotations

import os as _os

# oneDNN's CPU kernels, before anything imports TensorFlow (it reads the variable once, at import):
# TensorFlow turns them on only on some x86 CPUs, and where it does not (this project's AMD EPYC test
# machine), a 3-D convolution's training step is 5-10x slower and its gradient takes a 27-fold im2col
# buffer (1 mm fine-tuning: 16+ GB instead of 7.9 GB). Numbers: benchmarks/results_onednn.md. A value the
# user set wins; importing TensorFlow before daqsm leaves TensorFlow's own choice.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__all__ = ["synthesize_maps", "field_maps", "make_patches", "pretrain", "finetune", "infer", "metrics"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from daqsm import api

        return getattr(api, name)
    raise AttributeError(f"module 'daqsm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
