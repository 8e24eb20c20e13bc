"""The shipped-model mechanism: a model installed with a manifest, verified (size + SHA-256) at every
load, the default of --model in daqsm-finetune / daqsm-infer; a changed file is one clear error; with
none installed a --model left empty is one line, exit 2; and the model the package ships (daqsm/models/):
pinned, made from redistributable data only, and a working inversion on an unseen 1 mm field.

Except in the tests of the package's own model, the installed model is a tiny U-Net built by the test and
installed through install_model into a temporary folder named by $DAQSM_MODEL_DIR (the lookup every
command uses)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.errors import InputError  # noqa: E402
from daqsm.network_model import shipped  # noqa: E402
from daqsm.provenance import file_sha256  # noqa: E402


def build_tiny_target_model(path):
    """A tiny target model (U-Net depth 2, 4 base filters) saved at `path`; returns the path."""
    import keras

    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_target_model(depth=2, base_filters=4).save(path)
    return path


@pytest.fixture()
def model_dir(tmp_path, monkeypatch):
    """A stand-in install folder ($DAQSM_MODEL_DIR) with a tiny target model installed through install_model."""
    src = build_tiny_target_model(tmp_path / "run" / "target_model.keras")
    monkeypatch.setenv(shipped.MODEL_DIR_ENV, str(tmp_path / "models"))
    shipped.install_model(src, command="python benchmarks/train_shipped_model.py --work w", steps=3,
                          resolution_mm=1.0, n_maps=2, target_crop=32)
    assert shipped.model_path() == tmp_path / "models" / shipped.MODEL_NAME
    return tmp_path / "models"


@pytest.fixture()
def no_model_dir(tmp_path, monkeypatch):
    """An install folder with no model in it: what a package install without weights looks like."""
    monkeypatch.setenv(shipped.MODEL_DIR_ENV, str(tmp_path / "empty_models"))
    return tmp_path / "empty_models"


@pytest.fixture()
def package_model(monkeypatch):
    """The model this package installs (daqsm/models/), whatever $DAQSM_MODEL_DIR says outside the test."""
    monkeypatch.delenv(shipped.MODEL_DIR_ENV, raising=False)
    assert shipped.model_path() == shipped.MODEL_DIR / shipped.MODEL_NAME
    return shipped.model_path()


def test_the_package_ships_a_pinned_model_made_from_redistributable_data(package_model):
    manifest = shipped.read_manifest()
    assert package_model.is_file() and shipped.verify() == str(package_model)
    assert manifest["sha256"] == file_sha256(package_model) and manifest["size_bytes"] < 30 * 2**20
    assert "train_shipped_model.py" in manifest["training_command"] and "--install" in manifest["training_command"]
    assert "built-in phantom" in manifest["training_data"]["source_domain"]
    assert "2016" in manifest["training_data"]["not_used"]
    assert manifest["training_geometry"]["voxel_size_mm"] == [1.0, 1.0, 1.0]
    assert str(manifest["recipe"]["pretrain_steps"]) in " ".join(manifest["known_limits"])
    # plain Keras loads it (no custom objects: contract 3), and describes itself as a target model
    import keras

    from daqsm.network_model.unet import describe_target_model

    model = keras.saving.load_model(package_model)
    assert describe_target_model(model)["depth"] == manifest["recipe"]["depth"]
    assert model.count_params() < 2_000_000  # the CPU-sized U-Net (depth 4, 8 base filters), not a stand-in


def test_the_shipped_network_inverts_an_unseen_1mm_field(package_model):
    """The weights learned the inversion, not just a shape: a 64^3 interior crop of the built-in anatomy with a
    texture seed no training map used (7; training: 1000 for the source, 0 for the targets), its field by the
    dipole model, through the pre-trained network alone. A network with random weights gives a correlation near
    0 and a relative error near 1; the shipped step-1413 snapshot gives 0.83 / 0.57 (a 400-step run of the
    recipe: 0.77 / 0.65)."""
    import keras

    from daqsm.network_model.infer import predict_volume
    from daqsm.training_data.dipole import forward_field
    from daqsm.training_data.simulator.phantom import make_phantom

    phantom = make_phantom(1.0, seed=7, calcification=False)
    crop = tuple(slice(n // 2 - 32, n // 2 + 32) for n in phantom.chi_ppm.shape)
    mask = phantom.mask[crop].astype(np.float32)
    chi = phantom.chi_ppm[crop].astype(np.float32) * mask
    field = (forward_field(chi, (1.0, 1.0, 1.0), pad="auto") * mask).astype(np.float32)
    pred = predict_volume(keras.saving.load_model(package_model), field, mask, 16, whole=True)[0]
    inside = mask > 0
    assert inside.mean() > 0.9
    correlation = np.corrcoef(pred[inside], chi[inside])[0, 1]
    relative_error = np.linalg.norm(pred[inside] - chi[inside]) / np.linalg.norm(chi[inside])
    assert correlation > 0.75 and relative_error < 0.65, (correlation, relative_error)


def test_no_shipped_model_installed_is_one_line_exit_2(no_model_dir, tmp_path, capsys):
    from daqsm.network_model import infer
    from daqsm.network_model.model_finetune import train as finetune
    from daqsm.training_data.volume_io import write_volume

    with pytest.raises(InputError) as err:
        shipped.default_model_path()
    message = str(err.value)
    assert "\n" not in message and "no shipped model is installed" in message
    assert "--model FILE.keras" in message and "train_shipped_model.py" in message
    assert "demo_out/step4_pretrain/target_model.keras" in message
    field = np.full((8, 8, 8), 0.01, np.float32)  # a valid field: the missing model is the only fault
    write_volume(tmp_path / "f.nii.gz", field, np.eye(4))
    write_volume(tmp_path / "m.nii.gz", np.ones((8, 8, 8), np.uint8), np.eye(4))
    common = ["--field", str(tmp_path / "f.nii.gz"), "--mask", str(tmp_path / "m.nii.gz")]
    capsys.readouterr()
    for main, extra in ((finetune.main, ["--b0", "3", "--te", "0.02", "--quiet"]), (infer.main, [])):
        assert main(common + extra + ["-o", str(tmp_path / "q.nii.gz")]) == 2
        err_text = capsys.readouterr().err
        assert err_text.count("\n") == 1 and "no shipped model is installed" in err_text, err_text
        assert not (tmp_path / "q.nii.gz").exists()


def test_manifest_pins_the_file_and_says_how_it_was_made(model_dir):
    manifest = json.loads(shipped.manifest_path().read_text())
    path = shipped.model_path()
    assert manifest["sha256"] == file_sha256(path) and manifest["size_bytes"] == path.stat().st_size
    assert "train_shipped_model.py" in manifest["training_command"]
    assert "2016" in manifest["training_data"]["not_used"] and manifest["known_limits"]
    assert manifest["daqsm_version"] and manifest["recipe"]["pretrain_steps"] == 3
    assert shipped.default_model_path() == str(path)


def test_a_model_trained_on_several_protocols_lists_them_in_its_manifest(tmp_path, monkeypatch):
    """A model pre-trained on mixed-protocol targets (its sidecar's training_protocols): the manifest lists each
    protocol's B0, TE and direction, and the known limits name the domain given, not the 7 T default."""
    from daqsm.network_model.model_info import write_model_info

    src = build_tiny_target_model(tmp_path / "run" / "target_model.keras")
    protocols = [{"voxel_size_mm": [1, 1, 1], "b0_dir": [0, 0, 1], "b0_tesla": 7.0, "te_s": 0.012},
                 {"voxel_size_mm": [1, 1, 1], "b0_dir": [0, 0.2588, 0.9659], "b0_tesla": 3.0, "te_s": 0.015}]
    write_model_info(src, divisor=4, training_protocols=protocols)
    monkeypatch.setenv(shipped.MODEL_DIR_ENV, str(tmp_path / "models"))
    shipped.install_model(src, command="python benchmarks/train_shipped_model.py --work w --install", steps=3,
                          resolution_mm=1.0, n_maps=2, target_crop=32, target_domain="eight cases, two protocols",
                          domain="1 mm; 7 T along z, and 3 T tilted")
    manifest = shipped.read_manifest()
    assert [p["b0_tesla"] for p in manifest["training_geometry"]["protocols"]] == [7.0, 3.0]
    assert manifest["training_geometry"]["voxel_size_mm"] == [1.0, 1.0, 1.0]
    assert manifest["training_data"]["target_domain"] == "eight cases, two protocols"
    assert any("target domain: 1 mm; 7 T along z, and 3 T tilted;" in limit for limit in manifest["known_limits"])


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
    with pytest.raises(InputError, match="no shipped model is installed"):
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
    assert file_sha256(shipped.model_path()) in sidecar  # the provenance names the pinned weights
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
