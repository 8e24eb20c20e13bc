"""Same seed, same machine, same versions -> the same bits, for every step including training.

The tiny demo (simulator, steps 1-5, inference, evaluation, figures) runs twice in fresh processes
with the same seed (fixtures `tiny_run`, `tiny_rerun` in tests/conftest.py; the second with
--overwrite over a copy of the first, every file of which it must rewrite), and every output is
compared bit for bit: all HDF5 datasets and attributes, NIfTI data, affine and
header, the weights and architecture inside each `.keras` file, the loss logs and tables, the JSON
sidecars and the PNG figures. The seeds and op determinism are set in one place,
daqsm/tf_env.py.

Left out, because they are not results: wall times (`elapsed_s` in the loss logs, `seconds` of the
inference sidecar, `seconds_per_iteration` and `seconds_with_scan` of the step-5 sidecar, `date_saved` in a `.keras` file,
and so the loss-curve PNGs, whose lower panel plots elapsed_s), the SHA256 of a model file in the
provenance sidecars (a `.keras` file holds its date_saved), Keras's `shared_object_id` (a Python
object id), the folder's own path where a config records it, TensorBoard event files (they hold
wall-clock stamps) and the step-4 checkpoints (the same weights are compared through
`target_model.keras`). No step is excluded: all of them reproduce.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

#: keys (CSV columns, JSON keys) holding wall time or object ids, not results
TIME_KEYS = ("elapsed_s", "seconds", "seconds_per_iteration", "seconds_with_scan", "date_saved")
#: a sidecar's model SHA256 hashes a `.keras` file, which stores its save date (the same weights are
#: compared through the model file itself)
IGNORED_KEYS = TIME_KEYS + ("shared_object_id", "SHA256")
SKIPPED_PARTS = ("tensorboard", "checkpoints")
#: step 4's resume guard hashes the patch file's bytes, and that file's config attribute holds the
#: run folder's absolute paths; the patches themselves are compared as arrays
SKIPPED_FILES = ("patch_files.json",)


def _h5_arrays(h5, root: str, out: dict, prefix: str) -> None:
    import h5py

    def visit(name, obj):
        for key, value in obj.attrs.items():
            out[f"{prefix}:{name}@{key}"] = _normalise(value, root)
        if isinstance(obj, h5py.Dataset):
            out[f"{prefix}:{name}"] = obj[()]

    for key, value in h5.attrs.items():
        out[f"{prefix}:@{key}"] = _normalise(value, root)
    h5.visititems(visit)


def _normalise(value, root: str):
    """A string or JSON-like value with the run folder's path replaced and IGNORED_KEYS dropped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.replace(root, "<RUN>")
    if isinstance(value, dict):
        return {k: _normalise(v, root) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, list):
        return [_normalise(v, root) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return np.array([_normalise(v, root) for v in value.ravel()], dtype=object).reshape(value.shape)
    return value


def file_arrays(path: Path, root: Path) -> dict:
    """What a result file holds, as comparable values keyed by 'file:item' (empty if not a result)."""
    import h5py
    import nibabel as nib

    root = Path(root).resolve()
    path = Path(path).resolve()
    rel, name, root_s = path.relative_to(root).as_posix(), path.name, str(root)
    out: dict = {}
    if name.endswith(".h5"):
        with h5py.File(path, "r") as h5:
            _h5_arrays(h5, root_s, out, rel)
    elif name.endswith((".nii", ".nii.gz")):
        image = nib.load(path)
        out[f"{rel}:data"] = np.asanyarray(image.dataobj)
        out[f"{rel}:affine"] = image.affine
        out[f"{rel}:header"] = np.frombuffer(image.header.binaryblock, np.uint8)
    elif name.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
                _h5_arrays(h5, root_s, out, rel)
            out[f"{rel}:config.json"] = _normalise(json.loads(archive.read("config.json")), root_s)
            out[f"{rel}:metadata.json"] = _normalise(json.loads(archive.read("metadata.json")), root_s)
    elif name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = [j for j, column in enumerate(rows[0]) if column not in TIME_KEYS] if rows else []
        out[f"{rel}:cells"] = [[row[j] for j in keep if j < len(row)] for row in rows]
    elif name.endswith(".json"):
        out[f"{rel}:json"] = _normalise(json.loads(path.read_text(encoding="utf-8")), root_s)
    elif name.endswith(".png") and "loss" in name:
        pass  # loss curves: the lower panel plots elapsed_s
    elif name.endswith((".md", ".png")):
        out[f"{rel}:bytes"] = path.read_bytes().replace(root_s.encode(), b"<RUN>")
    return out


def folder_arrays(root: Path) -> dict:
    """`file_arrays` of every result file under root."""
    out: dict = {}
    for path in sorted(Path(root).rglob("*")):
        if (path.is_file() and not set(SKIPPED_PARTS) & set(path.relative_to(root).parts)
                and path.name not in SKIPPED_FILES):
            out.update(file_arrays(path, Path(root)))
    return out


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            # bit for bit: same dtype, shape and bytes (NaN payloads included, -0.0 != 0.0)
            return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a == b))
    return a == b


