"""What an indexing job did (:func:`medcbir.indexer.index_archive`, in this process or on Ray)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class IndexSummary:
    """What an indexing job did.

    Attributes:
        indexed: items embedded and committed by this run.
        skipped: reason → files skipped (undecodable, not DICOM, ...; see quarantine.log).
        already_present: items or files already in the index (not decoded again when the
            whole file was committed).
        shards: shards committed by this run.
        total_items: items in the index afterwards (tombstoned included).
        elapsed: wall seconds.
        items_per_s: indexed / elapsed.
        files: files seen by the source.
        index_spec: FAISS spec in use afterwards.
        live_items: items in the index afterwards that searches can return.
        gone_sources, gone_items: sources of this archive whose file (instance) is gone, and
            their items, tombstoned by this run (:mod:`medcbir.indexer.follow`).
        changed_sources, changed_items: files changed since they were indexed, and their
            former items, tombstoned by this run (the files are embedded again).
        unknown_sources: live sources of this archive without a recorded size/mtime.
        dropped_items: items a repair had dropped with a damaged shard (0: none pending).
        reembedded: of those, the items this run embedded again from their sources.
        dropped_unknown: of the dropped items, those whose keys the damage made unreadable
            (embedded again too when their files are there, but counted in ``indexed`` only).
    """

    indexed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    already_present: int = 0
    shards: int = 0
    total_items: int = 0
    elapsed: float = 0.0
    items_per_s: float = 0.0
    files: int = 0
    index_spec: str = ""
    live_items: int = 0
    gone_sources: int = 0
    gone_items: int = 0
    changed_sources: int = 0
    changed_items: int = 0
    unknown_sources: int = 0
    dropped_items: int = 0
    reembedded: int = 0
    dropped_unknown: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def finish(self, writer, start: float) -> "IndexSummary":
        """Fill in what the closed ``writer`` knows and the rates since ``start`` (perf_counter)."""
        self.shards = writer.shards_written
        self.total_items = writer.items
        deleted = writer.manifest.get("deleted") or []
        self.live_items = writer.items - (int(deleted["count"]) if isinstance(deleted, dict) else len(deleted))
        self.index_spec = writer.manifest["index_spec"]
        self.elapsed = time.perf_counter() - start
        self.items_per_s = self.indexed / self.elapsed if self.elapsed > 0 else 0.0
        return self
