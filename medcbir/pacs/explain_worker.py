"""Explanations on their own worker process, so the plugin's searches keep answering.

An explanation is seconds to minutes of encoder forwards (RELAX: thousands of masked
images); run in the plugin worker it held the engine for its whole duration and took the
CPU that searches need. Here it runs in one separate process at a lower CPU priority
(``nice`` +10: under contention the kernel gives the search process ~9× its share), with
its own engine on the newest committed generation; the worker only waits for its answer
(on the request's own thread), so a search arriving meanwhile is served at once.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# CPU priority of the explanation process relative to the plugin worker.
NICE = 10

_state: dict = {}


def _start(index: str, encoder: str, url: str, token: str | None, parent: int) -> None:
    # Let go of the worker's stdin/stdout (Orthanc's pipes): the plugin waits for their EOF
    # when Orthanc stops, and this process must not keep them open.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    # Go when the worker goes (killed, or stopped without shutting the pool down).
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    os.nice(NICE)
    try:
        import torch

        torch.set_num_threads(1)  # the searches' process keeps the other core
    except ImportError:
        pass
    _state.update(index=Path(index), encoder=encoder, url=url, token=token, engine=None, generation=None)


def _watch_parent(parent: int) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _engine():
    from medcbir.engine import Engine
    from medcbir.indexer.manifest import committed_generation

    generation = committed_generation(_state["index"])
    if _state["engine"] is None or generation != _state["generation"]:
        _state["engine"] = Engine.open(_state["index"], encoder=_state["encoder"])
        _state["generation"] = int(_state["engine"].store.generation)
    return _state["engine"]


def _warm() -> int:
    return os.getpid()


def _explain(query_path: str, request: dict, label: str | None) -> tuple[bytes, str]:
    from medcbir.pacs.explain_route import explain_answer
    from medcbir.pacs.orthanc_rest import OrthancRest

    rest = OrthancRest(_state["url"], token=_state["token"])
    return explain_answer(_engine(), rest, Path(query_path), request, label=label)


class ExplainWorker:
    """One explanation process (started on first use, warmed in the background).

    Args:
        index: the index folder.
        encoder: the encoder (checkpoint path or ``"default"``).
        url: Orthanc's REST URL.
        token: the plugin's REST token, if any.
    """

    def __init__(self, index: Path, encoder: str, url: str, token: str | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_start,
                                         initargs=(str(index), str(encoder), url, token, os.getpid()))
        self._lock = threading.Lock()
        self._pool.submit(_warm)  # import torch & co. now, not in the first explanation

    def explain(self, query_path: Path, request: dict, label: str | None = None) -> tuple[bytes, str]:
        """The explanation's (body, MIME type); explanations are served one at a time."""
        with self._lock:
            return self._pool.submit(_explain, str(query_path), dict(request), label).result()

    def close(self) -> None:
        """Stop the explanation process (an explanation under way is abandoned)."""
        processes = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # do not wait for a long explanation to end
            process.terminate()
