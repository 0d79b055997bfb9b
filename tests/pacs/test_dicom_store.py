"""``"store": true`` through a real Orthanc: the KOS and the explanation objects land under their
sources' studies, read back with the right references, and the indexer skips them."""

from __future__ import annotations

import io

import pydicom
import pytest

from tests.pacs.conftest import wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]


def _dataset(server, instance: str):
    return pydicom.dcmread(io.BytesIO(server.rest.instance_file(instance)))


def _settled(server):
    s = server.status()
    return s if s["queued"] == 0 and s["in_flight"] == 0 else None


def test_search_and_explain_store_their_objects_and_reindexing_skips_them(results_server, results_archive):
    server = results_server
    indexed = server.status()["indexed"]
    query_ds = pydicom.dcmread(results_archive[5], stop_before_pixels=True)
    instance = server.rest.lookup_sop(query_ds.SOPInstanceUID)
    _, query_study = server.rest.parents(instance)

    resp = server.rest.post("/medcbir/search", json={"instance": instance, "k": 4, "per_series": 0, "store": True})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    [stored] = answer["stored"]
    assert stored["study"] == query_study and stored["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.59"
    kos = _dataset(server, stored["instance"])
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [query_ds.SOPInstanceUID] + [n["sop_instance_uid"] for n in answer["neighbours"]]
    assert kos.PatientID == query_ds.PatientID and kos.Manufacturer == "medcbir"

    resp = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 2, "method": "gradcam", "store": True})
    assert resp.status_code == 200, resp.text
    explained = resp.json()
    overlays, maps = explained["stored"]["overlays"], explained["stored"]["maps"]
    assert len(overlays) == len(maps) == 1 + len(explained["neighbours"]) == 3
    sources = [instance] + [server.rest.lookup_sop(n["sop_instance_uid"]) for n in explained["neighbours"]]
    for overlay, pmap, source in zip(overlays, maps, sources):
        _, source_study = server.rest.parents(source)
        assert overlay["study"] == pmap["study"] == source_study   # under the source's study in Orthanc
        sc = _dataset(server, overlay["instance"])
        source_uid = server.rest.tags(source)["SOPInstanceUID"]
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid and sc.BurnedInAnnotation == "YES"
        pm = _dataset(server, pmap["instance"])
        assert [r.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence] == [source_uid]

    derived = 1 + len(overlays) + len(maps)
    status = wait_for(lambda: (lambda s: s if s and s["skipped"].get("derived-by-medcbir") == derived else None)(_settled(server)),
                      timeout=60, what="the stored objects skipped")
    assert status["indexed"] == indexed   # nothing of them became an item
    # A re-index forgets skip decisions before it answers (the counts drop to none), so seeing
    # the count again means the worker fetched them once more and skipped them again.
    assert server.rest.post("/medcbir/reindex", json={}).status_code == 200
    status = wait_for(lambda: (lambda s: s if s and s["skipped"].get("derived-by-medcbir") == derived else None)(_settled(server)),
                      timeout=60, what="the re-index settled")
    assert status["indexed"] == indexed


def test_store_is_refused_with_a_case_search(results_server, results_archive):
    server = results_server
    instance = server.rest.lookup_sop(pydicom.dcmread(results_archive[2], stop_before_pixels=True).SOPInstanceUID)
    resp = server.rest.post("/medcbir/search", json={"instance": instance, "group_by": "study", "store": True})
    assert resp.status_code == 400 and "group_by" in resp.json()["error"]
    assert server.rest.post("/medcbir/search", json={"instance": instance, "store": "maybe"}).status_code == 400
