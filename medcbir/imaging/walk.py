"""Walk an archive folder: list files in a stable order, decode them in worker processes.

Decoding runs in a small pool of worker processes started with ``forkserver`` (safe when the
parent has threads, e.g. torch), each fed through its own pipe so the parent always knows which
file a worker is on: a worker that exceeds the per-file timeout is killed (reason
``timeout``), a worker that dies (a decoder segfault, the OOM killer) costs only its current
file (reason ``corrupt``), and in both cases a fresh worker takes over. Results are yielded in
input order; a bounded window of files in flight keeps memory flat on huge archives.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.imaging.dicom import MAX_PIXELS, read_dicom
from medcbir.imaging.items import Decoded, SkipFile, WalkReport, decoded_item
from medcbir.imaging.preprocess import Preprocessing

#: Files handed to one worker before its earlier ones come back (keeps each worker busy while
#: the parent unpickles results).
PREFETCH = 2
#: Files in flight or waiting to be yielded in order, per worker.
WINDOW_PER_WORKER = 8
MAX_AUTO_WORKERS = 8
#: A worker's first message; a worker that dies before sending it failed to start (e.g. a
#: script without ``if __name__ == "__main__":``), which is no fault of the file it was given.
READY = "ready"
STARTUP_FAILURES = 2


def auto_workers(workers: int) -> int:
    """``0`` → min(usable CPUs, 8); any other value is returned as is (``1`` = in-process)."""
    if workers < 0:
        raise ConfigError(f"workers must be ≥ 0, got {workers}")
    if workers == 0:
        return max(1, min(usable_cpus(), MAX_AUTO_WORKERS))
    return workers


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask in a container), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def list_files(root: str | Path) -> Iterator[Path]:
    """Every regular file under ``root`` in sorted path order (by path components), lazily.

    Hidden files and folders (names starting with ``.``) are ignored; symlinks to files are
    followed, symlinked folders are not (no cycles).

    Raises:
        ArchiveNotFound: ``root`` does not exist.
    """
    root = Path(os.path.abspath(root))
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise ArchiveNotFound(f"archive not found: {root}")

    def visit(folder: Path) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from visit(Path(entry.path))
                elif entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue

    yield from visit(root)


def is_dicomdir(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


@dataclass
class _Result:
    path: str
    decoded: list[Decoded] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""


def decode_file(path: str, preprocessing: Preprocessing | None, key: bytes | None, max_pixels: int = MAX_PIXELS, uri: str | None = None) -> _Result:
    """Decode one file into :class:`Decoded` items; never raises for a bad file."""
    try:
        items = read_dicom(path, key=key, uri=uri or path, max_pixels=max_pixels)
        out = [decoded_item(item, preprocessing) for item in items]
        return _Result(path, out)
    except SkipFile as exc:
        return _Result(path, reason=exc.reason, detail=exc.detail)
    except MemoryError:
        return _Result(path, reason="too-large", detail="out of memory while decoding")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. preprocessing of a degenerate image
        return _Result(path, reason="corrupt", detail=f"{exc.__class__.__name__}: {exc}")


def _worker_main(conn, preprocessing, key, max_pixels) -> None:
    """Worker loop: announce readiness, then receive (index, path), send (index, _Result)."""
    try:
        conn.send(READY)
        while True:
            task = conn.recv()
            if task is None:
                return
            index, path = task
            conn.send((index, decode_file(path, preprocessing, key, max_pixels)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        return


class _Worker:
    def __init__(self, ctx, preprocessing, key, max_pixels) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, preprocessing, key, max_pixels), daemon=True)
        self.process.start()
        child.close()  # so the parent sees EOF when the worker dies
        self.queue: collections.deque[tuple[int, str]] = collections.deque()
        self.started = time.monotonic()  # when the worker began its current (oldest) file
        self.ready = False

    def submit(self, index: int, path: str) -> None:
        if not self.queue:
            self.started = time.monotonic()
        self.queue.append((index, path))
        self.conn.send((index, path))

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
        if kill and self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=2.0 if not kill else 5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)
        self.conn.close()


class _alarm:
    """Per-file timeout for in-process decoding, via SIGALRM (main thread only).

    A caller's own SIGALRM handler and timer (e.g. pytest-timeout) are saved and restored, the
    timer re-armed with its remaining time; when the caller's alarm is due first, ours is not
    set. It interrupts Python code and blocking system calls (a FIFO, a hung network mount),
    not a C decoder that never returns to Python: that needs workers (``workers >= 2``).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = False

    def _expire(self, signum, frame):
        raise SkipFile("timeout", f"decoding took more than {self.seconds:g} s")

    def __enter__(self):
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return self
        self.old_handler = signal.getsignal(signal.SIGALRM)
        self.old_delay, self.old_interval = signal.getitimer(signal.ITIMER_REAL)
        if self.old_handler is None or (0 < self.old_delay <= self.seconds):
            return self  # a handler we cannot restore, or the caller's alarm comes first
        self.t0 = time.monotonic()
        signal.signal(signal.SIGALRM, self._expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.armed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.armed:
            return False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old_handler)
        if self.old_delay > 0:
            remaining = max(self.old_delay - (time.monotonic() - self.t0), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, self.old_interval)
        # The alarm may fire just outside decode_file (which turns it into a result): swallow it.
        return isinstance(exc, SkipFile) and exc.reason == "timeout"


