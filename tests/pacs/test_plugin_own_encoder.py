"""The Orthanc plugin with a user's own encoder: ``orthanc-config --encoder spec.json`` (a Hugging Face
ViT saved locally), images C-STOREd into a real Orthanc, indexed by the plugin's worker with that
encoder, searched and explained (Grad-CAM on the ViT's token grid) through Orthanc's REST API."""

from __future__ import annotations

import pydicom
import pytest

from tests.pacs.conftest import USER, storescu, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]


def test_the_plugin_indexes_searches_and_explains_with_a_spec(orthanc_factory, byo_models, pacs_archive, tmp_path):
    from click.testing import CliRunner

    from medcbir.cli.main import cli
    from medcbir.encoders.runtime import open_encoder
    from medcbir.engine import Engine
    from medcbir.pacs.orthanc_server import free_port

    spec = byo_models["hf-vit"]["encoder"]
    files = pacs_archive[:12]
    index, config = tmp_path / "index", tmp_path / "orthanc.json"
    result = CliRunner().invoke(cli, [
        "orthanc-config", str(config), "--index", str(index), "--encoder", spec, "--http-port", str(free_port()),
        "--dicom-port", str(free_port()), "--storage", str(tmp_path / "storage"), "--user", ":".join(USER),
        "--batch-size", "4", "--flush-seconds", "0.5", "--modality", "pytest=PYTEST@127.0.0.1:104"])
    assert result.exit_code == 0, result.output
    server = orthanc_factory(index, spec, config_path=config, start_timeout=240)
    storescu(server.config["DicomPort"], files)
    status = wait_for(lambda: (lambda s: s if s.get("indexed") == len(files) and s["queued"] == 0 and s["in_flight"] == 0 else None)(server.status()),
                      timeout=240, what="the images indexed")
    assert status["encoder"]["fingerprint"] == open_encoder(spec).fingerprint and status["encoder"]["source"] == spec

    query = files[5]
    instance = server.rest.lookup_sop(pydicom.dcmread(query, stop_before_pixels=True).SOPInstanceUID)
    resp = server.rest.post("/medcbir/search", json={"instance": instance, "k": 4, "per_series": 0, "exclude": "none"})
    assert resp.status_code == 200, resp.text
    expected = Engine.open(index, encoder=spec).search([str(query)], k=4, per_series=0)[0]
    assert [n["id"] for n in resp.json()["neighbours"]] == [n.id for n in expected]
    assert [n["score"] for n in resp.json()["neighbours"]] == pytest.approx([n.score for n in expected], abs=1e-5)

    explained = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 2, "method": "gradcam", "format": "json"})
    assert explained.status_code == 200, explained.text
    assert explained.json()["heatmap_shape"] == [3, 64, 64]
