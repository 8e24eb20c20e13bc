"""QSM-CI entry: the public contract (/input localfield.nii.gz ppm, mask, params.json -> /output/chimap.nii.gz
ppm) on a small built-in-like case, with the shipped model's mechanism (a stand-in model, SHA-256 pinned)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from tests.network_model.test_shipped import model_dir, no_model_dir  # noqa: E402,F401  (stand-in install folders)


def _contract_input(folder, te=(0.004, 0.012, 0.02)):
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import write_volume

    folder.mkdir()
    shape = (20, 20, 20)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    mask = (np.sum(grid ** 2, axis=0) <= 64).astype(np.uint8)
    chi = np.where(np.sum((grid - 2) ** 2, axis=0) <= 9, 0.2, 0.0) * mask
    vs = (1.0, 1.0, 1.2)
    field = (forward_field(chi.astype(np.float32), vs, pad="auto") * mask).astype(np.float32)
    affine = np.diag(list(vs) + [1.0])
    write_volume(folder / "localfield.nii.gz", field, affine)
    write_volume(folder / "mask.nii.gz", mask, affine)
    (folder / "params.json").write_text(json.dumps({"TE": list(te), "B0": 3, "B0_dir": [0, 0, 1],
                                                    "voxel_size": list(vs)}))
    return affine


def test_contract_in_chimap_out(model_dir, tmp_path):  # noqa: F811
    import nibabel as nib

    from daqsm.evaluation import qsmci

    affine = _contract_input(tmp_path / "input")
    assert qsmci.main(["--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"),
                       "--iterations", "2"]) == 0
    img = nib.load(tmp_path / "output" / "chimap.nii.gz")
    np.testing.assert_allclose(img.affine, affine)
    record = json.loads((tmp_path / "output" / "chimap.json").read_text())
    assert record["Units"] == "ppm" and record["FineTuning"]["max_iterations"] == 2
    assert record["PhaseRadPerPpm"] == pytest.approx(2 * np.pi * 42.577478 * 3 * 0.012, rel=1e-4)  # 2nd echo
    data = img.get_fdata()
    assert np.all(np.isfinite(data)) and np.any(data != 0)


def test_missing_params_is_one_line(tmp_path, capsys):
    from daqsm.evaluation import qsmci

    (tmp_path / "input").mkdir()
    assert qsmci.main(["--input", str(tmp_path / "input"), "--output", str(tmp_path / "out")]) == 2
    assert "params.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_installed_model_is_one_line(no_model_dir, tmp_path, capsys):  # noqa: F811
    """With no model installed (an empty $DAQSM_MODEL_DIR) the entry says so in one line."""
    from daqsm.evaluation import qsmci

    _contract_input(tmp_path / "input")
    assert qsmci.main(["--input", str(tmp_path / "input"), "--output", str(tmp_path / "output"), "--fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no shipped model is installed" in err, err
    assert not (tmp_path / "output" / "chimap.nii.gz").exists()
