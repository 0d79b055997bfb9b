"""The plugin worker's indexing: every image Orthanc holds, fetched, decoded and committed once.

:class:`Ingest` is the indexing half of :class:`medcbir.pacs.worker.Worker`:

1. opens the index's :class:`~medcbir.indexer.IndexWriter` (a new index stores regions unless the
   ``"Regions"`` setting is false; an existing one keeps its own choice);
2. reconciles: every instance Orthanc holds that the index does not (source
   ``orthanc://<instance-id>``) and that was not skipped is queued, and instances a previous
   worker claimed but never committed are re-queued, so a restart loses and duplicates nothing;
   items of instances Orthanc no longer holds are tombstoned;
3. loops: claims queued ids, fetches ``/instances/{id}/file``, decodes with
   :func:`medcbir.imaging.decode_bytes`, and adds/commits through the writer every ``BatchSize``
   items, or when the oldest waiting item is ``FlushSeconds`` old (the normal manifest commit,
   same crash safety). A transient fetch failure puts the id back in the queue.
"""

from __future__ import annotations

import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medcbir.device import Device
from medcbir.errors import MedcbirError
from medcbir.imaging import decode_bytes
from medcbir.imaging.items import SkipFile
from medcbir.indexer import IndexBusy, IndexWriter
from medcbir.pacs.orthanc_config import instance_of, instance_uri

POLL_SECONDS = 0.2
RETRY = "retry"  # a transient fetch failure: the id goes back to the queue, not to the skips


def log(message: str) -> None:
    print(f"medcbir worker: {message}", file=sys.stderr, flush=True)


