"""The region search structure of an index, kept with its generations like the slice index.

Region search (:mod:`medcbir.engine.region_search`) compares region descriptors in a **metric**
taken from statistics of all the index's regions (:class:`RegionMetric`), and searches more than
:data:`FLAT_MAX` regions with an inverted-file index (IVF). Both are derived from the shards'
``regions/`` groups; this module computes them once, when shards are committed, and stores them
beside the shards, so opening an index reuses them instead of recomputing them at the first
region query.

What is stored (every file written under a temporary name, fsynced, renamed, and recorded in the
manifest with its size, sha256 and fast checksum, so opening, ``verify`` and ``verify --repair``
check it like any committed file):

- per shard, ``shard-N.regions-G.npz`` (manifest: the shard entry's ``region_part``): the
  **moments** of the shard's region descriptors (count, sum, sum of outer products, float64).
  Moments add up: the metric of any set of shards (the whole index, or the sharded engine's
  parts together) comes from their sum, taken in shard order, so every process opening one
  generation gets the same numbers, and an index grown commit by commit the same numbers as one
  built at once. Tombstoned items' regions count until compaction removes them. With an IVF the
  part also holds the **list** of each of the shard's regions (``lists``) and names the IVF file
  the lists belong to (``ivf``).
- above :data:`FLAT_MAX` regions, ``region-ivf-G.npz`` (manifest: ``region_search.ivf``): the
  trained coarse quantiser (centroids), the metric it was trained in and the probe count that
  reached :data:`TARGET_RECALL` on a sample of the index's own regions. In memory the lists hold
  each region's scaled vector in float16, zero-padded to a multiple of :data:`PAD` coordinates
  (:func:`ivf_codes`): a region costs those codes, a FAISS id, its item id and its box.

Lifecycle (:func:`maintain`, run by :func:`medcbir.indexer.manifest.commit_manifest` for every
commit of an index with regions: indexing, the plugin's incremental commits, Ray indexing,
delete, compaction, retraining, repair): shards without a part get one (their moments, and their
lists when an IVF exists: a few items added cost a few assignments, not a rebuild); the IVF is
trained when the regions first exceed :data:`FLAT_MAX` and trained again only when their count
has grown (or shrunk) by :data:`GROWTH` since, as the slice index is retrained on growth; below
:data:`FLAT_MAX` search is exact and no IVF is kept. An IVF keeps its coarse lists when the
metric moves with new regions: queries are assigned to lists in the metric the IVF was
trained in and compared in the current one (:class:`StoredIVF`), so distances and scores are
always those of the current metric. Everything is derived data: a failure while maintaining
it is logged and the commit goes ahead without it (opening then computes what is missing).

``region_search.version`` records the region recipe the structure was made for and
``region_search.metric`` the distance (:data:`METRIC`); a structure of another recipe than the
manifest's ``regions.version``, or of another metric, is not used (computed again at open, and
replaced at the next commit). An index written before this module (no ``region_search``) answers
region queries the old way — moments and, above :data:`FLAT_MAX`, the IVF computed at the first
region query — until its next commit stores them.

:data:`COUNTERS` counts the shards whose moments were computed from their descriptors and the
IVF trainings in this process (what a test checks to see that a second open recomputes nothing).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import h5py
import numpy as np

from medcbir.encoders.region_descriptor import comparable
from medcbir.errors import IndexCorrupt
from medcbir.indexer.checksum import stamp
from medcbir.indexer.fsutil import commit_file, sha256_file, tmp_name
from medcbir.indexer.shard import read_regions

log = logging.getLogger(__name__)

#: Layout of the stored structure (``region_search.format``).
FORMAT = 1
#: The distance regions are compared by (``region_search.metric``; a structure made for another is
#: not used): Euclidean between descriptors with their intensity coordinates compressed, whitened
#: with the spectrum floored at its mean (:class:`RegionMetric`). ``floored-v1`` did not compress.
METRIC = "floored-v2"
#: Exact search up to this many regions; above, an IVF index.
FLAT_MAX = 1 << 20
#: recall@10 the IVF probe count must reach on a sample of the index's own regions.
TARGET_RECALL = 0.95
#: The IVF is trained again when the regions have grown (or shrunk) by this factor since.
GROWTH = 2.0
#: Per process: shards whose moments were computed from descriptors, IVF trainings.
COUNTERS = {"moments": 0, "trained": 0}

Moments = tuple[int, np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------- metric
@dataclass(frozen=True)
class RegionMetric:
    """``x → (comparable(x) − mean) @ matrix``: what region descriptors are compared in (Euclidean
    distance).

    :func:`~medcbir.encoders.region_descriptor.comparable` first compresses the intensity
    coordinates (linear within ±30 units, logarithmic beyond), so a difference of 20 units between
    two soft-tissue structures is not lost among the hundreds that separate air, fat, soft tissue
    and calcium. Then, from the moments of those (:func:`moments`, :meth:`from_moments`): centred
    and rotated onto their principal axes; each axis is divided by the root of its variance, or of
    the mean variance of all axes when its own is smaller (the spectrum floored at its mean), then
    all by one number so that two regions drawn at random are ``2 · dim`` apart in squared distance
    whatever the archive.

    Directions of large variance (absolute levels from fat to bone) are evened out, as whitening
    does, so they do not swamp size, texture and shape. Directions of small variance are not blown
    up: plain whitening (the metric before ``floored-v1``, with 0.2 shrinkage) divided each by its
    own spread, so the directions the archive barely varies in (such as the sum of the two rim
    harmonics, which moves with noise and resampling) counted most. Why, and what it changed:
    ``docs/regions.md``, "Search".
    """

    mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(cls, descriptors: np.ndarray) -> "RegionMetric":
        return cls.from_moments(*moments(descriptors))

    @classmethod
    def from_moments(cls, n: int, total: np.ndarray, scatter: np.ndarray) -> "RegionMetric":
        """From the count, sum and sum of outer products of the descriptors as compared (as
        :func:`moments` gives them; parts add up: :func:`sum_moments`)."""
        dim = len(total)
        if n < 2:
            return cls(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32))
        mean = total / n
        cov = (scatter - n * np.outer(mean, mean)) / (n - 1)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        values = np.maximum(values, 0.0)
        floor = float(values.mean())
        if floor <= 1e-12:
            return cls(mean.astype(np.float32), np.eye(dim, dtype=np.float32))
        spread = np.maximum(values, floor)
        # expected squared distance of two random regions: 2 Σ λ / max(λ, floor); scaled to 2·dim
        scale = math.sqrt(dim / float((values / spread).sum()))
        return cls(mean.astype(np.float32), (vectors / np.sqrt(spread)[None, :] * scale).astype(np.float32))

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        x = comparable(np.asarray(descriptors, dtype=np.float32).reshape(-1, self.mean.shape[0]))
        return np.ascontiguousarray((x - self.mean) @ self.matrix, dtype=np.float32)


def moments(descriptors: np.ndarray) -> Moments:
    """(count, sum, sum of outer products) of the descriptors as the metric reads them
    (:func:`~medcbir.encoders.region_descriptor.comparable`), in float64, in blocks."""
    x = np.asarray(descriptors, dtype=np.float32)
    dim = x.shape[1] if x.ndim == 2 else 0
    total, scatter = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, len(x), 1 << 18):
        block = comparable(x[start:start + (1 << 18)]).astype(np.float64)
        total += block.sum(axis=0)
        scatter += block.T @ block
    return len(x), total, scatter


def sum_moments(parts: list[Moments], dim: int) -> Moments:
    """The moments of several parts, added in the order given (shard order: the same numbers
    in one process and over the sharded engine's actors)."""
    n, total, scatter = 0, np.zeros(dim), np.zeros((dim, dim))
    for count, s, q in parts:
        n += int(count)
        total = total + s
        scatter = scatter + q
    return n, total, scatter


# ---------------------------------------------------------------------------------------- IVF
def nlist_for(n: int) -> int:
    return int(max(1, min(65536, 4 * math.sqrt(n))))


#: The IVF's vectors are zero-padded to a multiple of this many coordinates (FAISS's SIMD distance
#: kernels for scalar-quantised codes need it; without it they run scalar code, several times slower).
PAD = 8


def padded(vectors: np.ndarray, dim: int) -> np.ndarray:
    """float32 ``vectors`` with zero columns up to ``dim`` (distances unchanged)."""
    x = np.asarray(vectors, dtype=np.float32)
    x = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, -1)
    return np.ascontiguousarray(x if x.shape[1] == dim else np.pad(x, ((0, 0), (0, dim - x.shape[1]))), dtype=np.float32)


