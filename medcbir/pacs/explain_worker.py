"""Explanations on their own worker process, so the plugin's searches keep answering.

An explanation is seconds to minutes of encoder forwards (RELAX: thousands of masked
images); run in the plugin worker it held the engine for its whole duration and took the
CPU that searches need. Here it runs in one separate process at a lower CPU priority
(``nice`` +10: under contention the kernel gives the search process ~9× its share), with
its own engine on the newest committed generation; the worker only waits for its answer
(on the request's own thread), so a search arriving meanwhile is served at once.

Explanations are served one at a time from a bounded queue: at most ``ExplainQueue`` wait
behind the running one, and one more is answered 503 at once rather than held for minutes. An
explanation whose request passed its :class:`~medcbir.pacs.deadline.Deadline` (the plugin gave
up, or its connection is gone) is stopped: a running one by killing the explanation process,
which is started again (warm) for the next, a waiting one before it starts.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from medcbir.engine import Engine
from medcbir.errors import MedcbirError
from medcbir.indexer.manifest import committed_generation
from medcbir.pacs.deadline import Deadline, DeadlinePassed
from medcbir.pacs.explain_route import explain_answer
from medcbir.pacs.orthanc_rest import OrthancRest

# CPU priority of the explanation process relative to the plugin worker.
NICE = 10
# How often a waiting or running explanation looks at its deadline, in seconds.
POLL_SECONDS = 0.2


class ExplainQueueFull(MedcbirError):
    """As many explanations wait as ``ExplainQueue`` allows (answered 503 at once)."""


class ExplainProcessLost(MedcbirError):
    """The explanation process died under an explanation (answered 503; it is started again)."""

_state: dict = {}


def _start(index: str, encoder: str, url: str, token: str | None, parent: int, scratch: str | None) -> None:
    if scratch:
        # Its temporary files go where the worker can remove them after killing it.
        import tempfile

        Path(scratch).mkdir(mode=0o700, parents=True, exist_ok=True)
        tempfile.tempdir = scratch
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
    generation = committed_generation(_state["index"])
    if _state["engine"] is None or generation != _state["generation"]:
        _state["engine"] = Engine.open(_state["index"], encoder=_state["encoder"])
        _state["generation"] = int(_state["engine"].store.generation)
    return _state["engine"]


def _warm() -> int:
    try:
        _engine()  # open the engine now too (nothing may be committed yet: then at first use)
    except Exception:  # noqa: BLE001
        pass
    return os.getpid()


def _explain(query_path: str, request: dict, label: str | None) -> tuple[bytes, str]:
    rest = OrthancRest(_state["url"], token=_state["token"])
    return explain_answer(_engine(), rest, Path(query_path), request, label=label)


class ExplainWorker:
    """One explanation process (started at once, warmed in the background) and its queue.

    Args:
        index: the index folder.
        encoder: the encoder (checkpoint path or ``"default"``).
        url: Orthanc's REST URL.
        token: the plugin's REST token, if any.
        waiting: explanations that may wait behind the running one.
        scratch: the explanation process's temporary folder (emptied when it is killed), or
            None for the system's.
    """

    def __init__(self, index: Path, encoder: str, url: str, token: str | None = None, waiting: int = 2,
                 scratch: Path | None = None) -> None:
        self.scratch = Path(scratch) if scratch else None
        self._initargs = (str(index), str(encoder), url, token, os.getpid(), str(scratch) if scratch else None)
        self.waiting = int(waiting)
        self.pending = 0   # running + waiting
        self.stopped = 0   # explanations stopped at their deadline or lost with their process
        self._count = threading.Lock()
        self._turn = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_start, initargs=self._initargs)
        # import torch & co. and open the engine now, not in the first explanation
        self._warming = pool.submit(_warm)
        return pool

    def state(self) -> dict:
        """``{"running", "waiting", "queue", "stopped"}`` for the status route."""
        running = 1 if self.pending else 0
        return {"running": running, "waiting": self.pending - running, "queue": self.waiting, "stopped": self.stopped}

    def check_room(self) -> None:
        """ExplainQueueFull when an explanation arriving now would be refused: checked before the
        query is fetched from Orthanc, so a full queue costs no Orthanc request."""
        with self._count:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:  # with self._count held
        if self.pending > self.waiting:
            raise ExplainQueueFull(f"{self.waiting} explanation(s) wait already behind the running one "
                                   "(the server's ExplainQueue); try again later")

    def explain(self, query_path: Path, request: dict, label: str | None = None, deadline: Deadline | None = None) -> tuple[bytes, str]:
        """The explanation's (body, MIME type), after the explanations queued before it.

        Raises:
            ExplainQueueFull: ``waiting`` explanations wait already.
            DeadlinePassed: the deadline passed (or the caller went away) while it waited or ran.
            ExplainProcessLost: the explanation process died under it.
        """
        deadline = deadline or Deadline(float("inf"))
        with self._count:
            self._refuse_when_full()
            self.pending += 1
        try:
            while not self._turn.acquire(timeout=POLL_SECONDS):
                deadline.check("waiting for the explanations before it")
            try:
                deadline.check("before the explanation started")
                return self._run(query_path, request, label, deadline)
            finally:
                self._turn.release()
        finally:
            with self._count:
                self.pending -= 1

    def _run(self, query_path: Path, request: dict, label: str | None, deadline: Deadline) -> tuple[bytes, str]:
        try:
            # A process still starting is not killed at a deadline (the next explanation needs it).
            while not wait([self._warming], timeout=POLL_SECONDS).done:
                deadline.check("waiting for the explanation process to start")
            future = self._pool.submit(_explain, str(query_path), dict(request), label)
            while True:
                try:
                    return future.result(timeout=POLL_SECONDS)
                except TimeoutError:
                    if deadline.expired():
                        self._restart()  # the only way to stop an explanation under way
                        deadline.check("the explanation")
                        raise DeadlinePassed("stopped the explanation") from None
        except BrokenProcessPool:
            self._restart()
            raise ExplainProcessLost("the explanation process stopped (out of memory?); it is started again") from None

    def _restart(self) -> None:
        self.stopped += 1
        _stop(self._pool, grace=5.0)
        if self.scratch is not None:  # what the killed explanation left behind
            shutil.rmtree(self.scratch, ignore_errors=True)
        self._pool = self._new_pool()

    def close(self) -> None:
        """Stop the explanation process (an explanation under way is abandoned)."""
        _stop(self._pool)


def _stop(pool: ProcessPoolExecutor, grace: float = 0.0) -> None:
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:  # do not wait for a long explanation to end
        process.terminate()
    for process in processes if grace else ():
        process.join(grace)
