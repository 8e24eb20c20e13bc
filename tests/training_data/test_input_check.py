"""daqsm-check: a good case passes; each broken kind exits 2 naming the problem; steps run the same check."""
from __future__ import annotations

import json

import numpy as np
import pytest

from daqsm.network_model import check_cli
from daqsm.training_data.dipole import forward_field
from daqsm.training_data.units import hz_per_ppm
from daqsm.training_data.volume_io import write_volume
from tests.network_model.synthetic import ball_mask, smooth_chi

N = 16
TE = [0.004, 0.012, 0.020, 0.028]
AFFINE = np.diag([1.0, 1.0, 1.5, 1.0])


def _write_case(folder, field=None, mask=None, magnitude=None, info=None, affine=AFFINE):
    folder.mkdir(parents=True, exist_ok=True)
    m = ball_mask(N)
    chi = smooth_chi(N, 1, amplitude_ppm=0.3)
    f = forward_field(chi, (1.0, 1.0, 1.5)) * m
    decay = np.exp(-np.asarray(TE) / 0.03)
    mag = (m[..., None] * decay).astype(np.float32)
    write_volume(folder / "local_field.nii.gz", f if field is None else field, affine)
    write_volume(folder / "mask.nii.gz", m.astype(np.uint8) if mask is None else np.asarray(mask, np.float32), affine)
    write_volume(folder / "magnitude.nii.gz", mag if magnitude is None else magnitude, affine)
    case = {"b0_tesla": 3.0, "te_s": TE, "voxel_size_mm": [1.0, 1.0, 1.5], "b0_dir": [0.0, 0.0, 1.0]}
    if isinstance(info, str):
        (folder / "case.json").write_text(info)
    else:
        (folder / "case.json").write_text(json.dumps({**case, **(info or {})}))
    return folder, f, m, mag


def test_good_case_passes_with_a_short_report(tmp_path, capsys):
    folder, *_ = _write_case(tmp_path / "good")
    assert check_cli.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "voxel size 1 x 1 x 1.5 mm" in out and "echo 2 of 4" in out
    assert len(out.splitlines()) <= 8


def test_good_files_in_hz_pass(tmp_path):
    folder, f, _, _ = _write_case(tmp_path / "c")
    write_volume(tmp_path / "field_hz.nii.gz", f * hz_per_ppm(3.0), AFFINE)
    assert check_cli.main(["--field", str(tmp_path / "field_hz.nii.gz"), "--mask", str(folder / "mask.nii.gz"),
                             "--units", "hz", "--b0", "3", "--te", "0.02"]) == 0
    assert check_cli.main(["--field", str(tmp_path / "field_hz.nii.gz"), "--mask", str(folder / "mask.nii.gz"),
                           "--units", "Hz", "--b0_tesla", "3", "--te", "0.02"]) == 0  # any case, as before the config layer


def _nan_field(f):
    f = f.copy()
    f[3, 3, 3] = np.nan
    return f


def _hole_mask(m):
    m = m.astype(np.float32).copy()
    m[8, 8, 8] = 0.5
    return m


def _singular_affine(path):
    import nibabel as nib

    image = nib.load(path)
    data = np.asarray(image.dataobj)
    broken = nib.Nifti1Image(data, None)
    broken.header.set_sform(np.diag([1.0, 0.0, 1.5, 1.0]), code=2)  # nibabel refuses it as an affine
    broken.header.set_qform(None, code=0)
    nib.save(broken, path)


