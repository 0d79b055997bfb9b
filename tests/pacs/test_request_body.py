"""The plugin's envelope checks and the worker's parse of a body, without Orthanc: the byte scan
finds the JSON nesting a parser would, whatever the body; origins; content types."""

from __future__ import annotations

import json
import random
import time

import pytest

from medcbir.pacs.request_body import (MAX_JSON_DEPTH, check_envelope, check_origin, json_depth, parse_json,
                                       request_arguments)
from medcbir.pacs.request_rules import BadRequest, Forbidden, UnsupportedMediaType, check_request, without_paths

HOST = {"host": "127.0.0.1:8042"}


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def random_json(rng: random.Random, level: int = 0):
    roll = rng.random()
    if level > 6 or roll < 0.3:  # strings full of brackets, quotes and escapes
        return rng.choice(['a[b', 'q"}', "\\", 'x\\"[', 1, None, "", "]]]{", '\\\\"', "é[\n", 2.5])
    if roll < 0.65:
        return [random_json(rng, level + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k", "[", '"{', "\\"]) + str(i): random_json(rng, level + 1) for i in range(rng.randint(0, 3))}


def test_the_byte_scan_measures_the_nesting_a_parser_sees():
    rng = random.Random(7)
    for _ in range(2000):
        value = random_json(rng)
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
            assert json_depth(text.encode()) == depth_of(value), text


@pytest.mark.parametrize("body", [b"[" * 2**24, b"[]" * 2**23, b'"' * 2**24, b'"\\"' * 2**22, b'{"dicom": "' + b"A" * 2**24,
                                  bytes(range(256)) * 2**16])
def test_the_byte_scan_is_fast_on_hostile_bodies(body):
    started = time.monotonic()
    try:
        json_depth(body)
    except BadRequest:
        pass
    assert time.monotonic() - started < 2  # 16 MiB; a regular expression took seconds on some


def test_envelope_checks():
    ok = {**HOST, "content-type": "application/json; charset=utf-8"}
    check_envelope(ok, b'{"k": 1}', 100)
    with pytest.raises(BadRequest, match="MaxBodyBytes"):
        check_envelope(ok, b"{}" * 100, 100)
    with pytest.raises(BadRequest, match="deeper than"):
        check_envelope(ok, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), 10**6)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "", "application/json-seq", "application/dicom+json"):
        with pytest.raises(UnsupportedMediaType):
            check_envelope({**HOST, "content-type": kind}, b"{}", 100)
    # a part of a form upload, as Orthanc hands it over: the part's headers only
    with pytest.raises(UnsupportedMediaType, match="form"):
        check_envelope({"content-disposition": 'form-data; name="f"', "content-type": "application/json"}, b"{}", 100)
    check_envelope({**HOST, "content-type": "Application/DICOM"}, b"\0" * 50, 100)


def test_origins():
    check_origin(HOST)  # no Origin: not a browser page
    check_origin({**HOST, "origin": "http://127.0.0.1:8042"}, loopback_only=True)
    check_origin({"host": "pacs.example", "origin": "https://pacs.example"})  # behind a TLS proxy
    check_origin({"host": "127.0.0.1:8042", "origin": "https://viewer.example"}, allowed=["https://viewer.example"])
    for headers, loopback in (({**HOST, "origin": "https://evil.example"}, False), ({**HOST, "origin": "null"}, False),
                              ({**HOST, "origin": "http://127.0.0.1:9999"}, False), ({"origin": "http://127.0.0.1:8042"}, False),
                              ({"host": "evil.example:8042", "origin": "http://evil.example:8042"}, True)):
        with pytest.raises(Forbidden):
            check_origin(headers, loopback_only=loopback)


def test_the_worker_parses_bodies_and_headers():
    assert request_arguments("search", {"content-type": "application/json", "x-medcbir-k": "3"}, b'{"k": 5}') == {"k": 5}
    assert request_arguments("search", {"content-type": "application/dicom", "x-medcbir-k": "3"}, b"DICM") == {"dicom": b"DICM", "k": "3"}
    assert request_arguments("explain", {"content-type": "application/json", "accept": "text/html"}, b"")["format"] == "html"
    for body, words in ((b"\xef\xbb\xbf{}", "UTF-8"), ('{"k": 1}'.encode("utf-16"), "UTF-8"), (b'{"k": NaN}', "NaN"),
                        (b'{"k": 1e400}', "out of range"), (b'{"k": ' + b"9" * 5000 + b"}", "not JSON"), (b"[1]", "object"),
                        (b'{"k": "\xc3\x28"}', "UTF-8"), (b"{not json", "not JSON")):
        with pytest.raises(BadRequest, match=words):
            parse_json(body)


@pytest.mark.parametrize(("key", "value"), [("seed", 2**64), ("seed", 2**32), ("seed", -1), ("k", "1" * 30), ("k", "٣"),
                                            ("k", 2.5), ("k", True), ("per_series", 10**30), ("n_masks", "1_000")])
def test_every_number_is_bounded(key, value):
    route = "explain" if key in ("seed", "n_masks") else "search"
    limits = {"MaxK": 50, "MaxMasks": 100, "MaxExplainK": 5}
    with pytest.raises(BadRequest) as info:
        check_request(route, {"instance": "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd", key: value}, limits)
    assert len(str(info.value)) < 200


def test_errors_name_no_path():
    assert without_paths("cannot decode query /tmp/medcbir-worker-x/tmp1.dcm: corrupt") == "cannot decode query <path>: corrupt"
    assert without_paths("source file:///data/a.dcm gone; '/data/index/shard-1.h5'") == "source <path> gone; '<path>'"
    assert without_paths("Orthanc at http://127.0.0.1:8042/instances/x, 1/2 done") == "Orthanc at http://127.0.0.1:8042/instances/x, 1/2 done"


def test_failures_map_to_http_statuses_by_exception_type():
    """The worker answers each failure with the status of its type (subclasses included), never
    by the class's name: a subclass of a 503 error is a 503, a same-named foreign class is not."""
    from medcbir.errors import ConfigError, IndexNotFound, MedcbirError
    from medcbir.pacs.deadline import DeadlinePassed
    from medcbir.pacs.explain_worker import ExplainProcessLost, ExplainQueueFull
    from medcbir.pacs.handlers import EngineBusy, UnknownInstance, http_status

    assert http_status(UnknownInstance("x")) == 404 and http_status(IndexNotFound("x")) == 409
    for busy in (EngineBusy, DeadlinePassed, ExplainQueueFull, ExplainProcessLost):
        assert http_status(busy("x")) == 503
    assert http_status(ConfigError("x")) == 400 and http_status(MedcbirError("x")) == 400
    assert http_status(BadRequest("x")) == 400 and http_status(Forbidden("x")) == 403 and http_status(UnsupportedMediaType("x")) == 415

    class SlowerQueue(ExplainQueueFull):
        pass

    EngineBusyByName = type("EngineBusy", (MedcbirError,), {})  # same name, not the type
    assert http_status(SlowerQueue("x")) == 503 and http_status(EngineBusyByName("x")) == 400