def ivf_codes(centroids: np.ndarray) -> faiss.IndexIVFScalarQuantizer:
    """An empty IVF with these coarse centroids whose lists hold each vector in float16 (not
    residuals), zero-padded to a multiple of :data:`PAD` coordinates: half the bytes of float32
    and the same ranking within float16's precision. Vectors and queries go in through :func:`padded`."""
    dim = int(math.ceil(centroids.shape[1] / PAD) * PAD)
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(padded(centroids, dim))
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, len(centroids), faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2, False)
    index.is_trained = True
    index.referenced_objects = [quantizer]
    return index


def train_ivf(vectors: np.ndarray, seed: int = 0) -> tuple[faiss.IndexIVFScalarQuantizer, np.ndarray]:
    """An IVF index over scaled region vectors (:func:`ivf_codes`; coarse quantiser trained on a
    sample of them) filled with them; returns it and each vector's list (int64). Its ``nprobe``
    reaches :data:`TARGET_RECALL` against exact search of the vectors."""
    n, dim = vectors.shape
    nlist = nlist_for(n)
    quantizer = faiss.IndexFlatL2(dim)
    rng = np.random.default_rng(seed)
    train = vectors[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    coarse = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)  # trains the quantiser as FAISS's IVF does
    coarse.train(np.ascontiguousarray(train, dtype=np.float32))
    _, lists = quantizer.search(vectors, 1)
    lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
    index = ivf_codes(quantizer.reconstruct_n(0, nlist))
    fill(index, vectors, lists)
    index.nprobe = probes(index, vectors, rng)
    COUNTERS["trained"] += 1
    return index, lists


