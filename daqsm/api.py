"""The pipeline as functions on arrays in memory (`import daqsm`); the five scripts call the same code.

Conventions: float32 arrays, axes (x, y, z) (a leading N for stacks of maps), fields and chi in ppm,
masks 0/1, voxel sizes in mm, B0 directions in voxel axes, B0 in tesla, TE in seconds. Bad input
raises daqsm.errors.InputError (a ValueError) with the one-line message the commands print.
Step 4 on arrays runs its core in memory (no file), and so does step 5 (its array core,
daqsm.network_model.finetune_core); step 4 on a patch file runs the file-based loop in a temporary
folder (checkpoints, logs) and returns what it produced; nothing is left on disk.
"""
from __future__ import annotations

import csv
import os
import tempfile

import numpy as np


def _check_quantities(**values) -> None:
    """The commands' range table (daqsm/validate.py) on the geometry and acquisition arguments."""
    from daqsm.validate import QUANTITY_OF, check_value

    for name, value in values.items():
        check_value(name, QUANTITY_OF[name], value)


def synthesize_maps(chi_ppm, mask, n_maps: int, seed: int = 0, voxel_size_mm=(1.0, 1.0, 1.0),
                    b0_dir=(0.0, 0.0, 1.0), **augment):
    """Step 1: synthetic susceptibility maps from one source map (as `genChi.py`; daqsm/training_data/synthesis.py).

    Args:
        chi_ppm: float32 (x, y, z) source susceptibility (e.g. COSMOS), ppm; 0 is used outside the mask.
        mask: (x, y, z) brain mask 0/1.
        n_maps: number of maps N; seed: sample i draws from (seed, i) only.
        voxel_size_mm, b0_dir: the source's geometry.
        **augment: any GenChiConfig / AugmentParams field (e.g. strong_source_fraction=0.0).

    Returns:
        (chi float32 (N, x, y, z) ppm, masks bool (N, x, y, z), list of N dicts of the drawn values).
    """
    from daqsm.training_data.synthesis import GenChiConfig, SourceMap, synthesize
    from daqsm.training_data.volume_io import check_mask

    _check_quantities(voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, seed=seed)
    chi_ppm = np.asarray(chi_ppm, np.float32)
    mask = check_mask(mask, "mask", chi_ppm, "chi_ppm")
    config = GenChiConfig(n_maps=n_maps, seed=seed, **augment)
    source = SourceMap(np.where(mask, chi_ppm, 0).astype(np.float32), mask, tuple(map(float, voxel_size_mm)),
                       tuple(map(float, b0_dir)), np.diag(list(map(float, voxel_size_mm)) + [1.0]), "array", "array")
    maps = [synthesize([source], config, i) for i in range(n_maps)]
    return np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps]), [m[2] for m in maps]


