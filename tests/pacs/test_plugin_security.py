"""What the plugin lets a caller do, through a real Orthanc: bounded requests, checked ids and
keys, C-STORE only from known modalities, deletions that reach the index, no paths in answers."""

from __future__ import annotations

import time

import pydicom
import pytest

from tests.pacs.conftest import PYTEST_MODALITY, storescu, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

LIMITS = {"MaxK": 50, "MaxExplainK": 3, "MaxMasks": 200, "MaxQueries": 2, "MaxBodyBytes": 400_000}
# A modality that exists, but at another address: storing as FARHOST from 127.0.0.1 is refused.
FAR = {"far": ("FARHOST", "127.0.0.2", 104)}


def settled(server, expected: int):
    status = server.status()
    if status.get("indexed") == expected and status["queued"] == 0 and status["in_flight"] == 0:
        return status
    return None


@pytest.fixture(scope="module")
def server(module_orthanc_factory, tmp_path_factory, pacs_archive, small_encoder):
    index = tmp_path_factory.mktemp("secure") / "index"
    srv = module_orthanc_factory(index, small_encoder, name="secure", batch_size=8, flush_seconds=0.3,
                                 modalities={**PYTEST_MODALITY, **FAR}, plugin_settings=LIMITS)
    storescu(srv.config["DicomPort"], pacs_archive)
    wait_for(lambda: settled(srv, len(pacs_archive)), timeout=120, what="all instances indexed")
    srv.index = index
    return srv


def instance_of_file(server, path) -> str:
    return server.rest.lookup_sop(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def refused(resp, *words):
    """A 400 whose error is one line naming ``words``."""
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    error = resp.json()["error"]
    assert "\n" not in error and all(w in error for w in words), error
    return error


# -- item 1: bounds ---------------------------------------------------------------------------

def test_k_is_bounded_by_the_setting_and_by_the_index_size(server, pacs_archive):
    instance = instance_of_file(server, pacs_archive[0])
    started = time.monotonic()
    refused(server.rest.post("/medcbir/search", json={"instance": instance, "k": 10**6}), "k", "MaxK")
    assert time.monotonic() - started < 10  # refused up front, not after a huge search
    # k within MaxK but beyond the 30 items: every item, once, and the answer says k=30.
    whole = server.rest.post("/medcbir/search", json={"instance": instance, "k": 50, "per_series": 0, "include_self": True,
                                                      "exclude": "none"})
    assert whole.status_code == 200, whole.text
    assert whole.json()["k"] == len(pacs_archive)
    assert len({n["id"] for n in whole.json()["neighbours"]}) == len(pacs_archive)
    refused(server.rest.post("/medcbir/search", data=pacs_archive[0].read_bytes(),
                             headers={"Content-Type": "application/dicom", "X-Medcbir-K": "51"}), "MaxK")


def test_explain_masks_neighbours_queries_and_body_are_bounded(server, pacs_archive):
    instance = instance_of_file(server, pacs_archive[0])
    refused(server.rest.post("/medcbir/explain", json={"instance": instance, "k": 2, "n_masks": 10**6}), "n_masks", "MaxMasks")
    refused(server.rest.post("/medcbir/explain", json={"instance": instance, "k": 4, "n_masks": 10}), "MaxExplainK")
    ok = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 3, "n_masks": 200, "format": "json"})
    assert ok.status_code == 200, ok.text
    # Without n_masks the default (3000) is held to MaxMasks too.
    default = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 1, "format": "json"})
    assert default.status_code == 200 and default.json()["options"]["n_masks"] == 200, default.text[:300]

    others = [instance_of_file(server, p) for p in pacs_archive[1:3]]
    refused(server.rest.post("/medcbir/search", json={"instances": [instance, *others], "k": 2}), "MaxQueries")
    two = server.rest.post("/medcbir/search", json={"instances": [instance, others[0]], "k": 2})
    assert two.status_code == 200, two.text
    assert [r["query"] for r in two.json()["results"]] == [instance, others[0]]
    assert all(len(r["neighbours"]) == 2 for r in two.json()["results"])

    big = b"\0" * 500_000
    refused(server.rest.post("/medcbir/search", data=big, headers={"Content-Type": "application/dicom"}), "MaxBodyBytes")