def fill(index: faiss.IndexIVF, vectors: np.ndarray, lists: np.ndarray) -> None:
    """Add ``vectors`` (ids 0..n-1) to the lists given, without assigning them again."""
    vectors = padded(vectors, index.d)
    ids = np.arange(len(vectors), dtype=np.int64)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    if len(vectors):
        index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(lists))


def fill_at(index: faiss.IndexIVF, vectors: np.ndarray, first: int, lists: np.ndarray) -> None:
    """Add ``vectors`` with ids ``first``.. to the lists given (:func:`fill` for one part of many)."""
    vectors = padded(vectors, index.d)
    ids = np.arange(first, first + len(vectors), dtype=np.int64)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    if len(vectors):
        index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(lists))


def build_region_index(vectors: np.ndarray, seed: int = 0):
    """A FAISS index over scaled region vectors: exact up to :data:`FLAT_MAX`, else IVF."""
    n, dim = vectors.shape
    if n <= FLAT_MAX:
        index = faiss.IndexFlatL2(dim)
        index.add(vectors)
        return index
    return train_ivf(vectors, seed)[0]


def probes(index, vectors: np.ndarray, rng, queries: int = 200, k: int = 10) -> int:
    """The smallest nprobe (powers of two) whose recall@10 on sampled regions reaches the target."""
    sample = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(sample, k)
    nprobe = 1
    queries = padded(sample, index.d)
    while nprobe < index.nlist:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())])
        if recall >= TARGET_RECALL:
            break
        nprobe *= 2
    return min(nprobe, index.nlist)