def differences(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not _equal(a[k], b[k]))


def test_same_seed_rerun_gives_identical_outputs(tiny_run, tiny_rerun):
    first, second = folder_arrays(tiny_run), folder_arrays(tiny_rerun)
    # every step's outputs are among the compared files
    for needed in ("source/chi.nii.gz:data", "targets/Sim2Snr1/local_field.nii.gz:data", "step1_chi.h5:chi",
                   "step2_fields.h5:field", "step3_patches.h5:target/field", "step4_pretrain/log.csv:cells",
                   "pretrained/Sim2Snr1.nii.gz:data", "finetuned/Sim2Snr1.nii.gz:data",
                   "finetuned/Sim2Snr1_loss.csv:cells", "table.json:json", "figures/finetuned_SNR1.png:bytes"):
        assert needed in first, needed
    assert any(k.startswith("step4_pretrain/target_model.keras:") and "vars" in k for k in first)
    # the rerun wrote over a copy of the first run: each file compared must be its own, not the copy's
    started = (tiny_rerun.parent / "run2.started").stat().st_mtime_ns
    stale = [str(p.relative_to(tiny_rerun)) for p in tiny_rerun.rglob("*") if p.is_file() and p.stat().st_mtime_ns < started]
    assert not stale, f"files of the copy the rerun did not rewrite: {stale[:5]}"
    # the rerun's one other option, recorded in its resolved config: --overwrite
    overwrite = [arrays["demo_config.json:json"].pop("overwrite") for arrays in (first, second)]
    assert overwrite == [False, True]
    assert differences(first, second) == []


def test_comparison_sees_one_ulp_and_ignores_wall_time(tiny_run, tmp_path):
    """The bit comparison above can fail: one float32 ulp in one voxel is a difference, a changed
    elapsed_s is not."""
    import nibabel as nib

    copy = tmp_path / "copy"
    (copy / "finetuned").mkdir(parents=True)
    for name in ("Sim2Snr1.nii.gz", "Sim2Snr1_loss.csv"):
        shutil.copy(tiny_run / "finetuned" / name, copy / "finetuned" / name)
    original = {**file_arrays(copy / "finetuned" / "Sim2Snr1.nii.gz", copy),
                **file_arrays(copy / "finetuned" / "Sim2Snr1_loss.csv", copy)}

    image = nib.load(copy / "finetuned" / "Sim2Snr1.nii.gz")
    data = np.asanyarray(image.dataobj).copy()
    index = np.unravel_index(np.argmax(np.abs(data)), data.shape)
    data[index] = np.nextafter(data[index], np.float32(np.inf))
    nib.save(nib.Nifti1Image(data, image.affine, image.header), copy / "finetuned" / "Sim2Snr1.nii.gz")
    log = copy / "finetuned" / "Sim2Snr1_loss.csv"
    rows = list(csv.reader(log.open(newline="")))
    column = rows[0].index("elapsed_s")
    rows[-1][column] = "12345.0"
    with log.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    changed = {**file_arrays(copy / "finetuned" / "Sim2Snr1.nii.gz", copy), **file_arrays(log, copy)}
    assert differences(original, changed) == ["finetuned/Sim2Snr1.nii.gz:data"]
