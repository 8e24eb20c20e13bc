"""Learning side of the pipeline (steps 4 and 5, inference).

dsbn.py             DomainSpecificBatchNormalization layer (per-domain BN statistics)
unet.py             3-D U-Net with DSBN; two-domain training view; target-model export
losses.py           L1 (source), NDI data consistency (target, radians), anisotropic TV, and the
                    loss compositions of steps 4 and 5
data.py             tf.data pipelines: patches in memory or from the step-3 patch HDF5
training_loop.py    GradientTape loop shared by pre-training and fine-tuning
stopping.py         fine-tuning's stopping rule (discrepancy principle with model error + flat loss)
tv_weight.py        fine-tuning's lambda_tv per case without truth (NLTV's rule mapped to network units)
finetune_core.py    step 5's core on arrays: finetune_volume(model, target, params) -> result, no files
distributed.py      several workers (MultiWorkerMirroredStrategy, TF_CONFIG)
precision.py        mixed precision (float16 / bfloat16 policies, loss scaling)
config.py           steps 4-5 and inference on the one config layer (daqsm/config.py)
model_info.py       training geometry beside a saved model; atomic model saving
target_data.py      one target dataset (case folder or files) for fine-tuning
tiling.py           overlapping-tile inference with smooth blending
infer.py            inference command (pre-trained or fine-tuned model -> QSM)
check_cli.py        daqsm-check: the input readers of step 5 or inference, without the model
shipped.py          the pre-trained model the package ships in daqsm/models/, verified by its SHA-256 manifest
pretrain_core.py    step 4's core on arrays: loss with the data-term floor, batches, pretrain_arrays
pretraining.py      step 4's file shell: PretrainConfig, pretrain (run folder, checkpoints, resume, chunks)
finetuning.py       step 5's file shell: FinetuneConfig, read/check inputs once, lock, sidecars, writes
train_model/        step 4's script (thin: parse -> pretraining.pretrain)
model_finetune/     step 5's script (thin: parse -> finetuning.finetune)
"""