@dataclass
class StoredIVF:
    """A stored IVF: coarse centroids in the metric ``trained_in``, and every region's list.

    :meth:`index` builds the searchable index over vectors scaled in the *current* metric;
    :meth:`assign` gives a query's lists (the query scaled as the centroids were)."""

    trained_in: RegionMetric
    centroids: np.ndarray
    nprobe: int
    lists: np.ndarray | None = None  # int64 (R,) in the store's region order

    def empty_index(self) -> faiss.IndexIVFScalarQuantizer:
        """The searchable IVF (:func:`ivf_codes`) with no vectors yet: add them with :func:`fill` and their stored lists."""
        index = ivf_codes(self.centroids)
        index.nprobe = int(min(self.nprobe, len(self.centroids)))
        return index

    def index(self, vectors: np.ndarray) -> faiss.IndexIVFScalarQuantizer:
        """The searchable IVF holding ``vectors`` (scaled in the current metric) in their stored lists."""
        index = self.empty_index()
        fill(index, vectors, self.lists)
        return index

    def coarse_map(self, current: RegionMetric) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with ``trained_in(x) = current(x) @ A + b``: a query scaled now, carried into
        the centroids' metric."""
        inverse = np.linalg.pinv(current.matrix.astype(np.float64))
        a = inverse @ self.trained_in.matrix.astype(np.float64)
        b = (current.mean.astype(np.float64) - self.trained_in.mean.astype(np.float64)) @ self.trained_in.matrix.astype(np.float64)
        return a.astype(np.float32), b.astype(np.float32)


# ---------------------------------------------------------------------------------------- files
def _write_npz(path: Path, hook: str = "region-fsync", **arrays) -> dict:
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    digest = sha256_file(tmp)
    size = tmp.stat().st_size
    commit_file(tmp, path, hook=hook)
    return {"file": path.name, "bytes": size, "sha256": digest}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_part(index_dir: Path, record: dict, dim: int) -> tuple[Moments, np.ndarray | None]:
    data = _read_npz(Path(index_dir) / record["file"])
    m = (int(data["count"]), data["sum"].astype(np.float64).reshape(dim), data["scatter"].astype(np.float64).reshape(dim, dim))
    return m, (data["lists"].astype(np.int64) if "lists" in data else None)


def read_ivf(index_dir: Path, record: dict) -> StoredIVF:
    data = _read_npz(Path(index_dir) / record["file"])
    return StoredIVF(RegionMetric(data["mean"].astype(np.float32), data["matrix"].astype(np.float32)),
                     data["centroids"].astype(np.float32), int(data["nprobe"]))


def part_stem(shard_file: str) -> str:
    return shard_file[:-3] if shard_file.endswith(".h5") else shard_file


def records(manifest: dict) -> list[dict]:
    """The manifest record ``{file, bytes, sha256, xxh3}`` of every stored region-structure file."""
    out = [s["region_part"] for s in manifest.get("shards", []) if s.get("region_part")]
    ivf = (manifest.get("region_search") or {}).get("ivf")
    if ivf:
        out.append(ivf)
    return out


def current(manifest: dict) -> dict | None:
    """The ``region_search`` record when it belongs to this index's region recipe, else None."""
    regions = manifest.get("regions") or {}
    record = manifest.get("region_search") or {}
    if not regions or record.get("format") != FORMAT or record.get("version") != regions.get("version") \
            or record.get("metric") != METRIC or int(record.get("dim", -1)) != int(regions.get("dim", -2)):
        return None
    return record


# ---------------------------------------------------------------------------------------- commit
def maintain(index_dir: str | Path, manifest: dict) -> dict:
    """``manifest`` (about to be committed) with its region structure brought up to date: parts
    for the shards lacking one, the IVF trained when due. Logs and returns ``manifest`` as it was
    when that fails (the structure is derived data: a commit never fails for it)."""
    if not manifest.get("regions"):
        return manifest
    try:
        return _maintain(Path(index_dir), manifest)
    except Exception as exc:  # noqa: BLE001 - derived data; opening computes what is missing
        log.warning("%s: region search structure not stored (%s: %s); it is computed when the index is opened",
                    index_dir, exc.__class__.__name__, exc)
        return manifest


