"""The shipped pre-trained model: installed with a manifest, verified (size + SHA-256) at every load,
the default of --model in daqsm-finetune / daqsm-infer; a changed file is one clear error."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from daqsm.errors import InputError  # noqa: E402
from daqsm.network_model import shipped  # noqa: E402


@pytest.fixture()
def model_dir(tmp_path, monkeypatch):
    """A stand-in daqsm/models/ with a tiny target model installed through install_model."""
    import keras

    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(0)
    src = tmp_path / "run" / "target_model.keras"
    src.parent.mkdir()
    build_target_model(depth=2, base_filters=4).save(src)
    monkeypatch.setattr(shipped, "MODEL_DIR", tmp_path / "models")
    shipped.install_model(src, command="python benchmarks/train_shipped_model.py --work w", steps=3,
                          resolution_mm=1.0, n_maps=2, target_crop=32)
    return tmp_path / "models"


def test_manifest_pins_the_file_and_says_how_it_was_made(model_dir):
    manifest = json.loads(shipped.manifest_path().read_text())
    path = shipped.model_path()
    assert manifest["sha256"] == shipped.sha256_of(path) and manifest["size_bytes"] == path.stat().st_size
    assert "train_shipped_model.py" in manifest["training_command"]
    assert "2016" in manifest["training_data"]["not_used"] and manifest["known_limits"]
    assert manifest["daqsm_version"] and manifest["recipe"]["pretrain_steps"] == 3
    assert shipped.default_model_path() == str(path)


def test_a_changed_file_is_one_clear_error(model_dir):
    from daqsm.network_model.model_info import load_model_file

    path = shipped.model_path()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256") as err:
        shipped.default_model_path()
    assert "\n" not in str(err.value) and "was changed" in str(err.value)
    with pytest.raises(InputError, match="SHA-256"):  # also when named explicitly
        load_model_file(str(path))


def test_missing_model_or_manifest_is_one_line(model_dir):
    shipped.manifest_path().unlink()
    with pytest.raises(InputError, match="manifest"):
        shipped.default_model_path()
    shipped.model_path().unlink()
    with pytest.raises(InputError, match="not installed"):
        shipped.default_model_path()


def test_finetune_and_infer_default_to_the_shipped_model(model_dir, tmp_path, capsys):
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.volume_io import write_volume

    shape = (20, 20, 20)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    mask = (np.sum(grid ** 2, axis=0) <= 64).astype(np.uint8)
    chi = np.where(np.sum((grid - 2) ** 2, axis=0) <= 9, 0.2, 0.0) * mask
    field = (forward_field(chi.astype(np.float32), (1.0, 1.0, 1.0), pad="auto") * mask).astype(np.float32)
    write_volume(tmp_path / "f.nii.gz", field, np.eye(4))
    write_volume(tmp_path / "m.nii.gz", mask, np.eye(4))
    common = ["--field", str(tmp_path / "f.nii.gz"), "--mask", str(tmp_path / "m.nii.gz")]
    assert finetune.main(common + ["--b0", "3", "--te", "0.02", "--fast", "--quiet", "-o",
                                   str(tmp_path / "fast.nii.gz")]) == 0
    record = json.loads((tmp_path / "fast.json").read_text())
    assert record["FineTuning"]["iterations"] == 0 and record["FineTuning"]["stop_reason"].startswith("fast")
    assert (tmp_path / "fast_residual.nii.gz").is_file()
    sidecar = json.dumps(record)
    assert shipped.sha256_of(shipped.model_path()) in sidecar  # the provenance names the pinned weights
    assert infer.main(common + ["--whole", "-o", str(tmp_path / "inf.nii.gz")]) == 0
    from daqsm.training_data.volume_io import read_volume

    np.testing.assert_allclose(read_volume(tmp_path / "inf.nii.gz").data, read_volume(tmp_path / "fast.nii.gz").data,
                               atol=1e-5)  # --fast is the pre-trained network's map


def test_manifest_warning_is_printed_once_per_default_use(model_dir, capsys):
    manifest = json.loads(shipped.manifest_path().read_text())
    manifest["warning"] = "under-trained placeholder"
    shipped.manifest_path().write_text(json.dumps(manifest))
    shipped.default_model_path()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "under-trained placeholder" in err
