"""A real Orthanc with the medcbir plugin: C-STORE → indexed on arrival → /medcbir/search.

The neighbours answered through Orthanc are checked against a direct ``Engine.search`` on the
same index with the same DICOM file (same ids, same order, same scores), and every returned
Orthanc id is checked against Orthanc's own view of that instance.
"""

from __future__ import annotations

import pydicom
import pytest

from tests.pacs.conftest import USER, storescu, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]


def settled(server, expected: int):
    """The status once ``expected`` instances are indexed and nothing is queued or in flight."""
    status = server.status()
    if status.get("indexed") == expected and status["queued"] == 0 and status["in_flight"] == 0:
        return status
    return None


@pytest.fixture(scope="module")
def indexed_server(module_orthanc_factory, tmp_path_factory, pacs_archive, small_encoder, no_pixel_file):
    from click.testing import CliRunner

    from medcbir.cli.main import cli
    from medcbir.pacs.orthanc_server import free_port

    # The administrator's path: `medcbir orthanc-config`, then the printed `Orthanc CONFIG`.
    folder = tmp_path_factory.mktemp("plugin")
    index, config = folder / "index", folder / "orthanc.json"
    result = CliRunner().invoke(cli, [
        "orthanc-config", str(config), "--index", str(index), "--encoder", str(small_encoder),
        "--http-port", str(free_port()), "--dicom-port", str(free_port()), "--storage", str(folder / "storage"),
        "--aet", "MEDCBIR", "--user", ":".join(USER), "--batch-size", "8", "--flush-seconds", "0.5",
        "--modality", "pytest=PYTEST@127.0.0.1:104"])
    assert result.exit_code == 0, result.output
    assert f"Orthanc {config}" in result.output
    server = module_orthanc_factory(index, small_encoder, config_path=config)
    storescu(server.config["DicomPort"], [*pacs_archive, no_pixel_file])
    status = wait_for(lambda: settled(server, len(pacs_archive)) if server.status()["skipped"] else None,
                      timeout=120, what="all instances indexed")
    return server, index, status


def test_every_stored_image_is_indexed_once_and_the_report_is_skipped(indexed_server, pacs_archive, small_encoder):
    from medcbir.indexer import IndexStore
    from medcbir.encoders.runtime import open_encoder

    server, index, status = indexed_server
    stats = server.rest.statistics()
    assert stats["CountInstances"] == len(pacs_archive) + 1          # the SR is stored too...
    assert status["indexed"] == len(pacs_archive)                    # ...but not indexed
    assert status["skipped"] == {"not-an-image": 1}
    assert status["worker"] == "running" and status["generation"] >= 1
    assert status["encoder"]["fingerprint"] == open_encoder(str(small_encoder)).fingerprint
    assert status["encoder"]["preprocessing"]["size"] == 64

    store = IndexStore.open(index)
    sops = [str(s) for s in store.columns["sop_instance_uid"]]
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in pacs_archive}
    assert len(sops) == len(set(sops)) == len(pacs_archive)
    assert set(sops) == expected
    # Every item records the Orthanc instance it came from, and Orthanc agrees on its SOP UID.
    sources = [str(s) for s in store.columns["source"]]
    assert all(s.startswith("orthanc://") for s in sources)
    for sop, source in list(zip(sops, sources))[:5]:
        tags = server.rest.get_json(f"/instances/{source[len('orthanc://'):]}")["MainDicomTags"]
        assert tags["SOPInstanceUID"] == sop