class Ingest:
    """Indexing loop of the worker (a mixin of :class:`medcbir.pacs.worker.Worker`, which holds the
    state it uses: ``settings``, ``rest``, ``index``, ``queue``, ``stop``, ``writer``,
    ``_writer_lock``, ``_reindex``, ``maintenance``, ``state``/``error``, ``indexed``/``items``,
    ``encoder_info``)."""

    def open_writer(self) -> None:
        device = Device.auto(prefer=None if self.settings.device == "auto" else self.settings.device)
        deadline = time.monotonic() + 60.0
        while True:
            try:
                # A new index stores regions (region search) unless "Regions" is false; an existing
                # one keeps its own choice.
                new = not (Path(self.index) / "manifest.json").is_file()
                self.writer = IndexWriter.open(self.index, self.settings.encoder, shard_size=self.settings.shard_size, device=device,
                                               regions=self.settings.regions if new else None)
                break
            except IndexBusy:
                # A previous worker (an Orthanc restart) may still be finishing its last commit.
                if time.monotonic() > deadline or self.stop.is_set():
                    raise
                time.sleep(0.5)
        encoder = getattr(self.writer, "encoder", None)
        preprocessing = getattr(encoder, "preprocessing", None)
        if self.settings.window and preprocessing is not None and list(preprocessing.windows) != list(self.settings.window):
            self.writer.abort()
            raise MedcbirError(
                f'"Window" {self.settings.window} differs from the encoder\'s windows {list(preprocessing.windows)}'
                " (preprocessing is part of the model)")
        self.encoder_info = {
            "source": self.settings.encoder,
            "fingerprint": getattr(encoder, "fingerprint", None),
            "dim": getattr(encoder, "dim", None),
            "preprocessing": preprocessing.to_dict() if preprocessing is not None else None,
        }

    def reconcile(self) -> int:
        """Queue every Orthanc instance the index lacks, tombstone the items of instances
        Orthanc no longer holds (deleted while no worker ran); returns how many were queued."""
        self.queue.requeue_in_flight()
        skipped = self.queue.skipped_ids()
        missing = []
        indexed = 0
        held = self.rest.instances()
        self.prune(held)
        for instance in held:
            if self.writer.has_source(instance_uri(instance)):
                indexed += 1
            elif instance not in skipped:
                missing.append(instance)
        self.indexed = indexed
        queued = self.queue.enqueue(missing)
        log(f"reconciled: {indexed} indexed, {len(missing)} to index ({queued} newly queued), {len(skipped)} skipped")
        return queued

    def _fetch_decode(self, instance: str):
        """(instance, decoded items or None, skip reason, detail) for one queued id."""
        uri = instance_uri(instance)
        if self.writer.has_source(uri):
            return instance, [], "already-indexed", ""
        try:
            data = self.rest.instance_file(instance)
        except Exception as exc:  # noqa: BLE001 - Orthanc busy or stopping: retried, never skipped
            return instance, None, RETRY, f"{exc.__class__.__name__}: {exc}"
        if data is None:
            return instance, None, "gone", "Orthanc no longer has this instance"
        try:
            decoded = decode_bytes(data, uri, self.writer.key, self.writer.decode_preprocessing,
                                   max_bytes=self.settings.max_decode_bytes)
        except SkipFile as exc:
            return instance, None, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the worker
            return instance, None, "corrupt", f"{exc.__class__.__name__}: {exc}"
        if not decoded:
            return instance, None, "no-pixel-data", "no image frames"
        return instance, decoded, "", ""

    def run(self) -> None:
        """Open the index writer, reconcile, then index until asked to stop."""
        try:
            self.open_writer()
            self.wait_for_orthanc()
            self.reconcile()
        except Exception as exc:  # noqa: BLE001 - reported through /medcbir/status
            self.state, self.error = "failed", f"{exc.__class__.__name__}: {exc}"
            log(self.error)
            traceback.print_exc()
            self.stop.wait()
            return
        self.state = "running"
        pending: list = []           # decoded items waiting for a commit
        pending_ids: list[str] = []  # their instances (removed from the queue after the commit)
        oldest = time.monotonic()  # arrival of the oldest pending item
        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="fetch") as pool:
            while not self.stop.is_set():
                if self._reindex.is_set():
                    self._reindex.clear()
                    self.reconcile()
                if not pending:  # deletions apply to committed items: commit what waits first
                    self.apply_deletions()
                room = max(1, self.settings.batch_size - len(pending))
                claimed = self.queue.claim(room)
                retry = []
                for instance, decoded, reason, detail in pool.map(self._fetch_decode, claimed):
                    if reason == RETRY:
                        retry.append(instance)
                    elif decoded is None:
                        self.queue.skip(instance, reason, detail)
                        log(f"skipped {instance}: {reason} {detail}")
                    elif not decoded:  # committed by an earlier worker that died before done()
                        self.queue.done([instance])
                    else:
                        if not pending:
                            oldest = time.monotonic()
                        pending.extend(decoded)
                        pending_ids.append(instance)
                if retry:
                    self.queue.release(retry)
                    log(f"{len(retry)} instance(s) could not be fetched; retrying")
                    self.stop.wait(1.0)
                # FlushSeconds bounds how long an arrived image waits before it is searchable.
                flush_due = pending and time.monotonic() - oldest >= self.settings.flush_seconds
                if pending and (len(pending) >= self.settings.batch_size or flush_due or self.stop.is_set()):
                    self.commit(pending, pending_ids)
                    pending, pending_ids = [], []
                elif not claimed:
                    self.stop.wait(POLL_SECONDS)
        # Items added but not committed are simply re-queued by the next worker's reconcile.

    def prune(self, held: list[str] | None = None) -> int:
        """Tombstone the items of every ``orthanc://`` source Orthanc no longer holds."""
        held_sources = {instance_uri(i) for i in (self.rest.instances() if held is None else held)}
        with self._writer_lock:
            gone = {s for s in self.writer.committed_sources() if instance_of(s) is not None and s not in held_sources}
            removed = self.writer.delete_sources(gone)
        if removed:
            self.indexed = max(0, self.indexed - self.writer.deleted_sources)
            log(f"tombstoned {removed} item(s) of {len(gone)} instance(s) Orthanc no longer holds")
        return removed

    def apply_deletions(self) -> int:
        """Tombstone the items of the resources Orthanc reported deleted; returns how many."""
        deleted = self.queue.deleted()
        if not deleted:
            return 0
        instances = {instance_uri(r) for r, level in deleted if level == "instance"}
        with self._writer_lock:
            removed = self.writer.delete_sources(instances)
        if removed:
            self.indexed = max(0, self.indexed - self.writer.deleted_sources)
            log(f"tombstoned {removed} item(s) of {len(instances)} deleted instance(s)")
        if any(level != "instance" for _, level in deleted):
            # A series/study/patient: its instances may or may not be reported one by one.
            removed += self.prune()
        self.queue.forget_deleted([r for r, _ in deleted])
        return removed

    def commit(self, decoded: list, instances: list[str]) -> None:
        with self._writer_lock:
            self.writer.add(decoded)
            self.writer.commit()
        self.queue.done(instances)
        self.indexed += len(instances)
        self.items += len(decoded)
        self.maintenance.poke()  # compaction / retraining when due, on its own thread

    def wait_for_orthanc(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.rest.alive():
            if time.monotonic() > deadline or self.stop.is_set():
                raise MedcbirError(f"Orthanc's REST API at {self.rest.url} does not answer")
            time.sleep(0.2)