def _maintain(index_dir: Path, manifest: dict) -> dict:
    regions = manifest["regions"]
    dim = int(regions["dim"])
    generation = int(manifest.get("generation", 0)) + 1  # the generation being committed
    record = current(manifest)
    ivf_record = (record or {}).get("ivf")
    shards = [dict(s) for s in manifest["shards"]]
    if record is None:
        for s in shards:
            s.pop("region_part", None)
    # regions per shard: recorded in its part, else the length of its regions/ group (no descriptor read)
    total = sum(int(s["region_part"]["count"]) if s.get("region_part") else _region_count(index_dir / s["file"]) for s in shards)
    if total <= FLAT_MAX:
        ivf_record = None
    elif ivf_record is None or total > GROWTH * int(ivf_record["at_regions"]) or total * GROWTH < int(ivf_record["at_regions"]):
        ivf_record = _train(index_dir, shards, dim, generation, total)  # every shard gets a new part
    stored = None
    for s in shards:
        part = s.get("region_part")
        if part is None or (ivf_record is not None and part.get("ivf") != ivf_record["file"]):
            if ivf_record is not None and stored is None:
                stored = read_ivf(index_dir, ivf_record)
            s["region_part"] = _write_part(index_dir, s, dim, generation, stored, ivf_record)
    out = dict(manifest)
    out["shards"] = shards
    out["region_search"] = {"format": FORMAT, "version": regions.get("version"), "metric": METRIC, "dim": dim, "regions": int(total), "ivf": ivf_record}
    return out


def _region_count(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["regions"]["row"].shape[0]) if "regions" in f else 0


def _descriptors(index_dir: Path, entry: dict, dim: int) -> np.ndarray:
    regions = read_regions(index_dir / entry["file"])
    if regions is None:
        raise ValueError(f"{entry['file']}: the index stores regions but this shard has none")
    return np.asarray(regions.descriptors, dtype=np.float32).reshape(-1, dim)


def _write_part(index_dir: Path, entry: dict, dim: int, generation: int, stored: StoredIVF | None, ivf_record: dict | None,
                descriptors: np.ndarray | None = None, lists: np.ndarray | None = None) -> dict:
    x = descriptors if descriptors is not None else _descriptors(index_dir, entry, dim)
    count, total, scatter = moments(x)
    COUNTERS["moments"] += 1
    arrays = {"count": np.int64(count), "sum": total, "scatter": scatter}
    if stored is not None and lists is None:
        _, found = faiss_search(stored.centroids, stored.trained_in(x))
        lists = found
    if lists is not None:
        arrays["lists"] = np.asarray(lists, dtype=np.int32)
    path = index_dir / f"{part_stem(entry['file'])}.regions-{generation:06d}.npz"
    rec = _write_npz(path, **arrays)
    rec.update(count=int(count), ivf=ivf_record["file"] if (ivf_record and lists is not None) else None)
    return stamp(rec, index_dir)


def faiss_search(centroids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, list) of each vector's nearest centroid."""
    quantizer = faiss.IndexFlatL2(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    d, i = quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return d[:, 0], i[:, 0].astype(np.int64)


def _train(index_dir: Path, shards: list[dict], dim: int, generation: int, total: int) -> dict:
    """Train the IVF on every region of ``shards`` (scaled with their moments), write it and a
    part with lists for every shard (updating ``shards`` in place); returns the IVF record."""
    blocks = [_descriptors(index_dir, s, dim) for s in shards]
    per_shard = [moments(b) for b in blocks]
    COUNTERS["moments"] += len(blocks)
    metric = RegionMetric.from_moments(*sum_moments(per_shard, dim))
    vectors = metric(np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32))
    index, lists = train_ivf(vectors)
    centroids, nprobe = index.quantizer.reconstruct_n(0, index.nlist)[:, :dim], int(index.nprobe)
    del index, vectors
    path = index_dir / f"region-ivf-{generation:06d}.npz"
    ivf_record = _write_npz(path, mean=metric.mean, matrix=metric.matrix, centroids=centroids, nprobe=np.int64(nprobe))
    ivf_record.update(nlist=int(len(centroids)), nprobe=nprobe, at_regions=int(total))
    ivf_record = stamp(ivf_record, index_dir)
    lo = 0
    for s, block in zip(shards, blocks):
        s["region_part"] = _write_part(index_dir, s, dim, generation, None, ivf_record, descriptors=block, lists=lists[lo:lo + len(block)])
        lo += len(block)
    return ivf_record


