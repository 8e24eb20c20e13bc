"""Data side of the pipeline (steps 1-3 and the target-domain simulator).

Shared infrastructure (errors, TensorFlow setup, the config layer) lives in daqsm/; this
package imports it, never the other way round.

units.py           Hz / rad / ppb -> ppm conversions, gamma_bar
geometry.py        Geometry (shape, voxel_size_mm, b0_dir); B0 direction from a NIfTI affine; a box
                   of the grid (extract_patch)
volume_io.py       read/write NIfTI, MAT v5/v7.3, HDF5, .npy with voxel size, affine, B0
field_geometry.py  a field's geometry from its file, a NIfTI mask/magnitude, an option or a default
formats/           one module per pipeline file (reader + writer): case folder, step-1 chi HDF5,
                   field-map HDF5, patch HDF5, provenance sidecar; the weighting echo is decided in
                   formats/case_folder.py
dipole.py          the one dipole kernel and forward model (numpy and TensorFlow)       step 2
simulator/         the target-domain simulator (phantom, tissue, texture, GRE, Gibbs, simulate.py):
                   RC2-like target cases Sim{1,2}Snr{1,2} (builtin or RC2 phantom)
augment.py         elastic deformation, small affine, contrast changes                 step 1
strong_sources.py  added high-susceptibility sources (haemorrhage/vein/calcification)  step 1
synthesis.py       synthetic susceptibility maps from a COSMOS map (GenChiConfig,      step 1
                   load_sources, synthesize, the HDF5 / NIfTI-folder writers)
genChi.py          step 1's command: parse -> synthesis -> write                        step 1
fieldmaps.py       field maps of susceptibility maps by dipole convolution (ChiMap,     step 2
                   iter_chi_maps, FieldEngine, compute_field, StagedOutput, FieldmapConfig,
                   write_field_maps)
qsmFmapCal_gpu.py  step 2's command: parse -> fieldmaps -> write                        step 2
patches.py         PatchConfig, patch grid and cutting (cut_patches, write_patches;     step 3
                   the patch HDF5 layout: formats/patch_h5.py); command genRDFPatchesSyn.py
patch_inputs.py    source/target volumes for step 3, read one at a time                step 3
input_check.py     the input checks of steps 3, 5 and inference, without TensorFlow (step 3 uses
                   them, so they live here; the daqsm-check command is network_model/check_cli.py)
tv_inversion.py    nonlinear / linear TV dipole inversion by ADMM (FANSI-style): the baselines'
                   and step 5's lambda rule's classic solver
"""
