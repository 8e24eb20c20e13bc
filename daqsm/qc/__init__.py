"""Quality control of a field map and of a QSM made from it (steps 5, inference, classic baselines).

Between the data side and its users: it imports daqsm.training_data (the one dipole kernel) and is
imported by daqsm.network_model (fine-tuning's stop and lambda_tv, the QC map of step 5 and inference)
and daqsm.evaluation (nonlinear TV's alpha); it imports neither of them and no TensorFlow.

noise.py      noise level of a local field map (ppm) from its finest wavelet band
residual.py   the QC map: weighted data-consistency residual of a QSM (ppm) and its summary
tv_alpha.py   nonlinear / linear TV's alpha scan and the no-truth discrepancy rule (stage 1), on that noise
              estimate: the baselines' `--alpha auto` and step 5's lambda rule (network_model/tv_weight.py)
"""
