"""REST fuzz: 2,000 hostile bodies through a real Orthanc with the plugin.

Deep nesting, huge and non-finite numbers, wrong types, odd encodings (UTF-16/32, BOM, invalid
UTF-8, NUL), decode bombs (a real 16384² RLE image, 300,000 one-pixel frames, headers that
lie), oversized headers, wrong content types, cross-site origins, random bytes and truncated
DICOM (:class:`tests.pacs.hostile.Corpus`), sent in batches from a few threads. After each
batch: Orthanc's process is the one started and answers ``/medcbir/status``, the worker was
not restarted and stays under its memory bound, and the index holds every item it held.
No body may be answered 500. ``benchmarks/rest_fuzz.py`` sends ten times as many.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.pacs.hostile import Corpus, lying_frames, lying_rle, many_frames, rle_bomb, rss_mb

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

BODIES = 2000
BATCH = 250
THREADS = 4
SEED = 2025
#: the worker may grow by at most this much over the fuzz (MiB); a decoded bomb takes GBs
MEMORY_GROWTH_MB = 400
#: what a hostile body may be answered with (503: the explanation queue is full)
EXPECTED = {200, 400, 403, 404, 405, 409, 413, 415, 503}


def bombs() -> list[bytes]:
    """Decode bombs, the 8 MB real one rarer than the small ones whose header lies."""
    small = [lying_rle(), lying_frames(), many_frames()]
    return small * 3 + [rle_bomb()]


def send(server, triple) -> int:
    route, body, headers = triple
    try:
        return server.rest.session.post(f"{server.url}/medcbir/{route}", data=body, headers=headers, timeout=60).status_code
    except requests.ConnectionError:
        return -1  # Orthanc closed the connection: counted, and Orthanc must still be up


def fuzz(server, bodies: int, batch: int, threads: int, seed: int, check) -> Counter:
    """Send ``bodies`` hostile requests; ``check(sent)`` runs after each batch."""
    corpus = iter(Corpus(seed=seed, bombs=bombs()))
    statuses: Counter = Counter()
    with ThreadPoolExecutor(threads) as pool:
        sent = 0
        while sent < bodies:
            chunk = [next(corpus) for _ in range(min(batch, bodies - sent))]
            statuses.update(pool.map(lambda t: send(server, t), chunk))
            sent += len(chunk)
            check(sent)
    return statuses


def test_rest_fuzz_leaves_orthanc_the_worker_and_the_index_as_they_were(hostile_server, pacs_archive):
    server = hostile_server
    before = server.status()
    worker, items = before["pid"], before["indexed"]
    assert items == len(pacs_archive)
    bound = rss_mb(worker) + MEMORY_GROWTH_MB
    peak = [0.0]

    def check(sent: int) -> None:
        assert server.proc.poll() is None, f"Orthanc died after {sent} bodies"
        status = server.status()
        assert status["worker"] == "running" and status["pid"] == worker and status["worker_restarts"] == 0, status
        assert status["indexed"] == items, f"{items - status['indexed']} items lost after {sent} bodies"
        peak[0] = max(peak[0], rss_mb(worker))
        assert peak[0] < bound, f"worker at {peak[0]:.0f} MiB after {sent} bodies (bound {bound:.0f})"

    started = time.monotonic()
    statuses = fuzz(server, BODIES, BATCH, THREADS, SEED, check)
    elapsed = time.monotonic() - started
    assert sum(statuses.values()) == BODIES
    assert set(statuses) <= EXPECTED, statuses  # never a 500, never a dropped connection
    assert statuses[200] < BODIES / 5 and statuses[400] > BODIES / 3, statuses
    print(f"fuzz: {BODIES} bodies in {elapsed:.1f} s, {dict(statuses)}, worker peak {peak[0]:.0f} MiB")
