"""ONNX export: parity with torch on real phantom images, metadata round trip, dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from medcbir.train.onnx_export import ParityError, export_onnx


def test_export_parity_on_phantom_images_is_below_1e_4(exported):
    report = exported["report"]
    assert report.parity_source == "archive" and report.parity_images == 8
    assert report.max_abs_diff < 1e-4


def test_metadata_round_trip_and_dynamic_batch(exported, phantom_archive):
    model = onnx.load(exported["onnx"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["medcbir.fingerprint"] == exported["summary"].fingerprint
    assert json.loads(meta["medcbir.preprocessing"]) == {
        "windows": ["CT=ct-liver-wide,*=robust"], "size": 64, "crop": "body", "margin": 0.05, "spacing": 3.5
    }
    assert meta["medcbir.dim"] == "512" and json.loads(meta["medcbir.arch"])["backbone"] == "resnet18"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {"images": np.random.default_rng(batch).random((batch, 1, 64, 64), dtype=np.float32)})[0]
        assert out.shape == (batch, 512)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_failed_parity_writes_nothing(trained, tmp_path):
    out = tmp_path / "strict.onnx"
    with pytest.raises(ParityError, match="parity check failed"):
        export_onnx(trained["checkpoint"], out, tolerance=1e-12)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
