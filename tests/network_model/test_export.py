"""daqsm-export: the ONNX model gives the Keras target model's output within 1e-5 ppm, any valid size."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import requires  # noqa: E402

pytestmark = requires.tensorflow

from daqsm.network_model import export  # noqa: E402


@pytest.fixture(scope="module")
def ort():
    """onnxruntime, skipping when the onnx extra (pip install "daqsm[onnx]") is absent."""
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, ort):
    import keras

    from daqsm.network_model.unet import build_target_model

    keras.utils.set_random_seed(5)
    model = build_target_model(depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial target-domain BN statistics: the export must use them
        if layer.name.endswith(("_bn0", "_bn1")):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([1 + 0.2 * rng.standard_normal(gamma.shape), 0.1 * rng.standard_normal(beta.shape),
                               0.2 * rng.standard_normal(mean.shape), 0.5 + rng.random(var.shape)])
    path = tmp_path_factory.mktemp("export") / "target.keras"
    model.save(path)
    return path


def test_onnx_round_trip_matches_keras(model_file, ort, tmp_path, capsys):
    import keras

    out = tmp_path / "target.onnx"
    assert export.main(["--model", str(model_file), "-o", str(out), "--check-size", "12", "16", "20"]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["field_ppm", "mask"]
    assert [o.name for o in session.get_outputs()] == ["chi_ppm"]
    assert session.get_inputs()[0].shape[0] == 1 and session.get_inputs()[0].shape[4] == 1
    model = keras.saving.load_model(model_file)
    for shape in ((16, 20, 24), (8, 28, 12)):  # dynamic spatial axes, each divisible by 2**depth = 4
        field, mask = export.check_volume(shape, seed=1)
        got = session.run(None, {"field_ppm": field, "mask": mask})[0]
        want = np.asarray(model([field, mask], training=False))
        assert got.shape == (1, *shape, 1)
        assert float(np.max(np.abs(got - want))) <= 1e-5
        assert np.all(got[mask == 0] == 0)  # chi x mask kept in the graph
    sidecar = json.loads((tmp_path / "target.json").read_text())
    assert sidecar["Check"]["max_abs_diff_ppm"] <= 1e-5 and sidecar["Check"]["shape"] == [12, 16, 20]
    assert {k: sidecar["Config"][k] for k in ("model", "output", "opset", "check_size", "overwrite")} == {
        "model": str(model_file), "output": str(out), "opset": 17, "check_size": [12, 16, 20], "overwrite": False}
    import hashlib

    assert sidecar["Model"]["SHA256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert "chi_ppm" in capsys.readouterr().out


def test_export_refuses_existing_output_and_non_onnx_name(model_file, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"x")
    assert export.main(["--model", str(model_file), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert export.main(["--model", str(model_file), "-o", str(tmp_path / "m.keras")]) == 2
    assert "expected a file ending in .onnx" in capsys.readouterr().err
    assert out.read_bytes() == b"x"


def test_missing_onnx_extra_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    assert export.main(["--model", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "tf2onnx" in err and 'pip install "daqsm[onnx]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
