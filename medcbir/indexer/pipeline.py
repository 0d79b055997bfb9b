"""``index_archive``: the whole indexing job, decoding overlapped with embedding.

The source decodes in its worker processes; a prefetch thread pulls decoded items and
stacks them into batches into a bounded queue, so the encoder (in the calling thread; torch
releases the GIL) always has the next batch ready when decoding is faster than embedding.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medcbir.indexer import follow, quarantine
from medcbir.indexer.manifest import history, manifest_path
from medcbir.indexer.summary import IndexSummary
from medcbir.indexer.writer import IndexWriter
from medcbir.imaging import FolderSource
from medcbir.indexer.ray_index import index_archive_ray
from medcbir.imaging import list_files

_DONE = object()


def as_source(archive: Any, workers: int = 0, quarantine: Path | None = None):
    """A path → :class:`medcbir.imaging.FolderSource`; a Source object is returned as is."""
    if isinstance(archive, (str, Path)):

        return FolderSource(archive, workers=workers, quarantine=quarantine)
    return archive


def prefetch(items: Iterator, batch_size: int, depth: int = 4) -> Iterator[list]:
    """Batches of ``items`` produced by a background thread through a bounded queue.

    Exceptions of the producer are re-raised in the consumer. When the consumer stops early
    (error, Ctrl-C) the producer stops at its next item and closes ``items`` (which stops the
    source's decoding workers).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            batch = []
            for item in items:
                if stop.is_set():
                    return
                batch.append(item)
                if len(batch) >= batch_size:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort
                    pass

    thread = threading.Thread(target=produce, name="medcbir-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        thread.join(timeout=10)


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", file=sys.stderr, dynamic_ncols=True, desc="indexing", smoothing=0.1)


def index_archive(
    source: Any,
    index_dir: str | Path,
    encoder: Any = "default",
    *,
    shard_size: int = 4096,
    index_spec: str = "auto",
    workers: int = 0,
    device=None,
    progress: bool = True,
    batch_size: int = 64,
    key_file: str | Path | None = None,
    target_recall: float | None = None,
    ray: Any = None,
    ray_workers: int = 1,
    gpus_per_worker: float | None = None,
    regions: bool | None = None,
    regions_per_image: int | None = None,
    memory_budget: float | str | None = None,
    shard_dtype: str | None = None,
) -> IndexSummary:
    """Embed every item of an archive into an index; resumable and idempotent.

    Args:
        source: an archive folder/file path, or any :class:`medcbir.imaging.Source`.
        index_dir: the index folder (created or resumed).
        encoder: an Encoder, a checkpoint/ONNX path, or ``"default"``.
        shard_size: items per shard.
        index_spec: ``"auto"`` or a FAISS factory string.
        target_recall: recall@10 the index must reach on its own items (default 0.95).
        workers: decoding processes for a folder (0 = auto).
        device: the :class:`~medcbir.device.Device`.
        progress: show a progress bar (items/s, ETA) on stderr.
        batch_size: images per encoder forward.
        key_file: pseudonym key file (default ``INDEX/pseudonym.key``).
        ray: None = this process; ``True``/``"local"`` (a local Ray runtime) or a Ray cluster
            address = :func:`medcbir.indexer.ray_index.index_archive_ray` (same index).
        ray_workers: embedding actors (with ``ray``).
        gpus_per_worker: GPUs per actor (with ``ray``; None = 1 if the cluster has GPUs).
        regions: store each item's regions for region search (None: on for a new index, the
            index's own choice otherwise; False = ``--no-regions``).
        regions_per_image: regions kept per item of a new index.
        memory_budget: bytes of RAM per item for search (``--memory-budget``): ``auto`` then
            chooses among the chains that fit (:mod:`medcbir.indexer.compression`).
        shard_dtype: ``float32``, ``float16``, ``sq8``, ``sq6``, ``tc4``, ``tc6``, ``tc8`` or ``auto``
            (``--shard-dtype``; see ``IndexWriter.open``).

    Returns:
        the job's :class:`IndexSummary`.
    """
    if regions is None and not (manifest_path(Path(index_dir)).is_file() or (Path(index_dir).is_dir() and history(Path(index_dir)))):
        regions = True  # regions are on by default for a new index built from images
    if ray is not None and ray is not False:

        return index_archive_ray(source, index_dir, encoder, ray=ray, workers=ray_workers, gpus_per_worker=gpus_per_worker,
                                 shard_size=shard_size, index_spec=index_spec, device=device, progress=progress,
                                 batch_size=batch_size, key_file=key_file, target_recall=target_recall, regions=regions,
                                 regions_per_image=regions_per_image, memory_budget=memory_budget, shard_dtype=shard_dtype)
    start = time.perf_counter()
    index_dir = Path(index_dir)
    src = as_source(source, workers=workers, quarantine=index_dir / quarantine.LOG)
    summary = IndexSummary()
    writer = IndexWriter.open(index_dir, encoder, index_spec=index_spec, shard_size=shard_size, key_file=key_file, device=device,
                              target_recall=target_recall, regions=regions, regions_per_image=regions_per_image,
                              memory_budget=memory_budget, shard_dtype=shard_dtype)
    writer.batch_size = batch_size
    log_start = quarantine.mark(index_dir)
    listing, complete, bar = None, False, None
    try:
        listing, current = follow.follow_sources(src, writer, summary)
        bar = _progress(progress, len(current) if listing is not None else _count_hint(src))
        for batch in prefetch(_recorded(src, writer, current), batch_size):
            added = writer.add(batch)
            summary.indexed += added
            summary.already_present += len(batch) - added
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            # the total was a guess from the files listed (skipped files, non-image files and
            # multi-frame files do not count one item each): the finished run is 100 %
            bar.total = bar.n
            bar.refresh()
        writer.close()
        summary.dropped_items, summary.reembedded, summary.dropped_unknown = writer.settle_dropped()
        complete = True
        if listing is not None and not getattr(src, "quarantine", None):  # a network source logs nothing itself
            quarantine.append(index_dir, [quarantine.Entry(*q) for q in getattr(src.report, "quarantined", [])])
    except BaseException:
        # Keep what is committed; the buffer may end mid-source, so it is not committed.
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        quarantine.settle(index_dir, log_start, listing.owns if complete and listing is not None else None)
    report = getattr(src, "report", None)
    if report is not None:
        summary.skipped = dict(getattr(report, "skipped", {}) or {})
        summary.already_present += int(getattr(report, "passed", 0) or 0)
        summary.files = int(getattr(report, "files", 0) or 0)
    return summary.finish(writer, start)


def _recorded(src: Any, writer, current: dict) -> Iterator:
    """The source's decoded items, as the index records them.

    A folder's files are recorded relative to the index's archive root and sealed with the
    archive key (:mod:`medcbir.imaging.source_seal`): folder names often carry the PatientID.
    The size and mtime of each file to decode (``current``, listed before decoding) go into
    its shard, so the next run notices a change.
    """

    preprocessing, key = writer.decode_preprocessing, writer.key
    if not isinstance(src, FolderSource) or key is None:
        return src.decoded(preprocessing, key, writer.has_source)
    from dataclasses import replace

    seal = writer.archive_seal(src.root)
    src.log_name = seal.seal

    def skip(path) -> bool:
        recorded = seal.seal(path)
        if writer.has_source(recorded):
            return True
        state = current.get(recorded) or follow.file_state(path)
        if state is not None:
            writer.note_source(recorded, *state)
        return False

    def sealed() -> Iterator:
        for d in src.decoded(preprocessing, key, skip):
            d.meta = replace(d.meta, source=seal.seal(d.meta.source))
            yield d

    return sealed()


def _count_hint(src: Any) -> int | None:
    """Number of files of a folder source, for the progress bar's ETA (None when unknown)."""
    path = getattr(src, "path", None)
    if path is None:
        return None
    try:

        return sum(1 for _ in list_files(path))
    except Exception:  # noqa: BLE001 - the hint is optional
        return None