def field_maps(chi_ppm, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), mask=None, pad="auto",
               demean: bool = False, keep_background: bool = False):
    """Step 2: field maps by dipole convolution (as `qsmFmapCal_gpu.py`, daqsm/training_data/fieldmaps.py; TensorFlow).

    Args:
        chi_ppm: float32 (x, y, z) or (N, x, y, z) susceptibility, ppm.
        voxel_size_mm: 3 floats; b0_dir: B0 direction (voxel axes).
        mask: optional (x, y, z) or (N, x, y, z) 0/1; the field is 0 outside it unless keep_background.
        pad: FFT padding (none | fast | auto | N voxels); demean: subtract the mean inside the mask.

    Returns:
        float32 field in ppm, the shape of chi_ppm.
    """
    from daqsm.training_data.fieldmaps import FieldEngine, compute_field

    _check_quantities(voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    chi_ppm = np.asarray(chi_ppm, np.float32)
    stack = chi_ppm if chi_ppm.ndim == 4 else chi_ppm[None]
    masks = None if mask is None else (np.asarray(mask) if np.ndim(mask) == 4 else np.asarray(mask)[None])
    engine = FieldEngine(pad)
    out = np.stack([compute_field(c, voxel_size_mm, b0_dir, None if masks is None else masks[i % len(masks)],
                                  demean=demean, keep_background=keep_background, engine=engine)
                    for i, c in enumerate(stack)])
    return out if chi_ppm.ndim == 4 else out[0]


def _per_target(name: str, value, count: int, triple: bool) -> list:
    """One value for every target, or a sequence with one per target (InputError naming the argument);
    each value checked against the one table of ranges."""
    from daqsm.errors import InputError

    if value is None or np.ndim(value) == (1 if triple else 0):
        _check_quantities(**{name: value})  # also when there is no target: a wrong value is still wrong
        return [value] * count
    values = list(value)
    if np.ndim(value) != (2 if triple else 1) or len(values) != count:
        shape = "an (x, y, z) triple" if triple else "a number"
        raise InputError(f"{name}: expected {shape} or one per target ({count}), got {np.shape(value)}")
    for item in values:
        _check_quantities(**{name: item})
    return values


def make_patches(source_fields, source_masks, source_chis, target_fields=(), target_masks=(), target_weights=None,
                 voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), target_b0_tesla=None, target_te_s=None,
                 target_voxel_size_mm=None, target_b0_dir=None, **config) -> dict:
    """Step 3: patches of source and target volumes (as `genRDFPatchesSyn.py`, without the file; daqsm/training_data/patches.py).

    Args:
        source_fields, source_masks, source_chis: sequences (or (N, x, y, z) stacks) of source field
            (ppm), mask (0/1) and chi (ppm) volumes.
        target_fields, target_masks: the target volumes (ppm, 0/1); target_weights: their weights in
            [0, 1] (None: the masks).
        voxel_size_mm, b0_dir: geometry of the sources (and of the targets unless given below).
        target_b0_tesla, target_te_s: the targets' acquisition (the weighting echo), for step 4's phase
            scale: one value for every target or a sequence with one per target.
        target_voxel_size_mm, target_b0_dir: the targets' geometry where it is not the sources': one
            (x, y, z) triple for every target or one per target.
        **config: any PatchConfig field (patch_size, stride, mode, target_patch_size, ...).

    Targets of several protocols (voxel size, B0 direction, B0, TE) give the dict the step-3 file's
    format 3 has (target attr 'protocols', index 'target_protocol'); `pretrain` then gives each crop
    its own dipole kernel and phase scale.

    Returns:
        {'source': {'field', 'mask', 'chi'}, 'target': {'field', 'mask', 'weight'}} float32
        (n, px, py, pz) arrays, 'index': {'source_volume', 'source_origin', ...}, 'attrs': root attrs.
        `pretrain(patches=...)` takes this dict.
    """
    import h5py

    from daqsm.training_data.patch_inputs import ArrayInputs, PatchVolume
    from daqsm.training_data.patches import PatchConfig, cut_patches

    _check_quantities(voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    vs, b0 = tuple(map(float, voxel_size_mm)), tuple(map(float, b0_dir))
    sources = ArrayInputs(PatchVolume(f"source[{i}]", f, m, c, vs, b0)
                          for i, (f, m, c) in enumerate(zip(source_fields, source_masks, source_chis)))
    weights = target_masks if target_weights is None else target_weights
    n = len(target_fields)
    per_target = {"target_voxel_size_mm": _per_target("target_voxel_size_mm", target_voxel_size_mm, n, True),
                  "target_b0_dir": _per_target("target_b0_dir", target_b0_dir, n, True),
                  "target_b0_tesla": _per_target("target_b0_tesla", target_b0_tesla, n, False),
                  "target_te_s": _per_target("target_te_s", target_te_s, n, False)}
    protocols = []
    for i in range(n):
        tvs, tb0, tesla, te = (per_target[key][i] for key in per_target)
        protocols.append((vs if tvs is None else tuple(map(float, tvs)), b0 if tb0 is None else tuple(map(float, tb0)),
                          None if tesla is None else float(tesla), None if te is None else float(te)))
    targets = ArrayInputs(PatchVolume(f"target[{i}]", f, m, w, *protocols[i])
                          for i, (f, m, w) in enumerate(zip(target_fields, target_masks, weights)))
    with h5py.File(f"daqsm-patches-{id(sources)}", "w", driver="core", backing_store=False) as h5:
        cut_patches(h5, sources, targets, PatchConfig(**config), quiet=True)
        out = {group: {key: np.asarray(h5[group][key]) for key in h5[group]} for group in ("source", "target")}
        out["index"] = {key: np.asarray(h5["index"][key]) for key in h5["index"]}
        out["attrs"] = {"source": dict(h5["source"].attrs), "target": dict(h5["target"].attrs), **dict(h5.attrs)}
    return out


def _read_log(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def pretrain(patches: dict | None = None, patch_file=None, **config):
    """Step 4: domain-adaptive pre-training (as `network_model/train_model/train.py`).

    Args:
        patches: `make_patches`' dict (source field/mask/chi, target field/mask/weight): trained in
            memory by daqsm.network_model.pretrain_core.pretrain_arrays, nothing written; or
        patch_file: a step-3 patch HDF5 instead (run in a temporary run folder).
        **config: any PretrainConfig field (depth, base_filters, batch_size, max_steps, learning_rate,
            lambda_ndi, lambda_tv, ndi_floor, phase_rad_per_ppm, seed, ...).

    Returns:
        (target model: keras.Model, inputs [field (b, x, y, z, 1) ppm, mask] -> chi ppm;
         log: list of dicts per step: loss, l1, ndi, tv, ...).
    """
    from daqsm.errors import InputError
    from daqsm.network_model.config import resolve_config
    from daqsm.network_model.model_info import load_model_file
    from daqsm.network_model.pretrain_core import pretrain_arrays
    from daqsm.network_model.pretraining import PretrainConfig
    from daqsm.network_model.pretraining import pretrain as run_pretrain

    if (patches is None) == (patch_file is None):
        raise InputError("pretrain: give patches (make_patches' dict) or patch_file, one of them")
    config.setdefault("progress", False)
    if patches is not None:  # the array-first core: nothing is written
        cfg = resolve_config(PretrainConfig, None, datasets_path="<arrays>", **config)
        return pretrain_arrays(patches, cfg)
    with tempfile.TemporaryDirectory(prefix="daqsm-pretrain-") as tmp:
        cfg = resolve_config(PretrainConfig, None, datasets_path=str(patch_file), run_dir=os.path.join(tmp, "run"),
                             **config)
        if run_pretrain(cfg) != 0:
            raise InputError("pretrain: stopped on a non-finite loss (lower learning_rate or check the patches)")
        model = load_model_file(os.path.join(cfg.run_dir, "target_model.keras"))
        return model, _read_log(os.path.join(cfg.run_dir, "log.csv"))


def finetune(model, field_ppm, mask, weight=None, voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
             b0_tesla: float | None = None, te_s: float | None = None, **config):
    """Step 5: fine-tune a target model on one volume (as `network_model/model_finetune/train.py`).

    Args:
        model: a target model (keras.Model from `pretrain`) or a path to one (.keras / step-4 run folder).
        field_ppm: float32 (x, y, z) local field, ppm; mask: (x, y, z) 0/1.
        weight: (x, y, z) NDI weight, e.g. the 2nd echo's magnitude (normalised to max 1 in the
            mask); None: the mask.
        voxel_size_mm, b0_dir: geometry; b0_tesla, te_s: the weighting echo's acquisition, giving the
            NDI phase scale 2 pi gamma_bar B0 TE (or give phase_rad_per_ppm in config).
        **config: any FinetuneConfig field (iterations, learning_rate, lambda_tv, tau, seed, ...).

    Returns:
        (chi float32 (x, y, z) ppm; record: the sidecar dict (FineTuning: iterations, stop_reason, noise) with
         'log', a list of dicts per iteration; the fine-tuned keras.Model).
    """
    from daqsm.errors import InputError
    from daqsm.network_model.config import resolve_config
    from daqsm.network_model.finetune_core import finetune_volume
    from daqsm.network_model.finetuning import FinetuneConfig, load_target_model
    from daqsm.network_model.target_data import target_from_arrays
    from daqsm.network_model.unet import describe_target_model

    config.setdefault("progress", False)
    _check_quantities(voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    params = resolve_config(FinetuneConfig, None, b0_tesla=b0_tesla, te_s=te_s, **config)
    target = target_from_arrays(field_ppm, mask, weight, voxel_size_mm, b0_dir, b0_tesla, te_s,
                                params.phase_rad_per_ppm)
    if isinstance(model, (str, os.PathLike)):
        model, info = load_target_model(str(model))
    else:
        try:
            info = describe_target_model(model)
        except (ValueError, KeyError) as err:
            raise InputError(f"model: not a target model of this package ({err})") from None
        import keras

        weights, model = model.get_weights(), keras.models.clone_model(model)  # the caller's model stays as it is
        model.set_weights(weights)
    result = finetune_volume(model, target, params, info)  # writes nothing
    if result.status != "ok":
        raise InputError("finetune: stopped on a non-finite loss; nothing produced")
    return result.chi, {**result.record, "log": result.log}, result.model


def infer(model, field_ppm, mask, tile=(96,), overlap=(32,), whole: bool = False, batch_size: int = 1,
          divisor: int | None = None):
    """Inference (as `network_model/infer.py`): chi of one volume by a target model.

    Args:
        model: keras.Model (contract 3) or a path to one.
        field_ppm: float32 (x, y, z) local field, ppm; mask: (x, y, z) 0/1.
        tile, overlap: tile size / overlap in voxels (1 or 3 ints); whole: one pass, no tiles.
        divisor: 2**depth (default: the model's info sidecar, else its pooling layers).

    Returns:
        float32 (x, y, z) chi in ppm, 0 outside the mask's box.
    """
    from daqsm.network_model.infer import predict_volume
    from daqsm.network_model.model_info import load_model_file, read_model_info, resolve_model_path, spatial_divisor
    from daqsm.training_data.volume_io import check_mask

    info = {}
    if isinstance(model, (str, os.PathLike)):
        info = read_model_info(resolve_model_path(str(model)))
        model = load_model_file(str(model))
    field_ppm = np.asarray(field_ppm, np.float32)
    mask = check_mask(mask, "mask", field_ppm, "field_ppm")
    divisor = divisor or info.get("divisor") or spatial_divisor(model)
    tile, overlap = tuple(np.ravel(tile).tolist()), tuple(np.ravel(overlap).tolist())
    return predict_volume(model, field_ppm, mask, divisor, tile, overlap, whole, batch_size)[0]


def metrics(chi_ppm, truth_ppm, segmentation, mask) -> dict:
    """The eight RC2 metrics of a reconstruction (daqsm.evaluation.metrics.rc2_metrics; no TensorFlow).

    Args:
        chi_ppm, truth_ppm: float (x, y, z) in ppm; segmentation: int (x, y, z) RC2 labels or None;
        mask: (x, y, z) 0/1 evaluation mask.

    Returns:
        {row: value} in the RC2 order (rmse, rmse_detrend, ..., calcification streaking).
    """
    from daqsm.evaluation.metrics import rc2_metrics

    return dict(rc2_metrics(chi_ppm, truth_ppm, segmentation, mask).values)
