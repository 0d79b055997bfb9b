"""The durable queue of Orthanc instances waiting to be indexed (SQLite, in the index folder).

The plugin's change callback appends instance ids (one short transaction, so the callback
returns fast); the worker claims batches, and deletes them once their items are committed to
the index. Because the queue survives a restart and the worker re-checks the index before
adding (``IndexWriter.has_source``), an instance is never lost and never indexed twice:

- ``queued``     waiting for the worker;
- ``in_flight``  claimed by the worker, not yet committed (re-queued when the worker restarts);
- skipped instances (no pixels, undecodable, ...) move to the ``skipped`` table with a reason;
- resources deleted in Orthanc (instances, series, studies, patients) wait in the ``deleted``
  table until the worker has tombstoned their items.

Standard library only: the plugin imports it inside Orthanc's embedded interpreter.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    instance TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'queued',
    enqueued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_state ON queue(state, enqueued);
CREATE TABLE IF NOT EXISTS deleted (
    resource TEXT PRIMARY KEY,
    level TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    instance TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
"""


class InstanceQueue:
    """A small SQLite queue shared by the plugin (producer) and the worker (consumer).

    Args:
        path: the SQLite file (``INDEX/orthanc-queue.sqlite``).
        timeout: seconds to wait for the other process's write lock.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None)
        # WAL: the plugin's inserts never wait for the worker's reads; NORMAL sync is still
        # durable across an Orthanc crash (only a power loss can drop the last transactions,
        # and the start-up reconciliation with Orthanc's /instances re-queues those).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, rows) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return cur.rowcount

    def enqueue(self, instances) -> int:
        """Queue instance ids (already queued, in flight or skipped ones are left alone)."""
        now = time.time()
        rows = [(i, now) for i in instances]
        if not rows:
            return 0
        return self._write(
            "INSERT OR IGNORE INTO queue(instance, enqueued) "
            "SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM skipped WHERE instance = ?1)",
            rows,
        )

    def claim(self, limit: int) -> list[str]:
        """Mark up to ``limit`` of the oldest queued ids in flight and return them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in self._db.execute(
                    "SELECT instance FROM queue WHERE state = 'queued' ORDER BY enqueued, rowid LIMIT ?", (limit,))]
                self._db.executemany(
                    "UPDATE queue SET state = 'in_flight', attempts = attempts + 1 WHERE instance = ?",
                    [(i,) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def release(self, instances) -> int:
        """Put claimed ids back in the queue (a transient failure: Orthanc busy or stopping)."""
        return self._write("UPDATE queue SET state = 'queued' WHERE instance = ?", [(i,) for i in instances])

    def done(self, instances) -> int:
        """Forget ids whose items are committed to the index."""
        return self._write("DELETE FROM queue WHERE instance = ?", [(i,) for i in instances])

    def skip(self, instance: str, reason: str, detail: str = "") -> None:
        """Move an id to the skipped table with its reason (e.g. ``no-pixel-data``)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM queue WHERE instance = ?", (instance,))
                self._db.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)",
                                 (instance, reason, detail[:500], time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mark_deleted(self, level: str, resource: str) -> None:
        """Record that Orthanc deleted a resource; a deleted instance leaves the queue too."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO deleted VALUES (?, ?, ?)", (resource, level, time.time()))
                if level == "instance":
                    self._db.execute("DELETE FROM queue WHERE instance = ?", (resource,))
                    self._db.execute("DELETE FROM skipped WHERE instance = ?", (resource,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def deleted(self, limit: int = 10000) -> list[tuple[str, str]]:
        """``(resource, level)`` of the oldest deletions not yet applied to the index."""
        with self._lock:
            return [(r, lvl) for r, lvl in self._db.execute(
                "SELECT resource, level FROM deleted ORDER BY at LIMIT ?", (limit,))]

    def forget_deleted(self, resources) -> int:
        """Drop deletions whose items are tombstoned."""
        return self._write("DELETE FROM deleted WHERE resource = ?", [(r,) for r in resources])

    def requeue_in_flight(self) -> int:
        """Put back ids a previous worker claimed but never committed."""
        return self._write("UPDATE queue SET state = 'queued' WHERE state = ?", [("in_flight",)])

    def clear_skipped(self) -> list[str]:
        """Forget skip decisions (for a re-index); returns the ids that were skipped."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT instance FROM skipped")]
            self._db.execute("DELETE FROM skipped")
        return ids

    def counts(self) -> dict:
        """``{"queued": n, "in_flight": n, "skipped": {reason: n}}``."""
        with self._lock:
            states = dict(self._db.execute("SELECT state, COUNT(*) FROM queue GROUP BY state").fetchall())
            reasons = dict(self._db.execute("SELECT reason, COUNT(*) FROM skipped GROUP BY reason").fetchall())
        return {"queued": states.get("queued", 0), "in_flight": states.get("in_flight", 0), "skipped": reasons}

    def skipped_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT instance FROM skipped")}

    def queued_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT instance FROM queue")}

    def skipped(self, limit: int = 50) -> list[dict]:
        """The most recent skips, for the status route."""
        with self._lock:
            rows = self._db.execute(
                "SELECT instance, reason, detail FROM skipped ORDER BY at DESC LIMIT ?", (limit,)).fetchall()
        return [{"instance": i, "reason": r, "detail": d} for i, r, d in rows]