def test_worker_refuses_requests_over_its_memory_and_time_budget(server, pacs_archive, small_encoder):
    from medcbir.pacs.orthanc_config import PluginSettings
    from medcbir.pacs.worker import Worker

    # A second worker on the same index and Orthanc (read side only), with a tiny budget.
    section = {"Index": str(server.index), "Encoder": str(small_encoder), "RequestMemoryMB": 1, "RequestSeconds": 0.5}
    worker = Worker(PluginSettings.from_section(section), server.rest)
    instance = instance_of_file(server, pacs_archive[0])
    answer = worker.handle({"op": "explain", "args": {"instance": instance, "k": 3, "n_masks": 50}})
    assert answer["status"] == 400 and "RequestMemoryMB" in answer["error"], answer
    # Another request holds the engine: this one gives up after RequestSeconds with a 503.
    with worker._engine_lock:
        started = time.monotonic()
        busy = worker.handle({"op": "search", "args": {"instance": instance, "k": 3}})
        waited = time.monotonic() - started
    assert busy["status"] == 503 and "RequestSeconds" in busy["error"], busy
    assert 0.4 < waited < 5
    roomy = Worker(PluginSettings.from_section({**section, "RequestMemoryMB": 1024}), server.rest)
    assert roomy.handle({"op": "search", "args": {"instance": instance, "k": 3}})["ok"]


# -- item 2: ids and keys ---------------------------------------------------------------------

def test_request_values_never_reach_other_orthanc_routes(server, pacs_archive):
    patient = server.rest.get_json("/patients")[0]
    for sneaky in (f"../../patients/{patient}/archive?", "../../tools/log-level#", "%2e%2e/%2e%2e/system",
                   instance_of_file(server, pacs_archive[0]).upper(), ["a"], 7):
        for route in ("search", "explain"):
            refused(server.rest.post(f"/medcbir/{route}", json={"instance": sneaky}), "Orthanc id")
    refused(server.rest.post("/medcbir/search", json={"instances": ["../../system"]}), "Orthanc id")


def test_unknown_keys_are_refused_not_crashing(server, pacs_archive):
    instance = instance_of_file(server, pacs_archive[0])
    for key in ("op", "timeout", "args", "kk"):
        refused(server.rest.post("/medcbir/search", json={"instance": instance, key: 1}), "unknown key", key)
    refused(server.rest.post("/medcbir/explain", json={"instance": instance, "n_mask": 10}), "unknown key", "n_mask")
    refused(server.rest.post("/medcbir/search", json={"instance": instance, "format": "html"}), "unknown key")
    refused(server.rest.post("/medcbir/search", json={"instance": instance, "exclude": "nobody"}), "exclude")
    refused(server.rest.post("/medcbir/search", json={"instance": instance, "modality": "CT'; --"}), "modality")
    refused(server.rest.post("/medcbir/search", json={"k": 3}), "exactly one")


def test_the_allowed_keys_are_one_table():
    from medcbir.pacs.request_rules import ROUTES, BadRequest, check_request

    ok = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"
    with pytest.raises(BadRequest, match="colour"):
        check_request("search", {"instance": ok, "colour": "red"}, {})
    # Adding a key is one line in the route's table (group_by, prior, ... were added that way).
    ROUTES["search"]["colour"] = lambda value, limits: str(value)
    try:
        assert check_request("search", {"instance": ok, "colour": "red"}, {})["colour"] == "red"
    finally:
        del ROUTES["search"]["colour"]
    assert check_request("search", {"instance": ok, "group_by": "study", "per_series": 0, "prior": "false", "include_self": True}, {})


# -- item 4: answers carry Orthanc ids, never paths -------------------------------------------