# ---------------------------------------------------------------------------------------- open
@dataclass
class Structure:
    """The region search structure of an opened store (parts in shard order).

    Attributes:
        parts: per shard, the moments of its regions.
        ivf: the stored IVF with every region's list (None: exact search, or an IVF to train).
        stored: True when nothing had to be computed from descriptors.
    """

    parts: list[Moments]
    dim: int
    ivf: StoredIVF | None
    stored: bool

    def moments(self) -> Moments:
        return sum_moments(self.parts, self.dim)

    def metric(self) -> RegionMetric:
        return RegionMetric.from_moments(*self.moments())


def load(store, with_ivf: bool = True) -> Structure:
    """The structure of an opened :class:`~medcbir.indexer.store.IndexStore` with regions: the
    stored parts and IVF where the manifest has them, moments computed from the shards'
    descriptors where it has not (an index from before the structure was stored, or of another
    recipe). The files were checked when the store was opened."""
    manifest = store.manifest
    dim = int(manifest["regions"]["dim"])
    record = current(manifest)
    ivf_record = (record or {}).get("ivf") if with_ivf else None
    parts, lists, stored = [], [], True
    for f, entry in zip(store._files, manifest["shards"]):
        part = entry.get("region_part") if record is not None else None
        if part is not None:
            m, shard_lists = read_part(store.index_dir, part, dim)
            parts.append(m)
            lists.append(shard_lists if ivf_record and part.get("ivf") == ivf_record["file"] else None)
            continue
        stored = False
        if "regions" not in f:
            raise IndexCorrupt(f"{entry['file']}: the index stores regions but this shard has none")
        parts.append(moments(f["regions"]["descriptors"][...].astype(np.float32).reshape(-1, dim)))
        COUNTERS["moments"] += 1
        lists.append(None)
    ivf = None
    if ivf_record and all(x is not None for x in lists):
        ivf = read_ivf(store.index_dir, ivf_record)
        ivf.nprobe = int(ivf_record.get("nprobe") or ivf.nprobe)
        ivf.lists = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    elif ivf_record:
        stored = False
    return Structure(parts, dim, ivf, stored)


def drop_damaged(manifest: dict, damaged: dict, rebuilt: list[str]) -> dict:
    """``manifest`` without the region-structure files in ``damaged`` (computed again at the
    commit that follows: :func:`maintain`); their names are added to ``rebuilt``."""
    record = manifest.get("region_search") or {}
    hit = [r["file"] for r in records(manifest) if r["file"] in damaged]
    if not hit:
        return manifest
    out = dict(manifest)
    if record.get("ivf") and record["ivf"]["file"] in damaged:
        out["region_search"] = {**record, "ivf": None}
    out["shards"] = [{k: v for k, v in s.items() if not (k == "region_part" and v["file"] in damaged)} for s in manifest["shards"]]
    rebuilt.extend(hit)
    return out


def check(index_dir: str | Path, manifest: dict, skip: set[str] = frozenset()) -> list[str]:
    """``verify``'s findings about the stored structure: each shard's part holds as many regions
    as the shard, finite moments, and (with an IVF) a valid list for each of its regions; files in
    ``skip`` (already reported broken) are not read."""
    record = current(manifest)
    if record is None:
        return []
    index_dir = Path(index_dir)
    dim = int(manifest["regions"]["dim"])
    ivf = record.get("ivf")
    out: list[str] = []
    for entry in manifest["shards"]:
        part = entry.get("region_part")
        if not part or part["file"] in skip or entry["file"] in skip:
            continue
        try:
            (count, total, scatter), lists = read_part(index_dir, part, dim)
            shard_count = _region_count(index_dir / entry["file"])
        except (OSError, KeyError, ValueError) as exc:
            out.append(f"{part['file']}: unreadable region part ({exc})")
            continue
        if count != shard_count or count != int(part.get("count", -1)):
            out.append(f"{part['file']}: moments of {count} regions, the shard holds {shard_count}")
        if not (np.isfinite(total).all() and np.isfinite(scatter).all()):
            out.append(f"{part['file']}: moments are not finite")
        if ivf and part.get("ivf") == ivf["file"]:
            if lists is None or len(lists) != count or (count and (lists.min() < 0 or lists.max() >= int(ivf["nlist"]))):
                out.append(f"{part['file']}: region lists do not match the shard's {count} regions and {ivf['nlist']} lists")
    return out
