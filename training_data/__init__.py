"""Data side of the pipeline (steps 1-3 and the target-domain simulator).

errors.py          InputError and the CLI wrapper (exit status 2 on bad input)
units.py           Hz / rad / ppb -> ppm conversions, gamma_bar
geometry.py        Geometry (shape, voxel_size_mm, b0_dir); B0 direction from a NIfTI affine
volume_io.py       read/write NIfTI, MAT v5/v7.3, HDF5, .npy with voxel size, affine, B0
formats/           one module per pipeline file (reader + writer): case folder, step-1 chi HDF5,
                   field-map HDF5, patch HDF5; the weighting echo is decided in formats/case_folder.py
dipole.py          the one dipole kernel and forward model (numpy and TensorFlow)       step 2
tissue.py          per-label chi (RC2 chiref, Sim1/Sim2), M0 and R2* at 7 T
texture.py         correlated texture and deep-grey iron gradients
phantom.py         built-in head phantom (MNI ICBM152 anatomy, RC2 labels, texture)
gre.py             multi-echo GRE signal, k-space crop, noise, RC2 field estimate
gibbs.py           Gibbs ringing removal of the cropped ground truth (dipy), ringing measure
simulate.py        RC2-like target cases Sim{1,2}Snr{1,2} (builtin or RC2 phantom)
augment.py         elastic deformation, small affine, contrast changes                 step 1
strong_sources.py  added high-susceptibility sources (haemorrhage/vein/calcification)  step 1
step_config.py     frozen step configs <- config file <- command-line options
genChi.py          synthetic susceptibility maps from a COSMOS map                     step 1
qsmFmapCal_gpu.py  field maps of susceptibility maps by dipole convolution             step 2
patches.py         patch cutting (the patch HDF5 layout: formats/patch_h5.py)          step 3
patch_inputs.py    source/target volumes for step 3, read one at a time                step 3
"""