def test_rest_answers_contain_no_file_system_path(server, pacs_archive):
    instance = instance_of_file(server, pacs_archive[5])
    search = server.rest.post("/medcbir/search", json={"instance": instance, "k": 5})
    assert search.status_code == 200
    for n in search.json()["neighbours"]:
        assert "source" not in n
    explained = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 2, "n_masks": 20, "format": "json"})
    raw = pacs_archive[5].read_bytes()
    posted = server.rest.post("/medcbir/explain", data=raw, headers={"Content-Type": "application/dicom", "X-Medcbir-Format": "json",
                                                                    "X-Medcbir-K": "2", "X-Medcbir-Method": "gradcam"})
    page = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 2, "n_masks": 20, "format": "html"})
    for resp in (search, explained, posted, page):
        assert resp.status_code == 200, resp.text[:300]
        for marker in ("/tmp", str(server.index), "medcbir-worker-", "medcbir-explain-", ".dcm", "file://"):
            assert marker not in resp.text, (marker, resp.text[:500])
    assert explained.json()["query"]["label"] == f"instance {instance}"


# -- item 3: who may C-STORE ------------------------------------------------------------------

def test_generated_config_restricts_dicom_store(tmp_path):
    from medcbir.pacs.orthanc_config import build_config, parse_modality

    closed = build_config(tmp_path / "i", "default", modalities=dict([parse_modality("ct1=CT_SCANNER@10.1.2.3:104")]))
    assert closed["DicomAlwaysAllowStore"] is False and closed["DicomCheckCalledAet"] is True
    assert closed["DicomCheckModalityHost"] is True and closed["DicomAlwaysAllowFind"] is False
    assert closed["DicomModalities"]["ct1"]["AET"] == "CT_SCANNER" and closed["DicomModalities"]["ct1"]["Host"] == "10.1.2.3"
    assert closed["DicomModalities"]["ct1"]["AllowStore"] is True and closed["DicomModalities"]["ct1"]["AllowFind"] is False
    assert build_config(tmp_path / "i", "default")["DicomModalities"] == {}
    assert build_config(tmp_path / "i", "default", allow_any_store=True)["DicomAlwaysAllowStore"] is True
    from medcbir.errors import ConfigError

    for bad in ("CT@scanner.example:104", "CT@10.0.0.1", "A-TITLE-LONGER-THAN-16@10.0.0.1:104"):
        with pytest.raises(ConfigError):
            parse_modality(bad)


def test_cstore_from_unknown_aet_host_or_to_another_aet_is_refused(server, no_pixel_file, pacs_archive):
    from medcbir.errors import MedcbirError
    from medcbir.pacs.orthanc_server import storescu as push

    port = server.config["DicomPort"]
    before = server.rest.statistics()["CountInstances"]
    with pytest.raises(MedcbirError):
        push(port, [no_pixel_file], aet="MEDCBIR", calling_aet="INTRUDER")       # unknown AE title
    with pytest.raises(MedcbirError):
        push(port, [no_pixel_file], aet="MEDCBIR", calling_aet="FARHOST")        # known AE, wrong host
    with pytest.raises(MedcbirError):
        push(port, [no_pixel_file], aet="NOT-MEDCBIR", calling_aet="PYTEST")     # wrong called AE
    assert server.rest.statistics()["CountInstances"] == before
    push(port, [no_pixel_file], aet="MEDCBIR", calling_aet="PYTEST")             # the known modality
    assert server.rest.statistics()["CountInstances"] == before + 1
    wait_for(lambda: server.status()["skipped"], timeout=60, what="the SR skipped")


def test_orthanc_config_cli_lists_who_may_store(tmp_path):
    import json

    from click.testing import CliRunner

    from medcbir.cli.main import cli

    out = tmp_path / "o.json"
    result = CliRunner().invoke(cli, ["orthanc-config", str(out), "--index", str(tmp_path / "i"), "--encoder", "default",
                                      "--modality", "ct=CT1@10.0.0.7:104"])
    assert result.exit_code == 0, result.output
    assert "C-STORE: accepted only from CT1@10.0.0.7" in result.output
    assert json.loads(out.read_text())["DicomAlwaysAllowStore"] is False
    opened = CliRunner().invoke(cli, ["orthanc-config", str(out), "--index", str(tmp_path / "i"), "--encoder", "default", "--allow-any-store"])
    assert opened.exit_code == 0 and json.loads(out.read_text())["DicomAlwaysAllowStore"] is True


