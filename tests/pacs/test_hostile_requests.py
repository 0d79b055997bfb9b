"""What a hostile caller sends the plugin, through a real Orthanc: deep JSON, decode bombs, heavy
explanations, cross-site requests, out-of-range numbers. Each is refused with a 4xx (or
answered fast), no answer names a file of the worker, and afterwards Orthanc still answers,
its process is the same, and the index holds what it held."""

from __future__ import annotations

import base64
import json
import threading
import time

import pydicom
import pytest

from tests.pacs.conftest import HOSTILE_SETTINGS, wait_for
from tests.pacs.hostile import (DICOM, JSON, corrupt_rle, explain_processes, many_frames, nested, rle_bomb,
                                rss_mb)

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

PATH_MARKERS = ("/tmp", "medcbir-worker-", "medcbir-explain-", ".dcm", "file://")


def instance_of_file(server, path) -> str:
    return server.rest.lookup_sop(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def post(server, route: str, body: bytes, headers: dict, timeout: float = 60):
    return server.rest.post(f"/medcbir/{route}", data=body, headers=headers, timeout=timeout)


def assert_alive(server, items: int) -> dict:
    """Orthanc's process is the one started, /medcbir/status answers, nothing indexed is lost."""
    assert server.proc.poll() is None, "Orthanc died"
    status = server.status()
    assert status["worker"] == "running" and status["indexed"] == items, status
    return status


def error_of(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    error = resp.json()["error"]
    assert "\n" not in error and not any(m in error for m in PATH_MARKERS), error
    return error


# -- D1: a JSON body nested a few hundred levels deep crashed Orthanc -------------------------

def test_deeply_nested_json_is_refused_before_any_parser_runs(hostile_server, pacs_archive):
    for depth in (700, 100_000):
        for route in ("search", "explain", "reindex"):
            error = error_of(post(hostile_server, route, nested(depth), JSON), 400)
            assert "JSON body" in error
        assert_alive(hostile_server, len(pacs_archive))
    # a body just inside the bound is parsed (and refused for what it says, not for its shape)
    error = error_of(post(hostile_server, "search", nested(14), JSON), 400)
    assert "k must be an integer" in error


# -- D2: the cost of decoding is judged from the header, and a query decodes one frame ---------

def test_decode_bombs_are_refused_from_the_header_or_answered_fast(hostile_server, pacs_archive):
    server = hostile_server
    worker = server.status()["pid"]
    before = rss_mb(worker)
    bomb = rle_bomb()  # 8 MB on the wire, 16384² pixels: 512 MiB decoded, 1 GiB as float32
    for route, body, headers in (("search", bomb, DICOM), ("explain", bomb, DICOM),
                                 ("search", json.dumps({"dicom": base64.b64encode(bomb).decode()}).encode(), JSON)):
        started = time.monotonic()
        error = error_of(post(server, route, body, headers), 400)
        assert "too-large" in error and "MiB" in error
        assert time.monotonic() - started < 5  # the old code decoded it (11 s, +2 GB)
    # 300,000 frames of 1×1 pixel: the query is its first frame, answered at once
    started = time.monotonic()
    resp = post(server, "search", many_frames(), {**DICOM, "X-Medcbir-K": "3"})
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["neighbours"]) == 3
    assert time.monotonic() - started < 5  # the old code decoded every frame (16 s)
    assert rss_mb(worker) - before < 300
    assert_alive(server, len(pacs_archive))

    # Stored into Orthanc, the same file is skipped by the indexer before it is decoded.
    skipped = server.status()["skipped"].get("too-large", 0)
    stored = server.rest.store(bomb)["ID"]
    try:
        wait_for(lambda: server.status()["skipped"].get("too-large", 0) == skipped + 1, timeout=60, what="the bomb skipped")
        assert rss_mb(worker) - before < 300
        assert_alive(server, len(pacs_archive))
    finally:
        server.rest.session.delete(server.url + f"/instances/{stored}")


# -- D3: explanations have a deadline and a bounded queue; searches never wait for them --------

def test_explanations_stop_at_their_deadline_and_their_queue_is_bounded(hostile_server, pacs_archive):
    server = hostile_server
    timeout = HOSTILE_SETTINGS["SearchTimeout"]
    worker = server.status()["pid"]
    wait_for(lambda: explain_processes(worker), timeout=60, what="the explanation process")
    instances = [instance_of_file(server, p) for p in pacs_archive[:3]]
    heavy = {"k": 10, "n_masks": 5000, "pairwise": True, "format": "json"}  # minutes of work
    answers: dict = {}

    def explain(i: int) -> None:
        started = time.monotonic()
        resp = server.rest.post("/medcbir/explain", json={"instance": instances[i], **heavy}, timeout=4 * timeout)
        answers[i] = (resp.status_code, time.monotonic() - started, resp.json().get("error", ""))

    first = threading.Thread(target=explain, args=(0,))
    first.start()
    time.sleep(2.0)
    running = explain_processes(worker)  # the process computing the first explanation
    second = threading.Thread(target=explain, args=(1,))
    second.start()
    time.sleep(1.0)
    # one runs, one waits (ExplainQueue 1): a third is answered 503 at once, not after minutes
    started = time.monotonic()
    error = error_of(server.rest.post("/medcbir/explain", json={"instance": instances[2], **heavy}, timeout=4 * timeout), 503)
    assert "ExplainQueue" in error and time.monotonic() - started < 3
    # searches and the status do not wait behind explanations
    started = time.monotonic()
    assert server.rest.post("/medcbir/search", json={"instance": instances[2], "k": 3}).status_code == 200
    assert server.status()["explain"] == {"running": 1, "waiting": 1, "queue": 1, "stopped": 0}
    assert time.monotonic() - started < 3
    first.join()
    second.join()
    for status, took, error in answers.values():
        assert status == 503 and took < timeout + 3 and "SearchTimeout" in error, answers
    # the first explanation's work stopped with its request (the old code computed for minutes)
    time.sleep(1.0)
    assert running and not set(running) & set(explain_processes(worker))
    assert server.status()["explain"]["stopped"] >= 1

    # the restarted explanation process serves the next explanation
    def cheap():
        resp = server.rest.post("/medcbir/explain", json={"instance": instances[0], "k": 1, "n_masks": 20, "format": "json"})
        return resp if resp.status_code == 200 else None

    wait_for(cheap, timeout=120, interval=1.0, what="an explanation from the restarted process")
    assert_alive(server, len(pacs_archive))


def test_a_search_stops_at_its_deadline_or_when_its_caller_is_gone(hostile_server, pacs_archive, small_encoder):
    from medcbir.pacs.orthanc_config import PluginSettings
    from medcbir.pacs.worker import Worker

    # A second worker on the same index and Orthanc (its read side), as the plugin's would be.
    section = {"Index": str(hostile_server.index), "Encoder": str(small_encoder), "RequestSeconds": 60}
    worker = Worker(PluginSettings.from_section(section), hostile_server.rest)
    args = {"instance": instance_of_file(hostile_server, pacs_archive[0]), "k": 3}
    assert worker.handle({"op": "search", "args": args, "timeout": 30})["ok"]
    # another request holds the engine: this one gives up at its own deadline, not RequestSeconds
    with worker._engine_lock:
        started = time.monotonic()
        late = worker.handle({"op": "search", "args": args, "timeout": 2})
        waited = time.monotonic() - started
    assert late["status"] == 503 and "SearchTimeout" in late["error"], late
    assert waited < 5
    # the caller hung up: no search is made for nobody
    gone = worker.handle({"op": "search", "args": args, "timeout": 30}, gone=lambda: True)
    assert gone["status"] == 503 and "went away" in gone["error"], gone


# -- D6: no answer names a file of the worker ---------------------------------------------------

def test_no_answer_or_error_names_a_worker_file(hostile_server, pacs_archive):
    server = hostile_server
    resp = post(server, "search", pacs_archive[3].read_bytes(), {**DICOM, "X-Medcbir-Prior": "true"})
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["prior"]["query"] is None  # the posted DICOM has no Orthanc id
    for marker in PATH_MARKERS:
        assert marker not in resp.text, (marker, resp.text[:500])
    instance = instance_of_file(server, pacs_archive[3])
    prior = server.rest.post("/medcbir/search", json={"instance": instance, "prior": True}).json()
    assert prior["prior"]["query"] == instance
    # an error from the engine's decoder names the query, not its temporary file
    for route in ("search", "explain"):
        error = error_of(post(server, route, corrupt_rle(), DICOM), 400)
        assert "decod" in error
    assert_alive(server, len(pacs_archive))


# -- D7: only JSON and DICOM bodies, and only from the server's own pages -----------------------

def test_cross_site_requests_are_refused(hostile_server, pacs_archive):
    server = hostile_server
    instance = instance_of_file(server, pacs_archive[0])
    body = json.dumps({"instance": instance, "k": 2}).encode()
    # what a page of another site can send without the server's consent: refused
    for kind in ("text/plain", "application/x-www-form-urlencoded", ""):
        for route in ("search", "explain", "reindex"):
            error_of(post(server, route, body, {"Content-Type": kind} if kind else {}), 415)
    # a form upload: Orthanc hands each part to the plugin with the part's own headers, and
    # answers 200 whatever the plugin says; the stored KOS would show that the search ran
    count = len(server.rest.get_json("/instances"))
    storing = json.dumps({"instance": instance, "k": 2, "store": True}).encode()
    for route in ("search", "explain"):
        form = server.rest.session.post(server.url + f"/medcbir/{route}", files={"file": ("q.json", storing, "application/json")})
        assert form.status_code == 200 and not form.content, (form.status_code, form.text[:200])
    time.sleep(2.0)
    assert len(server.rest.get_json("/instances")) == count
    port = server.url.rsplit(":", 1)[1]
    for origin, host in (("https://evil.example", None), ("null", None), (f"http://localhost:{int(port) + 1}", None),
                         (f"http://rebound.example:{port}", f"rebound.example:{port}")):  # DNS rebinding
        headers = {**JSON, "Origin": origin, **({"Host": host} if host else {})}
        error_of(post(server, "search", body, headers), 403)
        error_of(server.rest.session.get(server.url + "/medcbir/status", headers=headers), 403)
    # the server's own pages, and clients that are not browsers, are served
    assert post(server, "search", body, {**JSON, "Origin": server.url}).status_code == 200
    assert post(server, "search", body, {"Content-Type": "application/json; charset=utf-8"}).status_code == 200
    raw = post(server, "search", pacs_archive[0].read_bytes(), {**DICOM, "X-Medcbir-K": "2", "Origin": server.url})
    assert raw.status_code == 200 and len(raw.json()["neighbours"]) == 2
    assert_alive(server, len(pacs_archive))


# -- D8: every number is bounded -----------------------------------------------------------------

def test_out_of_range_numbers_are_400_never_500(hostile_server, pacs_archive):
    server = hostile_server
    instance = instance_of_file(server, pacs_archive[0])
    for route, key, value in (("explain", "seed", "18446744073709551616"), ("explain", "seed", str(2**32)),
                              ("explain", "seed", "-1"), ("explain", "n_masks", "1" + "0" * 30),
                              ("search", "k", "1e400"), ("search", "k", "-1e400"), ("search", "k", "NaN"),
                              ("search", "k", "Infinity"), ("search", "k", "9" * 5000), ("search", "per_series", str(10**30)),
                              ("search", "k", "2.5"), ("search", "k", '"1e9"'), ("search", "k", '"\u0663"')):
        body = ('{"instance": "%s", "%s": %s}' % (instance, key, value)).encode()
        error = error_of(post(server, route, body, JSON), 400)
        assert len(error) < 300
    for header in ("1" * 50, "-3", "3.5", "0x10"):
        error_of(post(server, "search", pacs_archive[0].read_bytes(), {**DICOM, "X-Medcbir-K": header}), 400)
    ok = server.rest.post("/medcbir/explain", json={"instance": instance, "k": 1, "n_masks": 20, "seed": 2**32 - 1, "format": "json"})
    assert ok.status_code in (200, 503), ok.text[:300]  # 503 only while the explanation process restarts
    assert_alive(server, len(pacs_archive))


# -- D4: empty credentials ----------------------------------------------------------------------

@pytest.mark.parametrize("user", ["admin:", ":", ":secret", "  :  ", ""])
def test_orthanc_config_refuses_empty_credentials(tmp_path, capsys, user):
    from medcbir.cli.main import main

    out = tmp_path / "o.json"
    for extra in (["--remote"], []):
        code = main(["orthanc-config", str(out), "--index", str(tmp_path / "i"), "--encoder", "default", "--user", user, *extra])
        captured = capsys.readouterr()
        lines = (captured.out + captured.err).strip().splitlines()
        assert code != 0 and len(lines) == 1, lines
        assert lines[0].startswith("error:") and "--user" in lines[0], lines
        assert not out.exists()
    assert main(["orthanc-config", str(out), "--index", str(tmp_path / "i"), "--encoder", "default", "--user", "admin:pw", "--remote"]) == 0
    assert json.loads(out.read_text())["RegisteredUsers"] == {"admin": "pw"}
