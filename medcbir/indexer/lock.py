"""One commit at a time: an exclusive ``flock`` on ``INDEX/writer.lock`` holding the holder's pid.

Writers hold it only around a commit (``wait=True``: they queue for it), so several processes
(the Orthanc plugin and a CLI ``medcbir index`` run) add to one index; maintenance (delete,
compact, retrain, repair) takes it the same way for its commit.

The kernel drops a ``flock`` when its process dies, so the lock of a killed writer (kill -9,
power cut) is stale by construction and the next writer simply takes it over; the pid in the
file only makes the "busy" message useful.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from medcbir.errors import MedcbirError

LOCK_FILE = "writer.lock"


class IndexBusy(MedcbirError):
    """Another live process is writing this index."""


class WriterLock:
    """Exclusive writer lock of an index folder.

    Args:
        index_dir: the index folder (created if missing).
        wait: queue for the lock instead of failing at once.
        timeout: seconds to wait at most (``wait=True``).

    Raises:
        IndexBusy: another live process holds the lock (and kept it past ``timeout``).
    """

    def __init__(self, index_dir: str | Path, wait: bool = False, timeout: float = 600.0) -> None:
        self.path = Path(index_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait and time.monotonic() < deadline:
                    time.sleep(delay)  # polled, not blocking: a timeout without signals
                    delay = min(delay * 2, 0.05)
                    continue
                holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(self._fd)
                self._fd = None
                raise IndexBusy(f"index {index_dir} is being written by another process (pid {holder}); wait for it to finish") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
