"""Learning side of the pipeline (steps 4 and 5, inference).

dsbn.py             DomainSpecificBatchNormalization layer (per-domain BN statistics)
unet.py             3-D U-Net with DSBN; two-domain training view; target-model export
losses.py           L1 (source), NDI data consistency (target, radians), anisotropic TV
data.py             tf.data pipelines from the step-3 patch HDF5
training_loop.py    GradientTape loop shared by pre-training and fine-tuning
config.py           dataclass configs, config files and --key value overrides
target_data.py      one target dataset (case folder or files) for fine-tuning
tiling.py           overlapping-tile inference with smooth blending
infer.py            inference command (pre-trained or fine-tuned model -> QSM)
train_model/        step 4: domain-adaptive pre-training
model_finetune/     step 5: per-dataset fine-tuning
"""
