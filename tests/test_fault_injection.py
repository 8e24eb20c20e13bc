"""Fault injection over all 11 commands: bad inputs, unwritable outputs, bad numbers, metadata.

Every case runs a command's `main(argv)` in-process and asserts the README's promise: exit status
2, one line on stderr (no traceback), no new file or folder anywhere under the test's folders and
existing files unchanged. The inputs are tiny (16^3) so the whole table runs in seconds; commands
that need TensorFlow fail before they import it in almost every case.

Root note: as root, chmod does not block writes, so unwritable outputs are provoked with a path
under a regular file, a folder where a file is expected, /proc and /sys paths and a file-size limit
(RLIMIT_FSIZE with SIGXFSZ ignored, so a write past the limit fails with EFBIG like a full disk).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daqsm.outputs import is_any_temp
from daqsm.training_data.volume_io import write_volume
from tests.network_model.synthetic import ball_mask, make_patch_file, smooth_chi

N = 16


def _commands():
    from daqsm.evaluation import baseline_cli as baselines
    from daqsm.evaluation import cli as evaluate
    from daqsm.evaluation import demo, figures
    from daqsm.network_model import check_cli, export, infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.train_model import train as pretrain
    from daqsm.training_data import genChi, genRDFPatchesSyn, qsmFmapCal_gpu
    from daqsm.training_data.simulator import simulate

    return {"simulate": simulate.main, "genchi": genChi.main, "fieldmap": qsmFmapCal_gpu.main,
            "patches": genRDFPatchesSyn.main, "train": pretrain.main, "finetune": finetune.main,
            "infer": infer.main, "evaluate": evaluate.main, "figures": figures.main, "demo": demo.main,
            "baseline": baselines.main, "export": export.main, "check": check_cli.main}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Read-only inputs of every case (a snapshot checks that no case changes them)."""
    import h5py
    import scipy.io

    root = tmp_path_factory.mktemp("inputs")
    mask = ball_mask(N).astype(np.uint8)
    chi = smooth_chi(N, 1)
    from daqsm.training_data.dipole import forward_field

    field = (forward_field(chi) * mask).astype(np.float32)
    write_volume(root / "chi.nii.gz", chi)
    write_volume(root / "mask.nii.gz", mask)
    write_volume(root / "field.nii.gz", field)
    write_volume(root / "empty_mask.nii.gz", np.zeros_like(mask))
    write_volume(root / "small_mask.nii.gz", np.pad(np.ones((2, 2, 2), np.uint8), 7))
    write_volume(root / "nonbinary_mask.nii.gz", mask * 3)
    write_volume(root / "flat.nii.gz", np.zeros((N, N), np.float32))
    write_volume(root / "other_grid.nii.gz", np.zeros((N, N, N + 2), np.float32))
    nan = chi.copy()
    nan[3, 3, 3] = np.nan
    np.save(root / "nan.npy", nan)
    (root / "random.nii.gz").write_bytes(os.urandom(2000))
    (root / "random.keras").write_bytes(os.urandom(2000))
    (root / "text.mat").write_text("not a mat file")
    scipy.io.savemat(root / "two.mat", {"a": chi, "b": chi})
    for name, data in (("step1.h5", chi), ("step1_nan.h5", nan)):
        with h5py.File(root / name, "w") as h5:
            h5["chi"] = np.stack([np.nan_to_num(data)] * 2) if name == "step1.h5" else np.stack([data] * 2)
            h5["mask"] = np.stack([mask] * 2)
            h5["field"] = np.stack([field] * 2)
    make_patch_file(root / "patches.h5", count=4, n=N)
    # a target case folder (contract 1) and its broken variants
    for case, meta in (("case", {"b0_tesla": 3.0, "te_s": [0.004, 0.012, 0.02]}),
                       ("case_badjson", "{not json"), ("case_te_number", {"b0_tesla": 3.0, "te_s": 0.02}),
                       ("case_unknown_key", {"b0_tesle": 3.0, "te_s": [0.02]}),
                       ("case_list", [1, 2])):
        folder = root / case
        folder.mkdir()
        write_volume(folder / "local_field.nii.gz", field)
        write_volume(folder / "mask.nii.gz", mask)
        write_volume(folder / "chi.nii.gz", chi)
        write_volume(folder / "segmentation.nii.gz", mask)
        (folder / "case.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    four = root / "case_4echo_1te"  # a 4-echo magnitude but one TE: step 5 cannot tell echo 2's TE
    four.mkdir()
    write_volume(four / "local_field.nii.gz", field)
    write_volume(four / "mask.nii.gz", mask)
    write_volume(four / "magnitude.nii.gz", np.stack([mask * (1.0 - 0.1 * e) for e in range(4)], -1).astype(np.float32))
    (four / "case.json").write_text(json.dumps({"b0_tesla": 3.0, "te_s": [0.02]}))
    with h5py.File(root / "field_b0x.h5", "w") as h5:  # an HDF5 field whose attribute says B0 is along x
        h5["field"] = field
        h5.attrs["b0_dir"], h5.attrs["voxel_size_mm"] = [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rc2 = root / "rc2_corrupt"
    rc2.mkdir()
    write_volume(rc2 / "SegmentedModel.nii.gz", mask)
    write_volume(rc2 / "BrainMask.nii.gz", mask)
    (rc2 / "SusceptibilityValues.mat").write_bytes(b"MATLAB 5.0 MAT-file" + os.urandom(300))
    (root / "log.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    (root / "binary.csv").write_bytes(os.urandom(3000))
    (root / "bad_types.json").write_text(json.dumps({"batch_size": "two"}))
    (root / "bad_overlap.json").write_text(json.dumps({"overlap": ["a"]}))
    (root / "a_file").write_text("a regular file\n")
    (root / "existing.nii.gz").write_bytes(b"keep me")
    (root / "existing.h5").write_bytes(b"keep me")
    (root / "existing.png").write_bytes(b"keep me")
    (root / "existing.json").write_text("{}")
    (root / "existing.onnx").write_bytes(b"keep me")
    (root / "a_folder").mkdir()
    os.symlink("loop.nii.gz", root / "loop.nii.gz")  # a link to itself
    os.symlink("a_folder", root / "link_to_folder")
    # same shape, other affine: an x-flipped map, a y-flipped mask; a sheared grid
    write_volume(root / "chi_xflip.nii.gz", chi, affine=np.diag([-1.0, 1, 1, 1]))
    write_volume(root / "mask_yflip.nii.gz", mask, affine=np.diag([1.0, -1, 1, 1]))
    shear = np.eye(4)
    shear[0, 1] = 0.3
    write_volume(root / "sheared.nii.gz", chi, affine=shear)
    import scipy.sparse

    scipy.io.savemat(root / "char.mat", {"chi": "not a map"})
    scipy.io.savemat(root / "struct.mat", {"chi": {"x": chi}})
    scipy.io.savemat(root / "sparse.mat", {"chi": scipy.sparse.eye(N).tocsc()})
    scipy.io.savemat(root / "cell.mat", {"chi": np.array([chi, "x"], dtype=object)})
    with h5py.File(root / "string.h5", "w") as h5:
        h5["chi"] = b"not a map"
    (root / "latin1.json").write_bytes(b'{"batch_size": 2, "note": "\xff"}')
    (root / "inf_int.json").write_text('{"batch_size": Infinity}')
    # step-2 field files of other maps / another B0 direction than the step-1 maps they are paired with
    with h5py.File(root / "step1_b0.h5", "w") as h5:
        h5["chi"], h5["mask"] = np.stack([np.nan_to_num(chi)] * 2), np.stack([mask] * 2)
        h5.attrs["b0_dir"], h5.attrs["voxel_size_mm"] = [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]
    for name, files, b0 in (("fields_other.h5", ["other_0000", "other_0001"], [0.0, 0.0, 1.0]),
                            ("fields_b0x.h5", ["step1_b0_0000", "step1_b0_0001"], [1.0, 0.0, 0.0])):
        with h5py.File(root / name, "w") as h5:
            h5["field"] = np.stack([field] * 2)
            h5.attrs["files"], h5.attrs["b0_dir"], h5.attrs["voxel_size_mm"] = files, b0, [1.0, 1.0, 1.0]
    user = root / "user_folder"  # a user's own folder: never an output folder of ours
    user.mkdir()
    for name in ("params.json", "config.json", "log.csv"):
        (user / name).write_text("the user's own file\n")
    qset = root / "qset"  # a complete susceptibility-map set written as x.nii.gz
    qset.mkdir()
    write_volume(qset / "x.nii.gz", chi)
    for name in ("x.json", "x_model.keras", "x_loss.csv", "x.config.json", "x_residual.json"):
        (qset / name).write_text("part of a complete set\n")
    write_volume(qset / "x_residual.nii.gz", chi)
    (qset / "y.json").write_text('{"the user": "own notes"}\n')  # a sidecar name, no map: not ours
    return root


@pytest.fixture(scope="module")
def full():
    """A 64 KiB tmpfs, filled but for empty files: writes fail with ENOSPC (needs root and mount).

    Made outside pytest's temp folders: pytest may rename those of one session while another runs,
    and a mount or an immutable folder must be undone at its own path.
    """
    import shutil
    import subprocess
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="daqsm-full-"))
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                                         capture_output=True).returncode:
        where.rmdir()
        pytest.skip("cannot mount a small tmpfs here (not root?): full-disk cases skipped")
    try:
        try:  # fill it: an empty file (the writability probe) still fits, no data block does
            with open(where / ".filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        except OSError:
            pass
        yield where
    finally:
        # lazy: a file a failed write left open in this process must not keep the mount
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def immutable():
    """A folder with the immutable attribute (chattr +i): even root cannot create files in it."""
    import shutil
    import subprocess
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="daqsm-immutable-"))
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(where)], capture_output=True).returncode:
        where.rmdir()
        pytest.skip("chattr +i not available on this file system: immutable-folder cases skipped")
    try:
        yield where
    finally:
        subprocess.run(["chattr", "-i", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def _snapshot(*folders) -> dict:
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            out[dirpath] = "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                out[p] = os.readlink(p) if os.path.islink(p) else hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    """One fault: command, argv template ({in} inputs folder, {out} fresh output folder), message part."""

    id: str
    command: str
    argv: str
    expect: str = ""
    fsize_limit: int | None = None  # bytes: a write beyond fails with EFBIG (like a full disk)

    def args(self, inputs: Path, out: Path, full=None, immutable=None) -> list:
        return [a.format(**{"in": inputs, "out": out, "full": full, "immutable": immutable})
                for a in self.argv.split()]

    @property
    def needs(self) -> str | None:
        """'full' (a full file system) or 'immutable' (a chattr +i folder) when the case uses one."""
        return next((k for k in ("full", "immutable") if "{" + k + "}" in self.argv), None)


def _unwritable(command, template, ext):
    """The output-location faults of one command: under a file, /proc, /sys, a folder for a file."""
    cases = [Case(f"{command}-under-file", command, _f(template, "{in}/a_file/sub/x" + ext), "a_file"),
             Case(f"{command}-proc", command, _f(template, "/proc/daqsm_nope/x" + ext), "/proc"),
             Case(f"{command}-sys", command, _f(template, "/sys/daqsm_nope" + ext), "/sys")]
    cases.append(Case(f"{command}-immutable-folder", command, _f(template, "{immutable}/x" + ext), "immutable"))
    cases.append(Case(f"{command}-full-disk", command, _f(template, "{full}/x" + ext), "no space"))
    if ext and command not in ("genchi", "fieldmap"):  # these two write into an existing folder
        cases.append(Case(f"{command}-folder-for-file", command, _f(template, "{in}/a_folder"), "a_folder"))
    return cases


def _f(template: str, output: str) -> str:
    """The argv template with its output location (@O@) filled in."""
    return template.replace("@O@", output)


CHI, MASK, FIELD = "{in}/chi.nii.gz", "{in}/mask.nii.gz", "{in}/field.nii.gz"
GENCHI = f"{CHI} --mask {MASK} -n 1 --quiet --elastic-alpha 0 -o @O@"
FIELDMAP = f"{CHI} -o @O@"
PATCHES = "--source {in}/step1.h5 --patch-size 16 16 16 --quiet -o @O@"
TRAIN = "--datasets_path {in}/patches.h5 --depth 1 --base_filters 2 --max_steps 1 --progress false -o @O@"
FT = f"--model {{in}}/random.keras --field {FIELD} --mask {MASK} --b0 3 --te 0.02 -o @O@"
INFER = f"--model {{in}}/random.keras --field {FIELD} --mask {MASK} -o @O@"
EVAL = f"--recon {CHI} --truth {CHI} --mask {MASK} --json @O@"
FIG = f"slices --recon {CHI} --truth {CHI} -o @O@"
BASE = f"tkd --field {FIELD} --mask {MASK} -o @O@"
EXPORT = "--model {in}/random.keras -o @O@"
SIM = "--source {in}/rc2_corrupt --resolution 8 --quiet -o @O@"
DEMO = "--data {in}/nothing -o @O@"


CASES = [
    # --- 1. output locations that cannot be written (every command that writes)
    *_unwritable("genchi", GENCHI, ".h5"), *_unwritable("fieldmap", FIELDMAP, ".nii.gz"),
    *_unwritable("patches", PATCHES, ".h5"), *_unwritable("train", TRAIN, ""),
    *_unwritable("evaluate", EVAL, ".json"), *_unwritable("figures", FIG, ".png"),
    *_unwritable("baseline", BASE, ".nii.gz"), *_unwritable("simulate", "--source builtin --resolution 8 --quiet -o @O@", ""),
    *_unwritable("demo", "--size tiny -o @O@", ""),
    # export: the output is checked before the model is read (a full disk needs a real model: kill test)
    *[c for c in _unwritable("export", EXPORT, ".onnx") if not c.id.endswith("full-disk")],
    Case("genchi-folder-under-file", "genchi", _f(GENCHI, "{in}/a_file/out/"), "a_file"),
    Case("fieldmap-h5-under-file", "fieldmap", _f(FIELDMAP, "{in}/a_file/x.h5"), "a_file"),
    Case("finetune-under-file", "finetune", _f(FT, "{in}/a_file/q.nii.gz"), "a_file"),
    Case("infer-under-file", "infer", _f(INFER, "{in}/a_file/q.nii.gz"), "a_file"),
    Case("finetune-proc", "finetune", _f(FT, "/proc/nope/q.nii.gz"), "/proc"),
    Case("infer-proc", "infer", _f(INFER, "/proc/nope/q.nii.gz"), "/proc"),
    Case("evaluate-csv-under-file", "evaluate", f"--recon {CHI} --truth {CHI} --mask {MASK} --csv {{in}}/a_file/t.csv",
         "a_file"),
    Case("figures-losses-under-file", "figures", "losses {in}/log.csv -o {in}/a_file/l.png", "a_file"),
    # a write that fails half-way (EFBIG from a file-size limit, as a full disk gives ENOSPC)
    Case("fieldmap-fsize", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz"), "-o", fsize_limit=256),
    Case("fieldmap-h5-full-disk", "fieldmap", _f(FIELDMAP, "{full}/f.h5"), "no space"),
    Case("finetune-full-disk", "finetune", _f(FT, "{full}/q.nii.gz"), "no space"),
    Case("evaluate-markdown-full-disk", "evaluate", EVAL.replace("--json @O@", "--markdown {full}/t.md"), "no space"),
    Case("baseline-fsize", "baseline", _f(BASE, "{out}/b.nii.gz"), "-o", fsize_limit=256),
    Case("figures-fsize", "figures", _f(FIG, "{out}/s.png"), "-o", fsize_limit=512),
    Case("evaluate-fsize", "evaluate", _f(EVAL, "{out}/t.json"), "--json", fsize_limit=16),
    # existing outputs without --overwrite stay untouched
    Case("genchi-exists", "genchi", _f(GENCHI, "{in}/existing.h5"), "exists"),
    Case("fieldmap-exists", "fieldmap", _f(FIELDMAP, "{in}/existing.nii.gz"), "exists"),
    Case("patches-exists", "patches", _f(PATCHES, "{in}/existing.h5"), "exists"),
    Case("baseline-exists", "baseline", _f(BASE, "{in}/existing.nii.gz"), "exist"),
    Case("figures-exists", "figures", _f(FIG, "{in}/existing.png"), "exists"),
    Case("evaluate-exists", "evaluate", _f(EVAL, "{in}/existing.json"), "exist"),
    Case("infer-exists", "infer", _f(INFER, "{in}/existing.nii.gz"), "exists"),
    Case("finetune-exists", "finetune", _f(FT, "{in}/existing.nii.gz"), "exists"),
    # --- 1b. an output is owned whole (issue 23): user folders, companion sets, inputs as outputs
    Case("genchi-users-folder", "genchi", _f(GENCHI, "{in}/user_folder/"), "not made by"),
    Case("train-users-folder", "train", _f(TRAIN, "{in}/user_folder"), "not made by"),
    Case("finetune-other-suffix-of-a-set", "finetune", _f(FT, "{in}/qset/x.nii"), "exists"),
    Case("infer-other-suffix-of-a-set", "infer", _f(INFER, "{in}/qset/x.nii"), "exists"),
    Case("baseline-other-suffix-of-a-set", "baseline", _f(BASE, "{in}/qset/x.nii"), "exists"),
    Case("infer-sidecar-exists", "infer", _f(INFER, "{in}/qset/y.nii.gz"), "y.json"),
    Case("finetune-sidecar-exists", "finetune", _f(FT, "{in}/qset/y.nii.gz"), "y.json"),
    Case("baseline-sidecar-exists", "baseline", _f(BASE, "{in}/qset/y.nii.gz"), "y.json"),
    Case("infer-sidecar-replaces-case-json", "infer",
         "--model {in}/random.keras --case {in}/case -o {in}/case/case.nii.gz --overwrite", "case.json"),
    Case("baseline-sidecar-replaces-case-json", "baseline",
         "tkd --field {in}/case/local_field.nii.gz --mask {in}/case/mask.nii.gz -o {in}/case/case.nii --overwrite",
         "case.json"),
    Case("finetune-sidecar-replaces-case-json", "finetune",
         "--model {in}/random.keras --case {in}/case -o {in}/case/case.nii.gz --overwrite", "case.json"),
    # --- 1c. nothing silently wrong, one line for every odd input (issue 23)
    Case("evaluate-xflipped-recon", "evaluate", f"--recon {{in}}/chi_xflip.nii.gz --truth {CHI} --mask {MASK} "
         "--json {out}/t.json", "affine"),
    Case("check-yflipped-mask", "check", f"--field {FIELD} --mask {{in}}/mask_yflip.nii.gz", "affine"),
    Case("baseline-yflipped-mask", "baseline", _f(BASE, "{out}/b.nii.gz").replace(MASK, "{in}/mask_yflip.nii.gz"),
         "affine"),
    Case("fieldmap-sheared", "fieldmap", "{in}/sheared.nii.gz -o {out}/f.nii.gz", "sheared"),
    Case("genchi-sheared", "genchi", "{in}/sheared.nii.gz --mask {in}/mask.nii.gz -n 1 -o {out}/c.h5", "sheared"),
    *[Case(f"fieldmap-matlab-{kind}", "fieldmap", f"{{in}}/{kind}.mat -o {{out}}/f.nii.gz", "numeric")
      for kind in ("char", "struct", "sparse", "cell")],
    Case("fieldmap-hdf5-string", "fieldmap", "{in}/string.h5 -o {out}/f.nii.gz", "numeric"),
    Case("infer-batch-inf", "infer", _f(INFER, "{out}/q.nii.gz") + " --batch-size inf", "batch"),
    Case("finetune-iterations-nan", "finetune", _f(FT, "{out}/q.nii.gz") + " --iterations nan", "iterations"),
    Case("infer-config-inf-integer", "infer", _f(INFER, "{out}/q.nii.gz") + " --config {in}/inf_int.json", "batch"),
    Case("infer-config-not-utf8", "infer", _f(INFER, "{out}/q.nii.gz") + " --config {in}/latin1.json", "UTF-8"),
    Case("finetune-seed-negative", "finetune", _f(FT, "{out}/q.nii.gz") + " --seed -1", "seed"),
    Case("finetune-seed-too-big", "finetune", _f(FT, "{out}/q.nii.gz") + " --seed 4294967296", "seed"),
    Case("genchi-seed-too-big", "genchi", _f(GENCHI, "{out}/c.h5") + " --seed 4294967296", "seed"),
    Case("fieldmap-pad-huge", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --pad 100000", "pad"),
    Case("baseline-pad-no-memory", "baseline", _f(BASE, "{out}/b.nii.gz") + " --pad 1000", "GiB"),
    Case("baseline-te-out-of-range", "baseline", _f(BASE, "{out}/b.nii.gz").replace("tkd", "ndi-tv") +
         " --te 25 --b0 3", "te"),
    Case("finetune-b0-out-of-range", "finetune", _f(FT, "{out}/q.nii.gz").replace("--b0 3", "--b0 3000"), "b0"),
    Case("patches-fields-of-other-maps", "patches", "--source {in}/step1_b0.h5 --source-fields {in}/fields_other.h5 "
         "--patch-size 16 16 16 --quiet -o {out}/p.h5", "other_0000"),
    Case("patches-fields-of-other-b0", "patches", "--source {in}/step1_b0.h5 --source-fields {in}/fields_b0x.h5 "
         "--patch-size 16 16 16 --quiet -o {out}/p.h5", "B0 direction"),
    Case("check-zero-b0-dir", "check", f"--field {FIELD} --mask {MASK} --b0-dir 0 0 0", "B0"),
    Case("check-one-te-four-echoes", "check", "{in}/case_4echo_1te", "echo"),
    # --- 2. metadata files
    Case("patches-case-badjson", "patches", _f(PATCHES, "{out}/p.h5") + " --target {in}/case_badjson", "case.json"),
    Case("patches-case-unknown-key", "patches", _f(PATCHES, "{out}/p.h5") + " --target {in}/case_unknown_key",
         "did you mean 'b0_tesla'"),
    Case("patches-case-list", "patches", _f(PATCHES, "{out}/p.h5") + " --target {in}/case_list", "case.json"),
    Case("finetune-case-badjson", "finetune", "--model {in}/random.keras --case {in}/case_badjson -o {out}/q.nii.gz",
         "case.json"),
    Case("finetune-case-unknown-key", "finetune",
         "--model {in}/random.keras --case {in}/case_unknown_key -o {out}/q.nii.gz", "did you mean"),
    Case("infer-case-badjson", "infer", "--model {in}/random.keras --case {in}/case_badjson -o {out}/q.nii.gz",
         "case.json"),
    Case("simulate-corrupt-mat", "simulate", _f(SIM, "{out}/t"), "SusceptibilityValues.mat"),
    Case("simulate-missing-folder", "simulate", "--source {in}/nothing -o {out}/t", "nothing"),
    Case("figures-binary-log", "figures", "losses {in}/binary.csv -o {out}/l.png", "binary.csv"),
    Case("figures-missing-log", "figures", "losses {in}/nothing.csv -o {out}/l.png", "nothing.csv"),
    Case("figures-folder-log", "figures", "losses {in}/a_folder -o {out}/l.png", "a_folder"),
    Case("evaluate-case-missing", "evaluate", "--recon {in}/chi.nii.gz --case {in}/nothing --json {out}/t.json",
         "nothing"),
    # --- 3. numbers against their meaning, before any work
    Case("fieldmap-d0-nan", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --d0 nan", "--d0"),
    Case("fieldmap-d0-inf", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --d0 inf", "--d0"),
    Case("fieldmap-voxel-negative", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --voxel-size -1 1 1", "voxel"),
    Case("fieldmap-voxel-nan", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --voxel-size nan 1 1", "voxel"),
    Case("fieldmap-b0-zero", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --b0-dir 0 0 0", "B0"),
    Case("fieldmap-pad-bad", "fieldmap", _f(FIELDMAP, "{out}/f.nii.gz") + " --pad lots", "pad"),
    Case("genchi-n-zero", "genchi", _f(GENCHI, "{out}/c.h5").replace("-n 1", "-n 0"), "n"),
    Case("genchi-n-negative", "genchi", _f(GENCHI, "{out}/c.h5").replace("-n 1", "-n -5"), "n"),
    Case("genchi-workers-negative", "genchi", _f(GENCHI, "{out}/c.h5") + " --workers -1", "workers"),
    Case("genchi-voxel-nan", "genchi", _f(GENCHI, "{out}/c.h5") + " --voxel-size-mm nan 1 1", "voxel"),
    Case("genchi-alpha-nan", "genchi", _f(GENCHI, "{out}/c.h5") + " --elastic-alpha nan", "elastic"),
    Case("patches-size-zero", "patches", _f(PATCHES, "{out}/p.h5").replace("16 16 16", "0 16 16"), "patch"),
    Case("patches-b0-nan", "patches", _f(PATCHES, "{out}/p.h5") + " --target-b0-tesla nan", "b0"),
    Case("patches-te-negative", "patches", _f(PATCHES, "{out}/p.h5") + " --target-te-s -0.02", "te"),
    Case("train-lr-negative", "train", _f(TRAIN, "{out}/run") + " --learning_rate=-1e-4", "learning_rate"),
    Case("train-lr-nan", "train", _f(TRAIN, "{out}/run") + " --learning_rate nan", "learning_rate"),
    Case("train-batch-zero", "train", _f(TRAIN, "{out}/run") + " --batch_size 0", "batch_size"),
    Case("train-lambda-negative", "train", _f(TRAIN, "{out}/run") + " --lambda_ndi -1", "lambda_ndi"),
    Case("train-val-fraction", "train", _f(TRAIN, "{out}/run") + " --val_fraction 1.5", "val_fraction"),
    Case("train-bn-momentum", "train", _f(TRAIN, "{out}/run") + " --bn_momentum 2", "bn_momentum"),
    Case("train-depth-zero", "train", _f(TRAIN, "{out}/run").replace("--depth 1", "--depth 0"), "depth"),
    Case("train-input-scale-inf", "train", _f(TRAIN, "{out}/run") + " --input_scale inf", "input_scale"),
    Case("train-schedule", "train", _f(TRAIN, "{out}/run") + " --lr_schedule cosinee", "cosine"),
    Case("finetune-lr-negative", "finetune", _f(FT, "{out}/q.nii.gz") + " --learning_rate=-1e-3", "learning_rate"),
    Case("finetune-iterations-zero", "finetune", _f(FT, "{out}/q.nii.gz") + " --iterations 0", "iterations"),
    Case("finetune-b0-negative", "finetune", _f(FT, "{out}/q.nii.gz").replace("--b0 3", "--b0 -3"), "b0"),
    Case("finetune-te-nan", "finetune", _f(FT, "{out}/q.nii.gz").replace("--te 0.02", "--te nan"), "te"),
    Case("finetune-window-zero", "finetune", _f(FT, "{out}/q.nii.gz") + " --convergence_window 0", "window"),
    Case("infer-batch-zero", "infer", _f(INFER, "{out}/q.nii.gz") + " --batch-size 0", "batch"),
    Case("infer-config-string-batch", "infer", _f(INFER, "{out}/q.nii.gz") + " --config {in}/bad_types.json",
         "batch_size"),
    Case("infer-config-bad-overlap", "infer", _f(INFER, "{out}/q.nii.gz") + " --config {in}/bad_overlap.json",
         "overlap"),
    Case("infer-b0-nan", "infer", _f(INFER, "{out}/q.nii.gz") + " --units hz --b0 nan", "b0"),
    Case("baseline-threshold-nan", "baseline", _f(BASE, "{out}/b.nii.gz") + " --threshold nan", "threshold"),
    Case("baseline-threshold-negative", "baseline", _f(BASE, "{out}/b.nii.gz") + " --threshold -1", "threshold"),
    Case("baseline-lambda-negative", "baseline", _f(BASE, "{out}/b.nii.gz").replace("tkd", "l2") + " --lambda -1",
         "lambda"),
    Case("baseline-iterations-zero", "baseline",
         _f(BASE, "{out}/b.nii.gz").replace("tkd", "ndi-tv") + " --iterations 0", "iterations"),
    Case("baseline-te-negative", "baseline", _f(BASE, "{out}/b.nii.gz").replace("tkd", "ndi-tv") + " --te -1",
         "te"),
    Case("baseline-method", "baseline", _f(BASE, "{out}/b.nii.gz").replace("tkd", "tkdd"), "tkd"),
    Case("simulate-resolution-nan", "simulate", "--source builtin --resolution nan -o {out}/t", "resolution"),
    Case("simulate-native-negative", "simulate", "--source builtin --native -1 -o {out}/t", "native"),
    Case("figures-window-negative", "figures", _f(FIG, "{out}/s.png") + " --window -1", "window"),
    Case("figures-window-nan", "figures", _f(FIG, "{out}/s.png") + " --window nan", "window"),
    Case("demo-pretrain-negative", "demo", "--size tiny --pretrain-steps -3 -o {out}/d", "pretrain"),
    Case("demo-finetune-negative", "demo", "--size tiny --finetune-iterations -1 -o {out}/d", "finetune"),
    # --- 3b. inputs that are silently wrong or empty
    Case("patches-nan-chi", "patches", "--source {in}/step1_nan.h5 --patch-size 16 16 16 --quiet -o {out}/p.h5",
         "NaN"),
    Case("patches-empty-result", "patches", "--source {in}/chi.nii.gz --source-fields {in}/field.nii.gz "
         "--source-masks {in}/small_mask.nii.gz --patch-size 16 16 16 --quiet -o {out}/p.h5", "patch"),
    # --- 4. validate before writing: nothing created when an input is wrong
    Case("demo-data-missing", "demo", _f(DEMO, "{out}/d"), "--data"),
    Case("train-no-datasets", "train", "--max_steps 1 -o {out}/run", "datasets_path"),
    Case("train-missing-patches", "train", "--datasets_path {in}/nothing.h5 -o {out}/run", "nothing.h5"),
    Case("train-patch-not-h5", "train", "--datasets_path {in}/chi.nii.gz -o {out}/run", "chi.nii.gz"),
    Case("train-unknown-key", "train", "--datasets_path {in}/patches.h5 --config {in}/bad_types.json -o {out}/run",
         "batch_size"),
    # --- 7. inputs and the messages that point the right way
    Case("genchi-two-variables", "genchi", "{in}/two.mat --mask {in}/mask.nii.gz -n 1 -o {out}/c.h5",
         "FILE.mat:NAME"),
    Case("finetune-random-keras", "finetune", _f(FT, "{out}/q.nii.gz"), "not a Keras archive"),
    Case("infer-random-keras", "infer", _f(INFER, "{out}/q.nii.gz"), "not a Keras archive"),
    Case("finetune-missing-model", "finetune", _f(FT, "{out}/q.nii.gz").replace("random.keras", "none.keras"),
         "not found"),
    Case("genchi-missing-source", "genchi", "{in}/nothing.nii.gz --mask {in}/mask.nii.gz -o {out}/c.h5", "not found"),
    Case("genchi-random-source", "genchi", "{in}/random.nii.gz --mask {in}/mask.nii.gz -o {out}/c.h5", "cannot read"),
    Case("genchi-text-mat", "genchi", "{in}/text.mat --mask {in}/mask.nii.gz -o {out}/c.h5", "text.mat"),
    Case("genchi-flat-source", "genchi", "{in}/flat.nii.gz --mask {in}/mask.nii.gz -o {out}/c.h5", "3-D"),
    Case("genchi-empty-mask", "genchi", "{in}/chi.nii.gz --mask {in}/empty_mask.nii.gz -o {out}/c.h5", "empty"),
    Case("genchi-nonbinary-mask", "genchi", "{in}/chi.nii.gz --mask {in}/nonbinary_mask.nii.gz -o {out}/c.h5",
         "binary"),
    Case("genchi-grid-mismatch", "genchi", "{in}/chi.nii.gz --mask {in}/other_grid.nii.gz -o {out}/c.h5", "shape"),
    Case("genchi-nan-source", "genchi", "{in}/nan.npy --mask {in}/mask.nii.gz -o {out}/c.h5", "NaN"),
    Case("genchi-bad-suffix", "genchi", _f(GENCHI, "{out}/c.txt"), ".h5"),
    Case("fieldmap-missing", "fieldmap", "{in}/nothing.nii.gz -o {out}/f.nii.gz", "not found"),
    Case("fieldmap-nan", "fieldmap", "{in}/nan.npy -o {out}/f.nii.gz", "NaN"),
    Case("fieldmap-random", "fieldmap", "{in}/random.nii.gz -o {out}/f.nii.gz", "cannot read"),
    Case("fieldmap-step1-nan", "fieldmap", "{in}/step1_nan.h5 -o {out}/f.h5", "NaN"),
    Case("fieldmap-two-into-nifti", "fieldmap", "{in}/step1.h5 -o {out}/f.nii.gz", "one map"),
    Case("fieldmap-mask-mismatch", "fieldmap", "{in}/chi.nii.gz --mask {in}/other_grid.nii.gz -o {out}/f.nii.gz",
         "shape"),
    Case("fieldmap-no-input", "fieldmap", "-o {out}/f.nii.gz", "INPUT"),
    Case("fieldmap-empty-folder", "fieldmap", "{in}/a_folder -o {out}/f", "no volume"),
    Case("patches-missing-source", "patches", "--source {in}/nothing.h5 --quiet -o {out}/p.h5", "nothing"),
    Case("patches-bad-suffix", "patches", _f(PATCHES, "{out}/p.nii.gz"), ".h5"),
    Case("finetune-no-output", "finetune", "--model {in}/random.keras --field {in}/field.nii.gz", "output"),
    Case("finetune-mask-mismatch", "finetune",
         _f(FT, "{out}/q.nii.gz").replace("mask.nii.gz", "other_grid.nii.gz"), "shape"),
    # without --model the shipped model is used (tests/network_model/test_shipped.py); with none installed
    # (test_fault: empty model dir) a --model left empty is one line naming --model FILE.keras
    Case("finetune-no-shipped-model", "finetune", f"--field {FIELD} --mask {MASK} --b0 3 --te 0.02 -o {{out}}/q.nii.gz",
         "no shipped model is installed"),
    Case("infer-no-shipped-model", "infer", f"--field {FIELD} --mask {MASK} -o {{out}}/q.nii.gz",
         "no shipped model is installed"),
    Case("infer-missing-model", "infer", f"--model {{in}}/none.keras --field {FIELD} --mask {MASK} -o {{out}}/q.nii.gz",
         "none.keras"),
    Case("infer-hz-without-b0", "infer", _f(INFER, "{out}/q.nii.gz") + " --units hz", "b0"),
    Case("evaluate-shape", "evaluate", f"--recon {CHI} --truth {{in}}/other_grid.nii.gz --mask {MASK} "
         "--json {out}/t.json", "shape"),
    Case("evaluate-nothing", "evaluate", "--json {out}/t.json", "recon"),
    Case("evaluate-nan-recon", "evaluate", f"--recon {{in}}/nan.npy --truth {CHI} --mask {MASK} --json {{out}}/t.json",
         "NaN"),
    Case("figures-shape", "figures", "slices --recon {in}/chi.nii.gz --truth {in}/other_grid.nii.gz -o {out}/s.png",
         "shape"),
    Case("figures-bad-suffix", "figures", _f(FIG, "{out}/s.jpg"), ".png"),
    Case("genchi-symlink-loop", "genchi", "{in}/loop.nii.gz --mask {in}/mask.nii.gz -o {out}/c.h5", "loop.nii.gz"),
    Case("baseline-symlink-loop-mask", "baseline", "tkd --field {in}/field.nii.gz --mask {in}/loop.nii.gz "
         "-o {out}/b.nii.gz", "loop.nii.gz"),
    Case("figures-output-link-to-folder", "figures", _f(FIG, "{in}/link_to_folder"), "link_to_folder"),
    Case("baseline-output-link-to-folder", "baseline", _f(BASE, "{in}/link_to_folder"), "link_to_folder"),
    Case("baseline-empty-mask", "baseline", "tkd --field {in}/field.nii.gz --mask {in}/empty_mask.nii.gz -o {out}/b.nii.gz",
         "empty"),
    Case("export-exists", "export", _f(EXPORT, "{in}/existing.onnx"), "exists"),
    Case("export-bad-suffix", "export", _f(EXPORT, "{out}/m.keras"), ".onnx"),
    Case("export-missing-model", "export", _f(EXPORT, "{out}/m.onnx").replace("random.keras", "none.keras"),
         "not found"),
    Case("export-random-model", "export", _f(EXPORT, "{out}/m.onnx"), "not a Keras archive"),
    Case("export-check-size-zero", "export", _f(EXPORT, "{out}/m.onnx") + " --check-size 0 16 16", "check-size"),
    Case("export-opset-zero", "export", _f(EXPORT, "{out}/m.onnx") + " --opset 0", "opset"),
    Case("check-missing-case", "check", "{in}/nothing", "nothing"),
    Case("check-badjson", "check", "{in}/case_badjson", "case.json"),
    Case("check-unknown-key", "check", "{in}/case_unknown_key", "did you mean"),
    Case("check-empty-mask", "check", f"--field {FIELD} --mask {{in}}/empty_mask.nii.gz", "empty"),
    Case("check-nan-field", "check", "--field {in}/nan.npy --mask {in}/mask.nii.gz", "NaN"),
    Case("check-grid-mismatch", "check", f"--field {FIELD} --mask {{in}}/other_grid.nii.gz", "shape"),
    Case("baseline-nan-field", "baseline", "tkd --field {in}/nan.npy --mask {in}/mask.nii.gz -o {out}/b.nii.gz", "NaN"),
]


def _run_case(case: Case, inputs: Path, out: Path, capsys, full=None, immutable=None):
    main = _commands()[case.command]
    watched = [p for p in (inputs, out, full, immutable) if p is not None]
    before = _snapshot(*watched)
    argv = case.args(inputs, out, full, immutable)
    if case.fsize_limit:  # a real process: the file-size limit must not hit the test process
        status, err = _run_limited(main, argv, case.fsize_limit)
        return status, err, before, _snapshot(*watched)
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse errors
        status = stop.code
    err = capsys.readouterr().err
    return status, err, before, _snapshot(*watched)


TF_LOG = re.compile(r"^[IWE]\d{4} |^WARNING: All log messages")  # TensorFlow's C++ start-up lines


def _run_limited(main, argv, limit: int):
    """Run `main(argv)` in a child process whose files cannot grow past `limit` bytes."""
    import subprocess
    import sys

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    code = f"import sys; from {main.__module__} import main; sys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_files, cwd=str(Path(__file__).resolve().parents[1]),
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case, inputs, tmp_path, capsys, request, monkeypatch):
    # the shipped-model lookup sees an empty folder: the table does not depend on what is installed
    monkeypatch.setenv("DAQSM_MODEL_DIR", str(tmp_path / "no_models"))
    out = tmp_path / "out"
    out.mkdir()
    places = {"full": None, "immutable": None}
    if case.needs:
        places[case.needs] = request.getfixturevalue(case.needs)
    status, err, before, after = _run_case(case, inputs, out, capsys, **places)
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line.lower()
             and not TF_LOG.match(line)]
    assert status == 2, f"exit {status}: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "error:" in lines[0], lines
    assert case.expect in lines[0], lines[0]
    assert after == before, f"changed: {sorted(set(after.items()) ^ set(before.items()))}"


def test_enough_cases_over_all_commands():
    assert len(CASES) >= 100
    assert {c.command for c in CASES} == set(_commands())


def test_every_console_script_is_in_the_table():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    targets = {line.split("=", 1)[1].strip().split(":")[0]
               for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()}
    tested = {main.__module__ for main in _commands().values()}
    assert targets <= tested, f"console scripts without fault cases: {sorted(targets - tested)}"


# --- single defects that are not "exit 2" cases -----------------------------------------------


def test_case_json_te_as_one_number_is_one_echo(inputs, tmp_path):
    import h5py

    from daqsm.training_data import genRDFPatchesSyn

    out = tmp_path / "p.h5"
    assert genRDFPatchesSyn.main(["--source", str(inputs / "step1.h5"), "--patch-size", "16", "16", "16", "--quiet",
                                  "--target", str(inputs / "case_te_number"), "--weight-echo", "1",
                                  "-o", str(out)]) == 0
    with h5py.File(out, "r") as h5:
        assert h5["target"].attrs["te_s"] == 0.02


def test_genchi_overwrite_keeps_files_it_did_not_write(inputs, tmp_path):
    from daqsm.training_data import genChi

    out = tmp_path / "maps"
    argv = [str(inputs / "chi.nii.gz"), "--mask", str(inputs / "mask.nii.gz"), "--elastic-alpha", "0",
            "--quiet", "-o", f"{out}/"]
    assert genChi.main(argv + ["-n", "2"]) == 0
    (out / "chi_9999.nii.gz").write_bytes(b"the user's own map")
    (out / "mask_extra.nii.gz").write_bytes(b"the user's own mask")
    assert genChi.main(argv + ["-n", "1", "--overwrite"]) == 0
    names = sorted(os.listdir(out))
    assert "chi_9999.nii.gz" in names and "mask_extra.nii.gz" in names
    assert "chi_0001.nii.gz" not in names  # the earlier run's second map: this command's own output
    assert "chi_0000.nii.gz" in names


def test_rejected_run_leaves_the_run_config_as_it_was(inputs, tmp_path, capsys):
    from daqsm.network_model.train_model import train as pretrain

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text('{"sentinel": 1}\n')
    status = pretrain.main(["--datasets_path", str(inputs / "patches.h5"), "-o", str(run), "--depth", "1",
                            "--lr_schedule", "cosinee", "--progress", "false"])
    assert status == 2
    assert (run / "train_config.json").read_text() == '{"sentinel": 1}\n'
    assert sorted(os.listdir(run)) == ["train_config.json"]


def test_nan_weights_after_the_last_update_export_nothing(inputs, tmp_path, capsys):
    from daqsm.network_model.train_model import train as pretrain

    run = tmp_path / "run"
    # float32(1e39) is inf: the one update makes the weights NaN/Inf while the loss before it was finite
    status = pretrain.main(["--datasets_path", str(inputs / "patches.h5"), "-o", str(run), "--depth", "1",
                            "--base_filters", "2", "--max_steps", "1", "--learning_rate", "1e39",
                            "--val_fraction", "0", "--progress", "false"])
    assert status == 1
    assert "non-finite weights" in capsys.readouterr().err
    assert not (run / "target_model.keras").exists()
    assert not (run / "checkpoints").exists() or not os.listdir(run / "checkpoints")


def test_nan_validation_loss_stops_the_run(tmp_path):
    import itertools

    import tensorflow as tf

    from daqsm.network_model.training_loop import LossLog, run_loop

    result = run_loop(lambda _batch: {"loss": tf.constant(1.0)}, itertools.repeat(None),
                      tf.Variable(0, dtype=tf.int64), 5, LossLog(str(tmp_path / "log.csv")),
                      validate=lambda: {"val_loss": float("nan")}, validate_every=2, progress=False)
    assert (result.reason, result.step) == ("nan", 2)


def test_nonfinite_weights_or_validation_are_not_exported():
    import keras

    from daqsm.network_model.pretraining import nonfinite_reason

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert nonfinite_reason(model, {"loss": 1.0, "val_loss": 0.5}) is None
    assert "validation" in nonfinite_reason(model, {"loss": 1.0, "val_loss": float("nan")})
    model.layers[0].kernel.assign(np.full((2, 1), np.nan, np.float32))
    assert "weights" in nonfinite_reason(model, {"loss": 1.0})


def test_folder_reader_skips_hidden_temp_files(inputs, tmp_path, capsys):
    from daqsm.training_data import qsmFmapCal_gpu

    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "chi.nii.gz").write_bytes((inputs / "chi.nii.gz").read_bytes())
    (folder / ".chi.nii.gz.tmp-abcdefgh.nii.gz").write_bytes(b"half-written by a killed run")
    assert qsmFmapCal_gpu.main([str(folder), "-o", str(tmp_path / "fields")]) == 0
    assert sorted(os.listdir(tmp_path / "fields")) == ["chi_field.json", "chi_field.nii.gz",  # map + sidecar
                                                       "fieldmap_config.json"]


def test_check_reads_an_hdf5_fields_b0_attribute_as_step_5_does(inputs):
    from daqsm.network_model.target_data import load_files
    from daqsm.training_data.input_check import check_files

    report = check_files(inputs / "field_b0x.h5", inputs / "mask.nii.gz")
    assert np.allclose(report.b0_dir, load_files(str(inputs / "field_b0x.h5"), str(inputs / "mask.nii.gz")).geometry.b0_dir)
    assert np.allclose(report.b0_dir, (1.0, 0.0, 0.0))


# --- locks: two runs at once ----------------------------------------------------------------


def _hold_lock(path):
    """A separate process that holds the output lock of `path` until killed."""
    import subprocess
    import sys

    code = ("import sys, time; from daqsm.output_lock import output_lock\n"
            f"with output_lock('-o', {str(path)!r}):\n    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.stdout.readline().strip() == "locked"
    return proc


LOCKED = {"genchi": ("c.h5", GENCHI), "fieldmap": ("f.nii.gz", FIELDMAP), "train": ("run", TRAIN),
          "patches": ("p.h5", PATCHES), "finetune": ("q.nii.gz", FT), "infer": ("q.nii.gz", INFER),
          "baseline": ("b.nii.gz", BASE), "evaluate": ("t.json", EVAL), "figures": ("s.png", FIG),
          "simulate": ("t", "--source builtin --resolution 8 --quiet -o @O@")}


@pytest.mark.parametrize("command", sorted(LOCKED))
def test_second_run_on_one_output_stops_with_the_pid(command, inputs, tmp_path, capsys):
    name, template = LOCKED[command]
    out = tmp_path / name
    argv = _f(template, str(out))
    holder = _hold_lock(out)
    try:
        status = _commands()[command](Case("", command, argv).args(inputs, tmp_path))
        err = capsys.readouterr().err
        assert status == 2
        assert f"in use by PID {holder.pid}" in err
        assert not out.exists()
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    if command in ("genchi", "fieldmap", "patches"):  # the lock of a killed holder does not block the next run
        assert _commands()[command](Case("", command, argv).args(inputs, tmp_path)) == 0
        assert out.exists()
        assert not [n for n in os.listdir(tmp_path) if is_any_temp(n)]


# --- kill -9 in the middle of a write, then rerun -------------------------------------------


def _kill_when_temp_appears(argv_code: str, folder: Path, timeout: float = 240.0):
    """Start a command in a child process, SIGKILL it once a temp file of it exists in `folder`."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", argv_code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[1]))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(is_any_temp(n) for n in os.listdir(folder)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the command ended before it could be killed mid-write"
        # a kill at the deadline would be a kill before any write: not the case this test is about
        assert any(is_any_temp(n) for n in os.listdir(folder)), f"no temp file in {folder} after {timeout} s"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _main_code(module: str, argv: list, hang_after_model_save: bool = False) -> str:
    """Python code that runs `module.main(argv)`; optionally it stops for good once a Keras model file is
    saved, so a command that writes only after its computation is killed inside its writes, not before them."""
    hang = ("import time, keras\n_save = keras.Model.save\n"
            "def _save_then_hang(self, *a, **k):\n    _save(self, *a, **k)\n    time.sleep(3600)\n"
            "keras.Model.save = _save_then_hang\n") if hang_after_model_save else ""
    return f"{hang}import sys; from {module} import main; sys.exit(main({[str(a) for a in argv]!r}))"


@pytest.mark.slow
@pytest.mark.parametrize("step", ["genchi", "fieldmap", "patches"])
def test_kill_9_leaves_no_output_and_the_rerun_cleans_up(step, inputs, tmp_path):
    import h5py

    many = tmp_path / "many.h5"  # enough maps that the run is still writing when it is killed
    with h5py.File(inputs / "step1.h5", "r") as src, h5py.File(many, "w") as h5:
        for key in ("chi", "mask", "field"):
            h5[key] = np.concatenate([src[key][()]] * 200)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / ("x.h5")
    module, argv = {
        "genchi": ("daqsm.training_data.genChi", [inputs / "chi.nii.gz", "--mask", inputs / "mask.nii.gz", "-n", "2000",
                                            "--quiet", "-o", out]),
        "fieldmap": ("daqsm.training_data.qsmFmapCal_gpu", [many, "-o", out]),
        "patches": ("daqsm.training_data.genRDFPatchesSyn", ["--source", many, "--patch-size", "8", "8", "8",
                                                             "--stride", "2", "2", "2",
                                         "--quiet", "-o", out])}[step]
    _kill_when_temp_appears(_main_code(module, argv), out_dir)
    assert not out.exists()  # nothing half-written under the output's name
    small = [inputs / "step1.h5" if a == many else ("1" if a == "2000" else a) for a in argv]
    rerun = _commands()[step](["--overwrite", *map(str, small)] if step != "fieldmap" else list(map(str, small)))
    assert rerun == 0
    assert out.exists()
    assert not [n for n in os.listdir(out_dir) if is_any_temp(n) or n.endswith(".lock")]


@pytest.mark.slow
def test_kill_9_finetune_then_rerun_completes_the_set(inputs, tmp_path):
    import keras

    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(0)
    build_target_model(depth=1, base_filters=2).save(tmp_path / "pre.keras")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["--model", tmp_path / "pre.keras", "--field", inputs / "field.nii.gz", "--mask", inputs / "mask.nii.gz",
            "--b0", "3", "--te", "0.02", "--progress", "false", "-o", out_dir / "q.nii.gz"]
    # step 5 writes its set only after fine-tuning: the child stops inside its first write (the
    # model's temp file) and is killed there
    _kill_when_temp_appears(_main_code("daqsm.network_model.model_finetune.train", argv + ["--iterations", "2"],
                                       hang_after_model_save=True), out_dir)
    assert not (out_dir / "q.nii.gz").exists()
    (out_dir / "q_model.keras").write_bytes(b"left by an interrupted run")  # an incomplete set
    assert finetune.main([str(a) for a in argv] + ["--iterations", "2"]) == 0
    names = sorted(os.listdir(out_dir))
    assert names == ["q.config.json", "q.json", "q.nii.gz", "q_loss.csv", "q_model.keras", "q_model.keras.json",
                     "q_residual.json", "q_residual.nii.gz"]
