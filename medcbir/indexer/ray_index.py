"""Distributed indexing on Ray: the same shards, FAISS files and manifest as :func:`index_archive`.

The pipeline (Ray Data, streaming)::

    driver: list the archive's files/instances, skipping sources already committed
      │  one row per *job* (a shard's worth of sources)
      ▼
    decode tasks (CPU): read + preprocess every source of a job (``walk`` / DICOMweb retrieve)
      ▼
    embedding actors (GPU or CPU; the encoder is loaded once per actor): embed in batches,
      reserve ids from the ledger, write complete shards (temporary name, fsync, rename)
      ▼
    driver: checks each shard's sha256 and alone commits them to the manifest, in id order,
      in groups (``IndexWriter.commit_shards``: FAISS parts and training as usual)

Exactly once: ids are handed out by one :class:`ShardLedger` actor, keyed by job. A job retried
after a worker died (Ray Data restarts actors and retries their tasks) gets the *same*
reservation and rewrites the same shard files, so a retry can neither duplicate an item nor
leave a hole in the id range. The ledger also drops keys already committed or reserved by
another job (a SOP instance present twice in an archive is indexed once, as single-process).
A killed driver leaves at most uncommitted shard files: the next writer removes them as
orphans and the re-run skips every committed source.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medcbir.errors import ConfigError, IndexCorrupt
from medcbir.imaging.source_seal import SourceSeal
from medcbir.imaging import list_files
from medcbir.imaging import walk
from medcbir.indexer.follow import file_state
from medcbir.errors import ArchiveNotFound
from medcbir.imaging import Preprocessing
from medcbir.encoders.regions import WithRegions
from medcbir.device import Device
from medcbir.indexer.compression import choose_storage, fit_codebook
from medcbir.indexer.shard import codebook_entry, meta_columns, shard_name, write_shard
from medcbir.indexer import transform_codec
from medcbir.indexer.transform_codec import is_transform, min_fit_items
from medcbir.indexer.writer import coded_storage, key_hash, shard_regions
from medcbir.indexer import follow, quarantine
from medcbir.indexer.summary import IndexSummary
from medcbir.indexer.writer import IndexWriter, remove_orphans
from medcbir.encoders.names import is_builtin
from medcbir.encoders.spec import source_available
from medcbir.indexer.fsutil import sha256_file

log = logging.getLogger(__name__)

#: Decoded images of one job travel as one object-store block; this caps its size, so a job
#: (and the shard it becomes) holds at most ``min(shard_size, JOB_BYTES // image bytes)`` items.
JOB_BYTES = 256 << 20
#: Attempts of a decode task whose worker process died.
DECODE_RETRIES = 5
#: The driver commits a group when this many shards are ready in id order, or after
#: :data:`COMMIT_SECONDS`, and at the end (fewer generations than one per shard).
COMMIT_SHARDS = 8
COMMIT_SECONDS = 10.0


# ---------------------------------------------------------------------------- sources → units
class FolderUnits:
    """A folder archive as units (absolute file paths), decoded with :func:`medcbir.imaging.walk`.

    Sources are recorded sealed (:mod:`medcbir.imaging.source_seal`) once :meth:`seal_with`
    gave the index's key and archive root: the tasks seal what they decode.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path).absolute()
        self.timeout = timeout
        self._seal_args: tuple[bytes, str] | None = None

    @property
    def root(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def seal_with(self, key: bytes, root: str | Path) -> None:
        self._seal_args = (bytes(key), str(root))

    def _seal(self):

        return SourceSeal(*self._seal_args) if self._seal_args else None

    def units(self, skip_source) -> tuple[list[str], int]:
        """(sources to decode, number passed because already committed), in walk order."""

        seal = self._seal()
        todo, passed = [], 0
        for path in list_files(self.path):
            if skip_source(seal.seal(path) if seal else str(path)):
                passed += 1
            else:
                todo.append(str(path))
        return todo, passed

    def decode(self, units: list[str], preprocessing, key: bytes | None) -> tuple[list, list, dict]:
        """(decoded items, skipped ``(path, reason, detail)``, recorded source → (size,
        mtime_ns) seen before decoding) of some units, in order."""
        from dataclasses import replace


        seal = self._seal()
        record = seal.seal if seal is not None else str
        states = {record(u): file_state(u) for u in units}
        w = walk([Path(u) for u in units], preprocessing=preprocessing, workers=1, key=key, timeout=self.timeout)
        decoded = list(w)
        skips = [tuple(q) for q in w.report.quarantined]
        if seal is not None:
            for d in decoded:
                d.meta = replace(d.meta, source=seal.seal(d.meta.source))
            skips = [(seal.seal(path), reason, str(detail).replace(path, seal.seal(path))) for path, reason, detail in skips]
        return decoded, skips, {name: state for name, state in states.items() if state is not None}


class DicomwebUnits:
    """A DICOMweb source (``medcbir.pacs.dicomweb.DicomwebSource``, duck-typed: the indexer does
    not import ``pacs``) as units ``study/series/sop``, retrieved and decoded in the tasks."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def units(self, skip_source) -> tuple[list[str], int]:
        todo, passed = [], 0
        for study, series, sop in self.source.instances():
            if skip_source(self.source.uri(study, series, sop)):
                passed += 1
            else:
                todo.append(f"{study}/{series}/{sop}")
        return todo, passed

    def decode(self, units: list[str], preprocessing, key: bytes | None) -> tuple[list, list, dict]:
        decoded, skips = [], []
        for unit in units:
            uri, items, reason, detail = self.source._retrieve(tuple(unit.split("/")), preprocessing, key)
            if items is None:
                skips.append((uri, reason, detail))
            else:
                decoded.extend(items)
        return decoded, skips, {}  # an instance has no size or mtime to record


def as_units(source: Any):
    """The unit lister/decoder of a path, a ``FolderSource`` or a DICOMweb source."""
    if isinstance(source, (str, Path)):

        if not Path(source).exists():
            raise ArchiveNotFound(f"archive not found: {source}")
        return FolderUnits(source)
    if hasattr(source, "instances") and hasattr(source, "uri") and hasattr(source, "_retrieve"):
        return DicomwebUnits(source)
    if getattr(source, "path", None) is not None:
        return FolderUnits(source.path, timeout=getattr(source, "timeout", 30.0))
    raise ConfigError(f"the Ray indexer cannot split {type(source).__name__} into tasks (folders and DICOMweb only)")


# ---------------------------------------------------------------------------- Ray runtime
def connect(address: Any = None, num_cpus: int | None = None) -> bool:
    """Join or start a Ray runtime; returns True when this call started it (then shut it down).

    Args:
        address: None/True/``"local"`` = start a local runtime (loopback only); ``"auto"``,
            ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` = join that cluster. A runtime this
            process already joined is used as is.
        num_cpus: CPUs of a local runtime (None = all).
    """
    import ray

    if ray.is_initialized():
        return False
    # Ray's own INFO lines and its workers' output only with --verbose (MEDCBIR_VERBOSE=1):
    # every other command prints its result and nothing else.
    verbose = os.environ.get("MEDCBIR_VERBOSE") == "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("ray", "ray.data", "ray._private", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    kwargs = {"include_dashboard": False, "logging_level": logging.INFO if verbose else logging.ERROR,
              "log_to_driver": verbose}
    if address in (None, True, "local", ""):
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    else:
        try:
            ray.init(address=str(address), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return True


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


# ---------------------------------------------------------------------------- the ledger
def _ledger_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class ShardLedger:
        """Hands out shard numbers and dense id ranges, idempotently per job."""

        def __init__(self, next_id: int, next_shard: int, committed: np.ndarray, shard_size: int) -> None:
            self.next_id, self.next_shard, self.shard_size = int(next_id), int(next_shard), int(shard_size)
            self.keys = set(np.asarray(committed, dtype=np.uint64).tolist())
            self.jobs: dict[int, tuple] = {}
            self.storage: dict | None = None

        def settle_storage(self, proposal: dict | None) -> dict | None:
            """The index's shard storage for an ``auto`` request: the first actor's measurement
            (:func:`~medcbir.indexer.compression.choose_storage` on its first embeddings) wins,
            every actor then writes that dtype (as the single-process writer decides at its
            first shard); so does the first codebook an actor fitted for a ``tc*`` storage (every
            actor codes with it). ``None``: what is settled so far (None while nothing is)."""
            if self.storage is None and proposal is not None:
                self.storage = dict(proposal)
            return self.storage

        def reserve(self, job: int, keys: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, list]:
            """(keep mask, [(shard number, first id, items)]) for a job's items, in order.

            Items whose key is committed or reserved by another job are dropped; the kept ones
            are cut into shards of at most ``shard_size`` without splitting a source.
            """
            if job in self.jobs:
                return self.jobs[job]
            keep = np.zeros(len(keys), dtype=bool)
            for i, h in enumerate(np.asarray(keys, dtype=np.uint64).tolist()):
                if h not in self.keys:
                    self.keys.add(h)
                    keep[i] = True
            kept_sources = np.asarray(sources)[keep]
            plan, start, n = [], 0, int(keep.sum())
            while start < n:
                stop = min(start + self.shard_size, n)
                while stop < n and kept_sources[stop] == kept_sources[stop - 1]:
                    stop += 1
                plan.append((self.next_shard, self.next_id, stop - start))
                self.next_shard += 1
                self.next_id += stop - start
                start = stop
            self.jobs[job] = (keep, plan)
            return self.jobs[job]

    return ShardLedger


# ---------------------------------------------------------------------------- Ray Data stages
def decode_job(batch: dict, units_of, preprocessing: dict, key: bytes | None, regions_per_image: int | None = None) -> dict:
    """Decode task: one job row → its preprocessed images, metadata and (for an index with
    regions, ``regions_per_image`` set) each item's regions (pickled, one block)."""

    prep = Preprocessing.from_dict(preprocessing)
    decode_prep = prep
    if regions_per_image:

        decode_prep = WithRegions(prep, int(regions_per_image))
    out_jobs, out_payload = [], []
    for job, units in zip(batch["job"], batch["units"]):
        units = [str(u) for u in units]
        decoded, skips, states = units_of.decode(units, decode_prep, key)
        images = np.stack([np.asarray(d.image, dtype=np.float32) for d in decoded]) if decoded else np.zeros((0, *prep_shape(prep)), np.float32)
        metas = [d.meta for d in decoded]
        regions = [d.extras.get("regions") for d in decoded] if regions_per_image else None
        out_jobs.append(int(job))
        out_payload.append(pickle.dumps((images, metas, skips, len(units), states, regions), protocol=5))
    return {"job": np.asarray(out_jobs, dtype=np.int64), "payload": np.asarray(out_payload, dtype=object)}


def prep_shape(prep) -> tuple[int, int, int]:
    return (prep.channels, prep.size, prep.size)


class EmbedWriter:
    """Embedding actor: loads the encoder once, embeds a job's images in batches and writes its
    shards (complete, fsynced, renamed) into the index folder; returns their manifest records.

    Args:
        encoder: what ``open_encoder`` accepts (a checkpoint/ONNX path or ``"default"``) or a
            picklable Encoder.
        fingerprint: the index's encoder fingerprint (checked after loading).
        encoder_info: the manifest's encoder record (shard attributes).
        index_dir: the index folder (a shared file system on a cluster).
        ledger: the :class:`ShardLedger` actor handle.
        batch_size: images per forward.
        threads: torch threads (CPU embedding).
        regions: the manifest's regions record (None: the index stores no regions).
        dtype: how shards store embeddings: the index's decided ``shard_dtype``, or ``"auto"``
            while an ``auto`` request is undecided (measured on the first embeddings an actor
            makes, settled once by the ledger, reported back with the entries).
        codebook: the index's codebook record for a ``tc*`` dtype (None: none yet; the first
            actor with enough embeddings fits one, the ledger settles it for every actor).
    """

    def __init__(self, encoder, fingerprint: str, encoder_info: dict, index_dir: str, ledger, batch_size: int, threads: int,
                 regions: dict | None = None, dtype: str = "float32", codebook: dict | None = None) -> None:
        import torch

        from medcbir.encoders.runtime import open_encoder, open_for_index

        torch.set_num_threads(max(1, int(threads)))
        self.encoder = open_for_index(encoder, fingerprint, Device.auto()) if isinstance(encoder, str) else open_encoder(encoder, device=Device.auto())
        if self.encoder.fingerprint != fingerprint:
            raise ConfigError(f"the encoder on this worker is {self.encoder.fingerprint[:12]}, the index's is {fingerprint[:12]}")
        self.info, self.index_dir, self.ledger, self.batch_size = encoder_info, Path(index_dir), ledger, int(batch_size)
        self.regions = regions
        self.dtype = dtype
        self.storage = {"dtype": dtype, "codebook": codebook} if dtype != "auto" and (codebook or not is_transform(dtype)) else None
        self.from_ledger = False

    def __call__(self, batch: dict) -> dict:
        records = [self._job(int(job), pickle.loads(payload)) for job, payload in zip(batch["job"], batch["payload"])]
        return {"job": np.asarray(batch["job"], dtype=np.int64), "record": np.asarray([pickle.dumps(r) for r in records], dtype=object)}

    def _job(self, job: int, payload: tuple) -> dict:
        import ray


        images, metas, skips, n_units, states, regions = payload
        keys = np.asarray([key_hash(m.sop_instance_uid, m.frame) for m in metas], dtype=np.uint64)
        _, source_codes = np.unique(np.asarray([str(m.source) for m in metas], dtype=object).astype(str), return_inverse=True) if metas else (None, np.zeros(0, np.int64))
        keep, plan = ray.get(self.ledger.reserve.remote(job, keys, source_codes))
        kept = np.nonzero(keep)[0]
        entries, start = [], 0
        if len(kept):
            embeddings = self.encoder.embed(np.ascontiguousarray(images[kept]), batch_size=self.batch_size)
            kept_metas = [metas[i] for i in kept]
            kept_regions = [regions[i] for i in kept] if regions is not None else None
            storage = self._settle(embeddings)
            dtype = storage["dtype"] if storage else self.dtype
            codec = None
            if is_transform(dtype):
                book = storage["codebook"] if storage else None  # none: too few embeddings to fit one yet (float16)
                codec = transform_codec.load(self.index_dir / book["file"], book["sha256"]) if book else None
            report = storage if self.from_ledger else None  # the driver adopts what the ledger settled
            for number, first, count in plan:
                ids = np.arange(first, first + count, dtype=np.int64)
                path = self.index_dir / shard_name(number)
                part = kept_metas[start:start + count]
                stats = {str(m.source).encode("utf-8"): states[str(m.source)] for m in part if str(m.source) in states}
                block = shard_regions(kept_regions[start:start + count], int(self.regions["dim"])) if self.regions else None
                rows = embeddings[start:start + count]
                written, used, coded = coded_storage(dtype, codec, rows, path.name)
                size, digest = write_shard(path, ids, rows, meta_columns(part), self.info, stats, block,
                                           self.regions["version"] if self.regions else "", dtype=written, codec=used, stored=coded)
                entries.append({"file": path.name, "items": int(count), "bytes": size, "sha256": digest,
                                "first_id": int(first), "last_id": int(first + count - 1), "faiss": None,
                                **({"storage": report} if report else {}),
                                **({"codebook": codebook_entry(storage["codebook"])} if used is not None else {})})
                start += count
        return {"job": job, "entries": entries, "units": n_units, "items": len(metas), "duplicates": int(len(metas) - len(kept)), "skips": skips}

    def _settle(self, embeddings: np.ndarray) -> dict | None:
        """The storage this actor writes: the index's decided one, or (an ``auto`` request
        undecided, or a ``tc*`` storage without a codebook) what the ledger settled — this actor's
        own proposal when it is the first (measured, or a codebook fitted on these embeddings)."""
        import ray

        if self.storage is not None:
            return self.storage
        settled = ray.get(self.ledger.settle_storage.remote(None))
        if settled is None:
            proposal = None
            if self.dtype == "auto":
                proposal = {"requested": "auto", **choose_storage(embeddings)}
                if is_transform(proposal["dtype"]):
                    proposal["codebook"] = fit_codebook(self.index_dir, proposal["dtype"], embeddings)[1]
            elif len(embeddings) >= min_fit_items(embeddings.shape[1]):
                proposal = {"requested": self.dtype, "dtype": self.dtype, "codebook": fit_codebook(self.index_dir, self.dtype, embeddings)[1]}
            settled = ray.get(self.ledger.settle_storage.remote(proposal))
        if settled is not None:
            self.storage, self.from_ledger = settled, True
        return settled


# ---------------------------------------------------------------------------- the driver
def plan_jobs(units: list[str], shard_size: int, image_bytes: int) -> list[list[str]]:
    """Units grouped into jobs of at most one shard's worth (≈ one item per unit)."""
    per_job = max(1, min(int(shard_size), JOB_BYTES // max(1, int(image_bytes))))
    return [units[i:i + per_job] for i in range(0, len(units), per_job)]


def index_archive_ray(
    source: Any,
    index_dir: str | Path,
    encoder: Any = "default",
    *,
    ray: Any = None,
    workers: int = 1,
    gpus_per_worker: float | None = None,
    shard_size: int = 4096,
    index_spec: str = "auto",
    device=None,
    progress: bool = True,
    batch_size: int = 64,
    key_file: str | Path | None = None,
    target_recall: float | None = None,
    regions: bool | None = None,
    regions_per_image: int | None = None,
    memory_budget: float | str | None = None,
    shard_dtype: str | None = None,
):
    """:func:`medcbir.indexer.index_archive` with decoding and embedding spread over Ray.

    Args:
        source: an archive folder, a ``FolderSource`` or a DICOMweb source.
        index_dir: the index folder (on a file system every Ray node sees).
        encoder: an encoder path (checkpoint, ONNX, ``"default"``) or a picklable Encoder.
        ray: None/True/``"local"`` (start a local runtime) or a cluster address
            (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``).
        workers: embedding actors.
        gpus_per_worker: GPUs per actor (None: 1 when the cluster has GPUs, else 0).
        shard_size: items per shard at most (also capped by :data:`JOB_BYTES` of images).
        index_spec, device, progress, batch_size, key_file, target_recall, regions, regions_per_image, memory_budget:
            as for ``index_archive``.
        shard_dtype: ``float32``, ``float16``, ``sq8``, ``sq6``, ``tc4``, ``tc6``, ``tc8`` or ``auto`` (measured by the
            first actor on its first embeddings, settled once by the ledger: the same choice as
            the single-process writer's, :func:`~medcbir.indexer.compression.choose_storage`).

    Returns:
        the job's :class:`~medcbir.indexer.IndexSummary`.
    """

    start = time.perf_counter()
    if int(workers) < 1:
        raise ConfigError(f"--ray-workers must be at least 1, not {workers}")
    index_dir = Path(index_dir).absolute()
    units_of = as_units(source)
    writer = IndexWriter.open(index_dir, encoder, index_spec=index_spec, shard_size=shard_size, key_file=key_file, device=device,
                              target_recall=target_recall, regions=regions, regions_per_image=regions_per_image,
                              memory_budget=memory_budget, shard_dtype=shard_dtype)
    if isinstance(units_of, FolderUnits):
        seal = writer.archive_seal(units_of.root)
        units_of.seal_with(writer.key, seal.root)
    started = False
    summary = IndexSummary()
    log_start = quarantine.mark(index_dir)
    listing, complete = None, False
    # Ray's C++ core and the processes it starts write to file descriptor 2: into INDEX/ray.log
    # unless --verbose (or Ray Data's progress bars are wanted)
    quiet = os.environ.get("MEDCBIR_VERBOSE") != "1" and not progress
    with _stderr_to(index_dir / RAY_LOG if quiet else None):
        try:
            listing, _ = follow.follow_sources(units_of.source if isinstance(units_of, DicomwebUnits) else units_of, writer, summary)
            units, passed = units_of.units(writer.has_source)
            summary.files, summary.already_present = len(units) + passed, passed
            started = connect(ray)
            if units:
                records = _run(units_of, units, writer, encoder, int(workers), gpus_per_worker, int(shard_size), int(batch_size), progress)
                _commit_all(records, writer, summary, index_dir)
            writer.close()
            remove_orphans(index_dir, writer.manifest)  # temporary files of retried (killed) attempts
            summary.dropped_items, summary.reembedded, summary.dropped_unknown = writer.settle_dropped()
            complete = True
        except BaseException:
            writer.abort()
            raise
        finally:
            quarantine.settle(index_dir, log_start, listing.owns if complete and listing is not None else None)
            if started:
                import ray as ray_module

                ray_module.shutdown()
    return summary.finish(writer, start)


#: where Ray's own output goes unless --verbose
RAY_LOG = "ray.log"


@contextmanager
def _stderr_to(path: Path | None):
    """File descriptor 2 redirected to ``path`` (appended) while the block runs; None: unchanged."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _encoder_arg(writer, encoder):
    """What the actors open: a path, ``hf:DIR`` or built-in name when there is one (absolute: a
    worker's folder is not the driver's), else the Encoder pickled."""

    source = str(getattr(writer.encoder, "source", "") or "")
    if source and source_available(source):
        return source
    if isinstance(encoder, (str, Path)):
        return str(encoder) if is_builtin(str(encoder)) or not Path(encoder).exists() else str(Path(encoder).absolute())
    return writer.encoder


def _run(units_of, units, writer, encoder, workers, gpus_per_worker, shard_size, batch_size, progress):
    """Build and stream the Ray Data pipeline; yields the actors' shard records as they finish."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.print_on_execution_start = False
    verbose = os.environ.get("MEDCBIR_VERBOSE") == "1"
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.WARNING if progress else logging.ERROR)
    prep = writer.encoder.preprocessing
    jobs = plan_jobs(units, writer.shard_size, 4 * int(np.prod(prep_shape(prep))))
    gpus = (1.0 if cluster_gpus() > 0 else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    cpus = cluster_cpus()
    # Leave a CPU for the decode tasks; CPU actors share the remaining cores (torch threads).
    actor_cpus = min(1.0, max(0.1, (cpus - 1.0) / workers)) if gpus == 0 else 1.0
    threads = max(1, int(cpus // workers)) if gpus == 0 else 1
    ledger = _ledger_class().remote(writer.items, int(writer.manifest["next_shard"]), writer.key_hashes(), shard_size)
    ds = ray.data.from_items([{"job": j, "units": job} for j, job in enumerate(jobs)], override_num_blocks=len(jobs))
    # Decoding stays in its own CPU tasks, retried when their worker dies. Ray Data fuses a task
    # stage into the next actor stage when their remote options are equal, which would
    # serialise decoding and embedding in one process; the explicit retry count keeps them apart.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # max_retries as a keyword (still supported in 2.60)
        ds = ds.map_batches(
            decode_job, batch_size=1, batch_format="numpy", num_cpus=1, max_retries=DECODE_RETRIES,
            fn_kwargs={"units_of": units_of, "preprocessing": prep.to_dict(), "key": writer.key,
                       "regions_per_image": int(writer.regions["per_image"]) if writer.regions else None},
        )
    ds = ds.map_batches(
        EmbedWriter, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=actor_cpus, num_gpus=gpus,
        fn_constructor_kwargs={
            "encoder": _encoder_arg(writer, encoder), "fingerprint": writer.encoder.fingerprint,
            "encoder_info": dict(writer.manifest["encoder"]), "index_dir": str(writer.index_dir),
            "ledger": ledger, "batch_size": batch_size, "threads": threads, "regions": writer.regions,
            "dtype": _actor_dtype(writer.manifest, writer.shard_dtype),
            "codebook": (writer.manifest.get("storage") or {}).get("codebook"),
        },
    )
    for row in ds.iter_rows():
        yield pickle.loads(row["record"])


def _actor_dtype(manifest: dict, decided: str) -> str:
    """What the actors write: the index's decided storage, ``"auto"`` while an ``auto`` request
    is undecided (the actors measure it, the ledger settles it)."""
    record = manifest.get("storage") or {}
    if not record.get("dtype") and record.get("requested") == "auto" and not manifest.get("shards"):
        return "auto"
    return decided


def _commit_all(records, writer, summary, index_dir: Path) -> None:
    """Commit finished shards in id order, in groups; account skips and duplicates."""

    ready: dict[int, dict] = {}
    last_commit = time.monotonic()
    for record in records:
        for entry in record["entries"]:
            ready[int(entry["first_id"])] = entry
        summary.already_present += record["duplicates"]
        for path, reason, detail in record["skips"]:
            summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
        quarantine.append(index_dir, [quarantine.Entry(*skip) for skip in record["skips"]])
        if _contiguous(ready, writer.items) >= COMMIT_SHARDS or time.monotonic() - last_commit >= COMMIT_SECONDS:
            summary.indexed += _commit_prefix(ready, writer, sha256_file)
            last_commit = time.monotonic()
    summary.indexed += _commit_prefix(ready, writer, sha256_file)
    if ready:
        raise IndexCorrupt(f"shards {sorted(e['file'] for e in ready.values())} do not continue the index at id {writer.items}")


def _contiguous(ready: dict[int, dict], next_id: int) -> int:
    n = 0
    while next_id in ready:
        next_id = ready[next_id]["last_id"] + 1
        n += 1
    return n


def _commit_prefix(ready: dict[int, dict], writer, sha256_file) -> int:
    group = []
    next_id = writer.items
    while next_id in ready:
        entry = ready.pop(next_id)
        # The driver commits only what it has checked: a shard replaced after its actor
        # reported it (e.g. by a late attempt of a killed run) is refused, never committed.
        if sha256_file(writer.index_dir / entry["file"]) != entry["sha256"]:
            raise IndexCorrupt(f"{entry['file']}: checksum differs from what its worker reported")
        group.append(entry)
        next_id = entry["last_id"] + 1
    return writer.commit_shards(group)
