"""One module per file format, each with its reader and its writer (used by every command).

case_folder.py  case folder (data contract 1): local_field.nii.gz (ppm), mask, magnitude, case.json
chi_h5.py       step-1 HDF5: /chi (N, x, y, z) ppm, /mask, /params                     step 1 -> 2, 3
chi_folder.py   step-1 NIfTI folder: chi_IIII.nii.gz, mask_IIII.nii.gz, params.json    step 1 -> 2, 3
field_h5.py     field-map HDF5: /field (N, x, y, z) ppm                                step 2 -> 3
patch_h5.py     patch HDF5 (contract 2, format version 2): /source, /target, /index    step 3 -> 4
"""