def _context():
    # forkserver: workers are forked from a clean server that preloaded the decoders, so they
    # start fast and never inherit the parent's threads (torch, FAISS) or its memory.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["medcbir.imaging.walk", "pydicom.pixels"])
    return ctx


class Walk:
    """An archive walk: iterate it once for :class:`Decoded` items; ``report`` fills in as it goes.

    Create it with :func:`walk`.
    """

    def __init__(
        self,
        paths: Iterable[Path],
        *,
        preprocessing: Preprocessing | None,
        workers: int,
        key: bytes | None,
        quarantine: Path | None,
        skip_path: Callable[[Path], bool] | None,
        timeout: float,
        on_file: Callable[[str, int, str | None], None] | None,
        max_pixels: int,
        log_name: Callable[[str], str] | None = None,
    ) -> None:
        self.report = WalkReport()
        self._paths = paths
        self._preprocessing = preprocessing
        self._workers = auto_workers(workers)
        self._key = key
        self._quarantine = Path(quarantine) if quarantine is not None else None
        self._skip_path = skip_path
        self._timeout = float(timeout)
        self._on_file = on_file
        self._max_pixels = max_pixels
        self._log_name = log_name
        self._started = False
        self._pool: list[_Worker] = []

    def __iter__(self) -> Iterator[Decoded]:
        if self._started:
            raise RuntimeError("a Walk can be iterated only once")
        self._started = True
        return self._run()

    def close(self) -> None:
        """Stop the worker processes (also done when iteration ends or the walk is dropped)."""
        for worker in self._pool:
            worker.stop(kill=bool(worker.queue))
        self._pool = []

    # --- the loop --------------------------------------------------------------------------

    def _tasks(self) -> Iterator[tuple[str, _Result | None]]:
        """(path, pre-resolved result or None to decode); passed files are only counted."""
        for path in self._paths:
            path = Path(os.path.abspath(path))
            self.report.files += 1
            if self._skip_path is not None and self._skip_path(path):
                self.report.passed += 1
                continue
            if is_dicomdir(path):
                yield str(path), _Result(str(path), reason="dicomdir", detail="DICOMDIR (a directory of the media, not an image)")
            else:
                yield str(path), None

    def _run(self) -> Iterator[Decoded]:
        t0 = time.monotonic()
        log = None
        if self._quarantine is not None:
            self._quarantine.parent.mkdir(parents=True, exist_ok=True)
            log = open(self._quarantine, "a", encoding="utf-8")
        try:
            results = self._in_process() if self._workers == 1 else self._parallel()
            for result in results:
                self._account(result, log)
                self.report.elapsed_s = time.monotonic() - t0
                yield from result.decoded
        finally:
            self.close()
            if log is not None:
                log.close()
            self.report.elapsed_s = time.monotonic() - t0

    def _account(self, result: _Result, log) -> None:
        if result.reason is None:
            self.report.count_items(d.meta for d in result.decoded)
        else:
            detail = " ".join(result.detail.split())
            self.report.count_skip(result.path, result.reason, detail)
            if log is not None:
                path = self._log_name(result.path) if self._log_name is not None else result.path
                detail = detail.replace(result.path, path)
                path = path.replace("\t", "\\t").replace("\n", "\\n")
                log.write(f"{path}\t{result.reason}\t{detail}\n")
                log.flush()
        if self._on_file is not None:
            self._on_file(result.path, len(result.decoded), result.reason)

    def _in_process(self) -> Iterator[_Result]:
        for path, ready in self._tasks():
            if ready is None:
                with _alarm(self._timeout):
                    ready = decode_file(path, self._preprocessing, self._key, self._max_pixels)
                if ready is None:
                    ready = _Result(path, reason="timeout", detail=f"decoding took more than {self._timeout:g} s")
            yield ready

    def _parallel(self) -> Iterator[_Result]:
        ctx = _context()
        tasks = enumerate(self._tasks())
        retry: collections.deque[tuple[int, str]] = collections.deque()
        done: dict[int, _Result] = {}
        next_out = next_in = 0
        exhausted = False
        startup_failures = 0
        ever_ready = False
        window = WINDOW_PER_WORKER * self._workers

        def free_worker() -> _Worker | None:
            idle = [w for w in self._pool if len(w.queue) < PREFETCH]
            if idle:
                return min(idle, key=lambda w: len(w.queue))
            if len(self._pool) < self._workers:
                self._pool.append(_Worker(ctx, self._preprocessing, self._key, self._max_pixels))
                return self._pool[-1]
            return None

        def replace(worker: _Worker, reason: str, detail: str) -> None:
            # The oldest file is the one that hung or crashed; the rest go back to the queue.
            # A worker that never started blames no file.
            if worker.ready:
                index, path = worker.queue.popleft()
                done[index] = _Result(path, reason=reason, detail=detail)
            retry.extendleft(reversed(worker.queue))
            worker.queue.clear()
            worker.stop(kill=True)
            self._pool.remove(worker)

        def submit(worker: _Worker, index: int, path: str) -> None:
            try:
                worker.submit(index, path)
            except (OSError, ValueError):  # the worker is gone (killed while idle, OOM killer)
                if len(worker.queue) == 1:  # it was idle: this file is not to blame
                    worker.queue.clear()
                    retry.appendleft((index, path))
                    worker.stop(kill=True)
                    self._pool.remove(worker)
                else:
                    replace(worker, "corrupt", "decoder process died")

        while True:
            if startup_failures >= STARTUP_FAILURES and not ever_ready:
                warnings.warn("decoder worker processes fail to start; decoding in this process instead", RuntimeWarning, stacklevel=3)
                for worker in list(self._pool):
                    retry.extend(worker.queue)
                    worker.queue.clear()
                    worker.stop(kill=True)
                self._pool.clear()
                for index, path in sorted(retry):
                    done[index] = decode_file(path, self._preprocessing, self._key, self._max_pixels)
                retry.clear()
                for index, (path, ready) in tasks:
                    done[index] = ready or decode_file(path, self._preprocessing, self._key, self._max_pixels)
                    while next_out in done:
                        yield done.pop(next_out)
                        next_out += 1
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                return
            # 1. hand out work: retries first (already numbered), then new files
            while True:
                if retry:
                    worker = free_worker()
                    if worker is None:
                        break
                    submit(worker, *retry.popleft())
                    continue
                if exhausted or next_in - next_out >= window:
                    break
                worker = free_worker()
                if worker is None:
                    break
                try:
                    index, (path, ready) = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                next_in = index + 1
                if ready is not None:
                    done[index] = ready
                else:
                    submit(worker, index, path)
            # 2. yield everything that is ready, in order
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            busy = [w for w in self._pool if w.queue]
            if not busy:
                if exhausted and not retry and next_out >= next_in:
                    return
                continue
            # 3. wait for results, deaths or the earliest deadline
            now = time.monotonic()
            deadline = min(w.started for w in busy) + self._timeout
            ready_objs = wait([w.conn for w in busy], timeout=max(0.0, deadline - now))
            for worker in busy:
                if worker.conn not in ready_objs:
                    continue
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=1.0)
                    code = worker.process.exitcode
                    startup_failures += 0 if worker.ready else 1
                    replace(worker, "corrupt", f"decoder process died (exit code {code})")
                    continue
                except Exception as exc:  # noqa: BLE001 - an unpicklable result
                    replace(worker, "corrupt", f"bad result from decoder: {exc.__class__.__name__}")
                    continue
                if message == READY:
                    worker.ready = ever_ready = True
                    worker.started = time.monotonic()
                    continue
                index, result = message
                expected, _ = worker.queue.popleft()
                assert expected == index, (expected, index)
                done[index] = result
                worker.started = time.monotonic()
            now = time.monotonic()
            for worker in [w for w in self._pool if w.queue and now - w.started > self._timeout]:
                replace(worker, "timeout", f"decoding took more than {self._timeout:g} s")


