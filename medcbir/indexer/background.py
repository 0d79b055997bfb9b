"""Maintenance when due, in the background: compaction and retraining for a growing index.

:func:`run_due` checks the committed manifest and runs what is due (compaction first: it
shrinks what retraining then encodes). :class:`BackgroundMaintenance` runs it on a daemon
thread, one job at a time, for long-lived writers (the Orthanc plugin): both jobs work on a
snapshot without the writer lock and commit atomically, so indexing and searching go on.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from medcbir.indexer.compaction import compact, compaction_due
from medcbir.indexer.manifest import read_manifest
from medcbir.indexer.retrain import RETRAIN_FACTOR, retrain, retrain_due

log = logging.getLogger(__name__)


def run_due(index_dir: str | Path, retrain_factor: float = RETRAIN_FACTOR) -> dict:
    """Compact and/or retrain ``index_dir`` if due; ``{"compact": ..., "retrain": ...}`` of what ran."""
    index_dir = Path(index_dir)
    done: dict = {}
    manifest = read_manifest(index_dir)
    if compaction_due(manifest):
        done["compact"] = compact(index_dir, force=False)
        manifest = read_manifest(index_dir)
    reason = retrain_due(index_dir, manifest, factor=retrain_factor)
    if reason:
        done["retrain"] = retrain(index_dir, reason=reason)
    return done


class BackgroundMaintenance:
    """Runs :func:`run_due` on a daemon thread after :meth:`poke`, never two at once.

    Args:
        index_dir: the index folder.
        on_done: called with the result dict of each run (e.g. a log line).
    """

    def __init__(self, index_dir: str | Path, on_done=None) -> None:
        self.index_dir = Path(index_dir)
        self.on_done = on_done
        self._thread: threading.Thread | None = None
        self.last: dict | None = None
        self.error: str = ""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poke(self) -> bool:
        """Start a check-and-run unless one is running; True when one was started."""
        if self.running:
            return False
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        try:
            self.last = run_due(self.index_dir)
            if self.last and self.on_done:
                self.on_done(self.last)
        except Exception as exc:  # noqa: BLE001 - the index stays as committed; retried next poke
            self.error = f"{exc.__class__.__name__}: {exc}"
            log.warning("background maintenance of %s failed: %s", self.index_dir, self.error)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