#: broken kind -> (how to break a good case, text the one-line error must contain)
BROKEN_CASES = {
    "missing field": (lambda d: (d / "local_field.nii.gz").unlink(), "no local field (missing local_field.nii.gz)"),
    "shape mismatch": (lambda d: write_volume(d / "mask.nii.gz", np.ones((N, N, N - 1), np.uint8), AFFINE),
                       "shape mismatch: mask"),
    "NaN in field": (lambda d: _write_case(d, field=_nan_field(_write_case(d)[1])), "NaN/Inf"),
    "non-binary mask": (lambda d: _write_case(d, mask=_hole_mask(ball_mask(N))), "expected binary values 0/1"),
    "empty mask": (lambda d: _write_case(d, mask=np.zeros((N, N, N))), "the mask is empty"),
    "Hz labelled ppm": (lambda d: _write_case(d, field=_write_case(d)[1] * hz_per_ppm(3.0)),
                        "implausible for units 'ppm'"),
    "zero field": (lambda d: _write_case(d, field=np.zeros((N, N, N), np.float32)), "all zeros"),
    "echoes vs TEs": (lambda d: _write_case(d, magnitude=np.ones((N, N, N, 3), np.float32)),
                      "expected 4 echoes"),
    "bad case.json": (lambda d: _write_case(d, info="{not json"), "cannot parse"),
    "TEs not increasing": (lambda d: _write_case(d, info={"te_s": [0.02, 0.01, 0.03, 0.04]}), "increasing"),
    "voxel size disagrees": (lambda d: _write_case(d, info={"voxel_size_mm": [2.0, 2.0, 2.0]}),
                             "disagrees with the header"),
    "degenerate affine": (lambda d: _singular_affine(d / "local_field.nii.gz"), "local_field.nii.gz: B0 direction"),
    "voxel size implausible": (lambda d: _write_case(d, affine=np.diag([100.0, 100.0, 150.0, 1.0]),
                                                     info={"voxel_size_mm": [100.0, 100.0, 150.0]}),
                               "voxel size expected"),
    "negative magnitude": (lambda d: _write_case(d, magnitude=-np.ones((N, N, N, 4), np.float32)),
                           "non-negative"),
    "implausible B0": (lambda d: _write_case(d, info={"b0_tesla": 3000}), "b0_tesla: expected"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_CASES))
def test_broken_case_exits_2_naming_the_problem(kind, tmp_path, capsys):
    folder, *_ = _write_case(tmp_path / "case")
    BROKEN_CASES[kind][0](folder)
    assert check_cli.main([str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("daqsm-check: error: ")
    assert BROKEN_CASES[kind][1] in err, err


def test_ppm_labelled_hz_and_missing_b0_are_named(tmp_path, capsys):
    folder, *_ = _write_case(tmp_path / "c")
    files = ["--field", str(folder / "local_field.nii.gz"), "--mask", str(folder / "mask.nii.gz")]
    assert check_cli.main(files + ["--units", "hz", "--b0", "7"]) == 2
    assert "implausible for units 'hz'" in capsys.readouterr().err
    assert check_cli.main(files + ["--units", "hz"]) == 2
    assert "B0 is needed" in capsys.readouterr().err
    assert check_cli.main(files + ["--units", "gauss"]) == 2
    assert "units" in capsys.readouterr().err


def test_inference_runs_the_same_check_before_loading_the_model(tmp_path, capsys):
    from daqsm.network_model import infer

    folder, *_ = _write_case(tmp_path / "c")
    BROKEN_CASES["Hz labelled ppm"][0](folder)
    assert infer.main(["--model", str(tmp_path / "absent.keras"), "--case", str(folder),
                       "-o", str(tmp_path / "q.nii.gz")]) == 2
    assert "implausible for units 'ppm'" in capsys.readouterr().err  # not "model not found"


def test_finetune_and_patches_run_the_same_check(tmp_path, capsys):
    from daqsm.errors import InputError
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.training_data.patch_inputs import TargetInputs

    folder, *_ = _write_case(tmp_path / "c")
    BROKEN_CASES["echoes vs TEs"][0](folder)
    assert finetune.main(["--model", str(tmp_path / "absent.keras"), "--case", str(folder),
                          "-o", str(tmp_path / "q.nii.gz")]) == 2
    assert "expected 4 echoes" in capsys.readouterr().err
    with pytest.raises(InputError, match="expected 4 echoes"):  # step 3's target inputs, before any patch
        TargetInputs(cases=[str(folder)])