def walk(
    archive: str | Path | Iterable[Path],
    *,
    preprocessing: Preprocessing | None = None,
    workers: int = 0,
    key: bytes | None = None,
    quarantine: Path | None = None,
    skip_path: Callable[[Path], bool] | None = None,
    timeout: float = 30.0,
    on_file: Callable[[str, int, str | None], None] | None = None,
    max_pixels: int = MAX_PIXELS,
    log_name: Callable[[str], str] | None = None,
) -> Walk:
    """Walk an archive, decoding every file into items; bad files are skipped with a reason.

    Args:
        archive: a folder (walked recursively in sorted path order, any file names), one file,
            or an iterable of paths (decoded in the given order).
        preprocessing: when given, each ``Decoded.image`` is ``preprocessing.apply(item)``
            (C×S×S in [0, 1]); otherwise the item's pixels in modality units.
        workers: decoding processes; 0 = min(cpu_count, 8); 1 = in the calling process (the
            timeout then only applies in the main thread and cannot stop a stuck C decoder).
        key: the archive's pseudonym key.
        quarantine: append ``path<TAB>reason<TAB>detail`` for every skipped file to this log.
        skip_path: predicate evaluated in this process before dispatch; True = do not decode
            (counted in ``report.passed``), e.g. files already indexed.
        timeout: seconds one file may take in a worker before it is killed (reason ``timeout``).
        on_file: called as ``on_file(path, n_items, reason)`` after each file, in order.
        max_pixels: skip files with more pixels than this as ``too-large`` before decoding.
        log_name: how a path is written in the quarantine log (default: the path itself), e.g.
            :meth:`medcbir.imaging.source_seal.SourceSeal.seal` so the log names no patient.

    Returns:
        A :class:`Walk`: iterate it once for :class:`Decoded` items; ``walk.report`` has the counts.

    Raises:
        ArchiveNotFound: the folder or file does not exist (raised here, not during iteration).

    Example:
        >>> w = walk("archive/", preprocessing=Preprocessing(size=128), workers=2)
        >>> for meta, image in w: ...
        >>> w.report.skipped
        {'not-dicom': 2}
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be > 0, got {timeout}")
    if isinstance(archive, (str, Path)):
        root = Path(archive)
        if not root.exists():
            raise ArchiveNotFound(f"archive not found: {root}")
        paths: Iterable[Path] = list_files(root)
    else:
        paths = archive
    return Walk(
        paths,
        preprocessing=preprocessing,
        workers=workers,
        key=key,
        quarantine=quarantine,
        skip_path=skip_path,
        timeout=timeout,
        on_file=on_file,
        max_pixels=max_pixels,
        log_name=log_name,
    )


__all__ = ["Walk", "walk", "list_files", "auto_workers", "decode_file"]
