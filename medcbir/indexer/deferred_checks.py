"""Shard checksums finished after open: no answer before its shard's hash matched.

Opening with ``verify="checksums"`` hashes every committed file. FAISS files, trained
parameters, persisted lists and tombstones are hashed before anything parses them; shards
(HDF5) and their code files are hashed in background threads while the index loads, and the
open waits for them. That wait is the whole open time of a large index: at ten million items
the float16 shards are tens of gigabytes, more than the page cache of the machine holds, and
reading them from disk takes longer than the time a search service may take to start.

Above :data:`DEFER_BYTES` of shard files the open does not wait. One background thread goes on
hashing the shards in order, and the store keeps the promise per answer instead of per open:

- :meth:`DeferredChecks.ensure` is called with the shards an answer comes from (the engine calls
  it with the rows of its hits before it returns them). A shard not hashed yet is hashed there
  and then, in the caller's thread; one being hashed is waited for. No hit, score or metadata row of a shard whose
  checksum has not matched reaches a caller.
- A mismatch, found by a query or by the background thread, fails that call and every later
  one with :class:`~medcbir.errors.IndexCorrupt` naming the file: the index is damaged, and
  ``medcbir verify --repair`` is the way out, exactly as when the open itself fails.

What it does not cover: while the background thread is still going, the exact re-rank may read
a candidate's row from a shard not yet hashed. A damaged row can then only change the order of
candidates (a damaged candidate that would have ranked in is caught when it does); it cannot
put unchecked data into an answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from medcbir.errors import IndexCorrupt

#: shard bytes (HDF5 shards and their code files) above which the open does not wait for their
#: checksums (they finish in the background, each checked before an answer uses it)
DEFER_BYTES = 2 << 30

_PENDING, _RUNNING, _OK, _BAD = range(4)


class DeferredChecks:
    """Background hashing of shard files, each file checked at the latest when an answer needs
    its shard.

    Args:
        index_dir: the index folder.
        files: ``(shard number, file name, expected digest, kind, hasher)`` of each file, in the
            order the background thread hashes them (``kind`` names the checksum in errors).
        mismatch: builds the error text of a file whose digest differs.
    """

    def __init__(self, index_dir: Path, files: list[tuple[int, str, str, str, object]], mismatch) -> None:
        self.index_dir = Path(index_dir)
        self._files = files
        self._mismatch = mismatch
        self._state = [_PENDING] * len(files)
        self._done = [threading.Event() for _ in files]
        self._by_shard: dict[int, list[int]] = {}
        for i, (shard, *_rest) in enumerate(files):
            self._by_shard.setdefault(int(shard), []).append(i)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.failure: IndexCorrupt | None = None
        self._thread = threading.Thread(target=self._run, name="medcbir-shard-checks", daemon=True)

    def start(self) -> "DeferredChecks":
        """Start the background thread (the opener calls it once its own reads are done: the
        thread's disk reads would slow them)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    # ------------------------------------------------------------------ state
    @property
    def files(self) -> int:
        return len(self._files)

    @property
    def checked(self) -> int:
        """Files whose checksum matched so far."""
        with self._lock:
            return sum(1 for s in self._state if s == _OK)

    @property
    def done(self) -> bool:
        """Every file hashed (matched or not)."""
        return all(e.is_set() for e in self._done)

    # ------------------------------------------------------------------ checking
    def _claim(self, i: int) -> bool:
        with self._lock:
            if self._state[i] != _PENDING:
                return False
            self._state[i] = _RUNNING
            return True

    def _hash(self, i: int) -> None:
        _shard, name, expected, kind, hasher = self._files[i]
        try:
            digest = hasher(self.index_dir / name)
        except OSError as exc:
            digest, error = None, IndexCorrupt(f"{name}: cannot be read to check its checksum ({exc})")
        else:
            error = None if digest == expected else IndexCorrupt(self._mismatch(name, digest, expected, kind))
        with self._lock:
            self._state[i] = _OK if error is None else _BAD
            if error is not None and self.failure is None:
                self.failure = error
        self._done[i].set()

    def _run(self) -> None:
        for i in range(len(self._files)):
            if self._stop.is_set() or self.failure is not None:
                break
            if self._claim(i):
                self._hash(i)

    def ensure(self, shards: Iterable[int]) -> None:
        """Return once every file of ``shards`` has matched its checksum (hashing the ones not
        started yet in this thread).

        Raises:
            IndexCorrupt: a file of the index (of these shards or, found earlier, any other) differs.
        """
        if self.failure is not None:
            raise self.failure
        for shard in set(int(s) for s in shards):
            for i in self._by_shard.get(shard, ()):
                if self._claim(i):
                    self._hash(i)
                else:
                    self._done[i].wait()
        if self.failure is not None:
            raise self.failure

    def wait(self) -> None:
        """Check every file (the open's full promise, late).

        Raises:
            IndexCorrupt: naming the first damaged file found.
        """
        self.ensure(self._by_shard)

    def close(self) -> None:
        """Stop the background thread after the file it is hashing."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():  # never started: not alive
            self._thread.join()