# -- item 5: deletions (last: they change the archive) ----------------------------------------

def test_deleted_instances_and_series_leave_the_index_and_explain_still_answers(server, pacs_archive):
    from medcbir.indexer import IndexStore

    query = pacs_archive[0]
    instance = instance_of_file(server, query)
    first = server.rest.post("/medcbir/search", json={"instance": instance, "k": 3, "exclude": "same-patient"}).json()["neighbours"]
    victim = first[0]["instance"]
    assert server.rest.session.delete(server.url + f"/instances/{victim}").status_code == 200

    def gone():
        hits = server.rest.post("/medcbir/search", json={"instance": instance, "k": 50, "per_series": 0, "include_self": True, "exclude": "none"}).json()["neighbours"]
        return hits if victim not in {n["instance"] for n in hits} else None

    hits = wait_for(gone, timeout=30, what="the deleted instance to leave the answers")
    assert len(hits) == len(pacs_archive) - 1
    # explain over neighbours that include a just-deleted one still answers
    explained = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 3, "n_masks": 20, "format": "json",
                                                           "exclude": "same-patient"})
    assert explained.status_code == 200, explained.text
    assert victim not in explained.text

    # A whole series: every one of its instances is tombstoned.
    series = first[1]["series"]
    members = server.rest.get_json(f"/series/{series}")["Instances"]
    assert server.rest.session.delete(server.url + f"/series/{series}").status_code == 200
    wait_for(lambda: len(IndexStore.open(server.index).deleted) == 1 + len(members), timeout=30, what="series tombstoned")
    store = IndexStore.open(server.index)
    dead = {str(store.columns["source"][i]) for i in store.rows(store.deleted)}
    assert dead == {f"orthanc://{i}" for i in [victim, *members]}
    assert server.status()["indexed"] == len(pacs_archive) - 1 - len(members)


def test_explain_skips_a_neighbour_deleted_behind_the_index(server, pacs_archive, small_encoder):
    """An instance gone from Orthanc but not yet tombstoned (the worker has not caught up) is
    skipped by explain instead of failing the whole request."""
    from medcbir.engine import Engine
    from medcbir.pacs.explain_route import OrthancFiles

    engine = Engine.open(server.index, encoder=str(small_encoder))
    query = pacs_archive[-1]
    row = engine.search([str(query)], k=3, exclude="same-patient")[0]
    instance = row[0].meta["source"][len("orthanc://"):]
    # Delete behind the worker's back: the engine opened above still holds the item.
    assert server.rest.session.delete(server.url + f"/instances/{instance}").status_code == 200
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        got = OrthancFiles(engine, server.rest, Path(folder)).search([str(query)], k=3, exclude="same-patient")[0]
    assert all(instance not in n.meta["source"] for n in got)
    assert [n.rank for n in got] == [1, 2, 3]                  # the next neighbour took its place
    assert [n.id for n in got] == [n.id for n in row[1:]] + [got[2].id] and got[2].id not in {n.id for n in row}


def test_the_plugin_accepts_every_explanation_method():
    # request_rules spells the methods out (validating a request must not import torch); it must
    # list exactly medcbir.explain's methods, so a method added there is reachable from the plugin
    from medcbir.explain import METHODS as EXPLAIN_METHODS
    from medcbir.pacs.request_rules import METHODS, BadRequest, check_request

    assert sorted(METHODS) == sorted(EXPLAIN_METHODS)
    ok = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"
    for method in ("wildcat", "gradient", "guided_backprop", "smoothgrad_ig"):
        assert check_request("explain", {"instance": ok, "method": method}, {})["method"] == method
    with pytest.raises(BadRequest, match="method"):
        check_request("explain", {"instance": ok, "method": "lime"}, {})