def test_search_through_orthanc_matches_engine(indexed_server, pacs_archive, small_encoder):
    from medcbir.engine import Engine

    server, index, _ = indexed_server
    query = pacs_archive[13]
    query_ds = pydicom.dcmread(query, stop_before_pixels=True)
    instance = server.rest.lookup_sop(query_ds.SOPInstanceUID)
    resp = server.rest.post("/medcbir/search", json={"instance": instance, "k": 6, "exclude": "same-patient", "per_series": 0})
    assert resp.status_code == 200, resp.text
    got = resp.json()["neighbours"]

    expected = Engine.open(index, encoder=str(small_encoder)).search([str(query)], k=6, exclude="same-patient")[0]
    assert len(got) == len(expected) == 6
    assert [n["id"] for n in got] == [n.id for n in expected]
    assert [n["rank"] for n in got] == [1, 2, 3, 4, 5, 6]
    assert [n["score"] for n in got] == pytest.approx([n.score for n in expected], abs=1e-5)
    for n, e in zip(got, expected):
        assert n["study_instance_uid"] != query_ds.StudyInstanceUID   # same patient excluded
        # The Orthanc ids are Orthanc's own: instance → its SOP UID, parents → series, study.
        info = server.rest.get_json(f"/instances/{n['instance']}")
        assert info["MainDicomTags"]["SOPInstanceUID"] == e.meta["sop_instance_uid"]
        assert info["ParentSeries"] == n["series"]
        assert server.rest.get_json(f"/series/{n['series']}")["ParentStudy"] == n["study"]

    # The same query as a raw DICOM body (options in headers: Orthanc drops a POST's query string).
    raw = server.rest.post("/medcbir/search", data=query.read_bytes(), headers={
        "Content-Type": "application/dicom", "X-Medcbir-K": "6", "X-Medcbir-Exclude": "same-patient", "X-Medcbir-Per-Series": "0"})
    assert raw.status_code == 200, raw.text
    assert [n["instance"] for n in raw.json()["neighbours"]] == [n["instance"] for n in got]

    # A modality filter that matches nothing, and bad requests, answer cleanly.
    none = server.rest.post("/medcbir/search", json={"instance": instance, "k": 3, "modality": "MR"})
    assert none.status_code == 200 and none.json()["neighbours"] == []
    assert server.rest.post("/medcbir/search", json={"instance": "no-such-id"}).status_code == 400  # not an Orthanc id
    assert server.rest.post("/medcbir/search", json={"instance": "0" * 8 + "-00000000" * 4}).status_code == 404
    assert server.rest.post("/medcbir/search", data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert server.rest.post("/medcbir/search", json={"instance": instance, "k": "many"}).status_code == 400
    assert server.rest.session.get(server.url + "/medcbir/search").status_code == 405


def test_region_search_through_orthanc_matches_engine(indexed_server, pacs_archive, small_encoder):
    """``"roi": [x, y, w, h]`` in /medcbir/search: the plugin's index stores regions (a new index
    does), and the answer equals the engine's region search, each neighbour with its matched box."""
    from medcbir.engine import Engine

    server, index, _ = indexed_server
    query = pacs_archive[13]
    instance = server.rest.lookup_sop(pydicom.dcmread(query, stop_before_pixels=True).SOPInstanceUID)
    box = [14, 18, 24, 20]
    resp = server.rest.post("/medcbir/search", json={"instance": instance, "k": 4, "roi": box, "exclude": "same-patient", "per_series": 0})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    expected = Engine.open(index, encoder=str(small_encoder)).search([str(query)], k=4, roi=box, exclude="same-patient")[0]
    assert answer["query_region"] == box and len(answer["neighbours"]) == len(expected) > 0
    assert [(n["id"], n["region"]) for n in answer["neighbours"]] == [(n.id, list(n.region)) for n in expected]
    assert [n["score"] for n in answer["neighbours"]] == pytest.approx([n.score for n in expected], abs=1e-5)
    for bad in ({"roi": [1, 2, 3]}, {"roi": [0, 0, 0, 5]}, {"roi": "1,2,3,4"}, {"roi": [60, 60, 20, 20]},
                {"roi": box, "group_by": "study"}, {"roi": box, "min_percentile": 50}):
        r = server.rest.post("/medcbir/search", json={"instance": instance, **bad})
        assert r.status_code == 400, (bad, r.status_code, r.text)


def test_region_explanation_through_orthanc_matches_the_engines(indexed_server, pacs_archive, small_encoder, tmp_path):
    """``"roi"`` in /medcbir/explain explains the region matches (as ``medcbir explain --roi``): the
    same neighbours, matched boxes and maps as :func:`explain_region_match` on the same index (its
    neighbours' files fetched from Orthanc), each neighbour named by its Orthanc ids with a picture
    of its map and matched box; PNG and HTML panels; refused combinations are 400s."""
    import base64
    import io

    from PIL import Image

    from medcbir.engine import Engine
    from medcbir.explain import explain_region_match
    from medcbir.pacs.explain_route import OrthancFiles

    server, index, _ = indexed_server
    query = pacs_archive[13]
    instance = server.rest.lookup_sop(pydicom.dcmread(query, stop_before_pixels=True).SOPInstanceUID)
    box = [14, 18, 24, 20]
    request = {"instance": instance, "roi": box, "k": 3, "method": "occlusion", "exclude": "same-patient", "format": "json"}
    resp = server.rest.post("/medcbir/explain", json=request, timeout=600)
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    engine = OrthancFiles(Engine.open(index, encoder=str(small_encoder)), server.rest, tmp_path)
    expected = explain_region_match(engine, str(query), tuple(box), k=3, exclude="same-patient", method="occlusion")
    assert body["query"]["region"] == box and len(body["neighbours"]) == len(expected.neighbours) == 3
    assert [(n["id"], n["region"]) for n in body["neighbours"]] == [(nb.id, list(nb.region)) for nb in expected.neighbours]
    assert [n["match_score"] for n in body["neighbours"]] == pytest.approx(expected.match_scores.tolist(), abs=1e-5)
    assert [n["share_in_region"] for n in body["neighbours"]] == pytest.approx(
        [round(expected.share_in_region(i), 4) for i in range(3)], abs=1e-4)
    for n, nb in zip(body["neighbours"], expected.neighbours):
        assert server.rest.get_json(f"/instances/{n['instance']}")["MainDicomTags"]["SOPInstanceUID"] == nb.meta["sop_instance_uid"]
        assert server.rest.parents(n["instance"]) == (n["series"], n["study"])
        picture = Image.open(io.BytesIO(base64.b64decode(n["overlay_png"])))
        assert picture.width % 64 == 0 and picture.width == picture.height  # the 64 px frame, enlarged whole
    assert "region-match occlusion: not evaluated" in body["status"]["text"] and "not for diagnosis" in body["caveat"]
    # no file of the worker is named: no source, no temporary folder
    assert all("source" not in n for n in body["neighbours"]) and "medcbir-explain-" not in resp.text

    panel = server.rest.post("/medcbir/explain", json={**request, "format": "png", "method": "relax", "n_masks": 40}, timeout=600)
    assert panel.status_code == 200 and panel.headers["Content-Type"].startswith("image/png"), panel.text[:300]
    assert Image.open(io.BytesIO(panel.content)).width >= 4 * 256
    page = server.rest.post("/medcbir/explain", json={**request, "format": "html"}, timeout=600)
    assert page.status_code == 200 and "region-match occlusion" in page.text and page.text.count("<img") == 4
    for bad, why in (({"method": "gradcam"}, "perturbation"), ({"store": True}, "does not combine"), ({"pairwise": True}, "does not combine"),
                     ({"roi": [50, 50, 30, 30]}, ""), ({"roi": [1, 2, 3]}, "roi")):
        r = server.rest.post("/medcbir/explain", json={**request, **bad}, timeout=600)
        assert r.status_code == 400 and why in r.json()["error"], (bad, r.status_code, r.text)


def test_search_options_group_by_prior_per_series_include_self(indexed_server, pacs_archive, small_encoder):
    from collections import Counter

    from medcbir.engine import Engine

    server, index, _ = indexed_server
    query = pacs_archive[4]
    uid = str(pydicom.dcmread(query, stop_before_pixels=True).SOPInstanceUID)
    instance = server.rest.lookup_sop(uid)
    engine = Engine.open(index, encoder=str(small_encoder))

    default = server.rest.post("/medcbir/search", json={"instance": instance, "k": 6}).json()["neighbours"]
    # by default the query's own series is left out, and at most 2 hits per series: 2 other series × 2
    own_series = str(pydicom.dcmread(query, stop_before_pixels=True).SeriesInstanceUID)
    assert len(default) == 4 and max(Counter(n["series_instance_uid"] for n in default).values()) <= 2  # per_series 2
    assert own_series not in [n["series_instance_uid"] for n in default]
    assert [n["id"] for n in default] == [n.id for n in engine.search([str(query)], k=6, per_series=2, exclude="same-series")[0]]
    kept = server.rest.post("/medcbir/search", json={"instance": instance, "k": 6, "exclude": "none"}).json()["neighbours"]
    assert len(kept) == 6 and uid not in [n["sop_instance_uid"] for n in kept]  # not its own neighbour
    assert [n["id"] for n in kept] == [n.id for n in engine.search([str(query)], k=6, per_series=2)[0]]
    mine = server.rest.post("/medcbir/search", json={"instance": instance, "k": 3, "include_self": True, "per_series": 0,
                                                     "exclude": "none"}).json()["neighbours"]
    assert mine[0]["sop_instance_uid"] == uid and mine[0]["instance"] == instance

    cases = server.rest.post("/medcbir/search", json={"instance": instance, "k": 3, "group_by": "study", "exclude": "none"}).json()
    want = engine.search_cases([str(query)], k=3, group_by="study")[0]
    assert cases["group_by"] == "study" and [c["uid"] for c in cases["cases"]] == [c.uid for c in want]
    assert all(s["instance"] for c in cases["cases"] for s in c["slices"])  # Orthanc ids of the slices

    prior = server.rest.post("/medcbir/search", json={"instance": instance, "prior": True}).json()
    assert prior["prior"]["studies"] == []  # one exam per patient in this archive
    for bad in ({"group_by": "patient"}, {"per_series": -1}, {"prior": "maybe"}, {"prior": True, "group_by": "study"}):
        assert server.rest.post("/medcbir/search", json={"instance": instance, **bad}).status_code == 400


def test_routes_need_orthanc_credentials(indexed_server):
    import requests

    server, _, _ = indexed_server
    assert requests.get(server.url + "/medcbir/status", timeout=10).status_code == 401
    assert requests.get(server.url + "/medcbir/status", auth=USER, timeout=10).status_code == 200


def test_reindex_retries_skipped_instances(indexed_server, pacs_archive):
    server, _, _ = indexed_server
    resp = server.rest.post("/medcbir/reindex", json={})
    assert resp.status_code == 200, resp.text
    # The SR is tried again and skipped again with its reason; nothing is indexed twice.
    status = wait_for(lambda: settled(server, len(pacs_archive)) if server.status()["skipped"] else None,
                      timeout=60, what="reindex settled")
    assert status["skipped"] == {"not-an-image": 1}
    assert server.status()["indexed"] == len(pacs_archive)


def test_dicomweb_source_indexes_incrementally(indexed_server, pacs_archive, small_encoder, tmp_path):
    from medcbir.indexer import IndexStore, index_archive
    from medcbir.pacs.dicomweb import DicomwebSource

    server, _, _ = indexed_server
    url = f"dicomweb+{server.url}/dicom-web"
    index = tmp_path / "dicomweb-index"
    first = index_archive(DicomwebSource(url, workers=2, auth=USER), index, str(small_encoder), progress=False)
    assert first.indexed == len(pacs_archive)
    assert first.skipped == {"not-an-image": 1}
    store = IndexStore.open(index)
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in pacs_archive}
    assert {str(s) for s in store.columns["sop_instance_uid"]} == expected
    sources = [str(s) for s in store.columns["source"]]
    assert all(s.startswith(url + "/studies/") and "/series/" in s and "/instances/" in s for s in sources)

    # Incremental re-run through the CLI (credentials in the URL, never in the recorded sources).
    import json

    from click.testing import CliRunner

    from medcbir.cli.main import cli

    with_auth = url.replace("http://", f"http://{USER[0]}:{USER[1]}@")
    result = CliRunner().invoke(cli, ["index", with_auth, "--encoder", str(small_encoder), "--out", str(index), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output.strip().splitlines()[-1])
    assert again["indexed"] == 0
    assert again["total_items"] == len(pacs_archive)
    assert again["already_present"] >= len(pacs_archive)
    assert not any(USER[1] in str(s) for s in IndexStore.open(index).columns["source"])


def test_dicomweb_source_errors_are_one_line():
    from medcbir.errors import ArchiveNotFound, ConfigError
    from medcbir.pacs.dicomweb import DicomwebSource
    from medcbir.pacs.orthanc_server import free_port

    with pytest.raises(ConfigError):
        DicomwebSource("dicomweb+ftp://example/dicom-web")
    source = DicomwebSource(f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    with pytest.raises(ArchiveNotFound, match="cannot reach"):
        list(source.decoded(None, None))


def test_explain_returns_png_html_and_json_panels(indexed_server, pacs_archive, small_encoder):
    import io

    from PIL import Image

    from medcbir.engine import Engine

    server, index, _ = indexed_server
    query = pacs_archive[4]
    instance = server.rest.lookup_sop(pydicom.dcmread(query, stop_before_pixels=True).SOPInstanceUID)
    ask = {"instance": instance, "k": 3, "method": "relax", "n_masks": 64, "exclude": "same-patient"}

    as_json = server.rest.post("/medcbir/explain", json={**ask, "format": "json"})
    assert as_json.status_code == 200, as_json.text
    expected = Engine.open(index, encoder=str(small_encoder)).search([str(query)], k=3, exclude="same-patient")[0]
    summary = as_json.json()
    assert [n["id"] for n in summary["neighbours"]] == [n.id for n in expected]
    assert summary["heatmap_shape"] == [4, 64, 64]  # the query + 3 neighbours at input size

    png = server.rest.post("/medcbir/explain", json=ask)
    assert png.status_code == 200 and png.headers["Content-Type"].startswith("image/png")
    width, height = Image.open(io.BytesIO(png.content)).size
    assert width > height > 200

    page = server.rest.post("/medcbir/explain", json=ask, headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.text.count("data:image/png;base64,") >= 2 * 4  # image + heatmap per item
    assert "PatientID" not in page.text and "PHANTOM" not in page.text

    assert server.rest.post("/medcbir/explain", json={**ask, "method": "magic"}).status_code == 400


def test_a_search_answers_while_an_explanation_runs(indexed_server, pacs_archive):
    """Explanations run in their own process: searches arriving meanwhile are answered at once."""
    import threading
    import time

    server, _, _ = indexed_server
    instance = server.rest.lookup_sop(pydicom.dcmread(pacs_archive[7], stop_before_pixels=True).SOPInstanceUID)
    search = {"instance": instance, "k": 5, "exclude": "none"}
    assert server.rest.post("/medcbir/search", json=search).status_code == 200  # engine warm
    answer = {}

    def explain():  # a long RELAX (600 masks × query + 3 neighbours)
        t0 = time.perf_counter()
        try:
            resp = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 3, "method": "relax",
                                                              "n_masks": 600, "format": "json"}, timeout=300)
            answer.update(status=resp.status_code, text=resp.text[:300])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            answer.update(error=repr(exc))
        answer["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=explain)
    started = time.perf_counter()
    thread.start()
    during = []  # (finished at, seconds) of searches answered while the explanation was running
    time.sleep(0.5)
    while thread.is_alive() and len(during) < 20:
        t0 = time.perf_counter()
        resp = server.rest.post("/medcbir/search", json=search)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["neighbours"]) == 5
        if thread.is_alive():
            during.append((time.perf_counter() - started, time.perf_counter() - t0))
    thread.join(timeout=300)
    assert answer.get("status") == 200, answer
    # Several searches were answered, each well before the explanation finished.
    assert len(during) >= 3, (during, answer)
    assert max(s for _, s in during) < answer["seconds"] / 2, (during, answer)
