"""Sharded search on Ray: the index's shards spread over N actors, queries fanned out, top-K merged.

Each :class:`ShardActor` opens a contiguous run of the index's shards as an index of its own
(``IndexStore.open(manifest=...)`` with the ids shifted to start at 0) and answers with a plain
:class:`~medcbir.engine.Engine` over it, so filters, tombstones and ``exclude`` are evaluated by
the same code on each part; the actor adds its part's first id to every id it returns. The
driver (:class:`ShardedEngine`) keeps the metadata (query resolution, filters, neighbours'
metadata) but no FAISS index, fans each query batch out and merges:

- exact (``Flat``) and IVF indexes without a refine step: each part's top-K, merged by score —
  the same ids and scores as one index, because a part's top-K holds every one of its items
  that can be in the global top-K (for IVF, every part probes the same lists: the coarse
  quantiser is shared);
- ``…,Refine(Flat)`` (the ``auto`` spec above 65,536 items): each part returns its top
  ``K × k_factor`` candidates by the approximate score *with* their exact scores; the driver
  keeps the global top ``K × k_factor`` by approximate score and ranks them by exact score,
  which is what ``IndexRefine`` does on one index;
- a projected chain (``PCAU{d},…,Refine(SQ…)``): each part re-ranks its own top ``K × k_factor``
  in its compact store (every part holds the same trained chain, so the scores compare) and the
  driver merges the parts' top-K by those scores: the candidates re-ranked are a superset of
  what one index re-ranks.

Specs whose per-shard FAISS files carry their own ids (HNSW, fast-scan IVF, ``IndexShards``)
are refused with a clear error. :class:`ShardedIndexes` searches N *separate* indexes instead
(one per machine's part of the archive), any spec, HNSW included.

Example:
    >>> engine = open_engine("INDEX", ray="local", shards=2)   # doctest: +SKIP (medcbir.engine.opening)
    >>> [hits] = engine.search(["1.2.826.0.1.3680043.8.498.1"], k=5, exclude="same-patient")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from medcbir.engine.engine import Engine, _check_encoder
from medcbir.engine.region_search import RegionIndex, RegionMetric, check_regions
from medcbir.errors import ConfigError, IndexCorrupt, IndexNotFound
from medcbir.indexer import IndexStore
from medcbir.indexer.faiss_index import is_flat, reranks_from_shards, split_projection, split_refine
from medcbir.indexer.manifest import deleted_ids
from medcbir.indexer.ray_index import connect
from medcbir.indexer import region_index


def split_shards(shards: list[dict], parts: int) -> list[list[dict]]:
    """Contiguous runs of shards with about equal item counts (at most ``parts`` runs, none empty)."""
    parts = max(1, min(int(parts), len(shards)))
    cumulative = np.cumsum([int(s["items"]) for s in shards])
    total = int(cumulative[-1]) if len(shards) else 0
    cuts: list[int] = []
    for j in range(1, parts):
        cut = int(np.searchsorted(cumulative, total * j / parts)) + 1
        cut = min(max(cut, (cuts[-1] if cuts else 0) + 1), len(shards) - (parts - j))
        cuts.append(cut)
    return [shards[a:b] for a, b in zip([0, *cuts], [*cuts, len(shards)])]


def part_manifest(manifest: dict, shards: list[dict]) -> tuple[dict, int]:
    """(manifest of a run of shards with ids shifted to start at 0, the run's first id)."""
    lo = int(shards[0]["first_id"])
    hi = int(shards[-1]["last_id"]) + 1
    part = dict(manifest)
    part["shards"] = [{**s, "first_id": int(s["first_id"]) - lo, "last_id": int(s["last_id"]) - lo} for s in shards]
    part["next_id"] = hi - lo
    deleted = manifest.get("deleted") or []
    if isinstance(deleted, list):
        part["deleted"] = [int(i) - lo for i in deleted if lo <= int(i) < hi]
    return part, lo


def _actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class ShardActor:
        """Holds a run of an index's shards and searches them (ids returned globally)."""

        def __init__(self, index_dir: str, manifest: dict, lo: int, verify: str, deleted: np.ndarray | None) -> None:
            store = IndexStore.open(index_dir, verify=verify, manifest=manifest)
            if deleted is not None and len(deleted):
                # A large tombstone list lives in its own file: the driver passes this part's slice.
                store.deleted = np.asarray(deleted, dtype=np.int64)
                store.live_mask[:] = True
                store.live_mask[store.deleted] = False
            self.engine = Engine(store)
            self.lo = int(lo)

        def ready(self) -> int:
            return len(self.engine.ids)

        def region_moments(self):
            """Per shard of this part, (count, sum, scatter) of its region descriptors (stored, or
            computed for an index without a stored region structure); None without regions."""
            if not self.engine.store.has_regions:
                return None
            self.structure = region_index.load(self.engine.store)
            return self.structure.parts

        def region_prepare(self, mean, matrix) -> int:
            """Scale and index this part's regions with the whole index's statistics (its stored
            IVF lists when the index has them)."""
            structure = self.structure
            self.regions = RegionIndex.from_store(self.engine.store, RegionMetric(mean, matrix), structure.ivf, structure.stored)
            return len(self.regions)

        def region_search(self, vector, k: int, admissible, codes, per_series: int):
            """This part's best region per item: [(global item id, score, box)]."""
            hits = self.regions.search(vector, k, admissible, codes, per_series)
            self.engine.ensure_checked([item for item, _, _ in hits])
            return [(item + self.lo, score, box) for item, score, box in hits]

        def search(self, vectors, k: int, mask, groups: list, knobs: dict, refine_factor: float | None):
            """(scores, global ids[, exact scores]) for ``groups`` ([(key, rows)]) of ``vectors``."""
            engine = self.engine
            engine.knobs = dict(knobs)
            group_map = {(tuple(key) if key is not None else None): rows for key, rows in groups}
            if refine_factor is None:
                scores, ids = engine.search_groups(vectors, k, mask, group_map)
                return scores, np.where(ids >= 0, ids + self.lo, -1)
            index = faiss.downcast_index(engine.index)
            kk = max(k, int(k * refine_factor))
            scores, ids = engine.search_groups(vectors, kk, mask, group_map, index=index.base_index)
            exact = np.full(scores.shape, -np.inf, dtype=np.float32)
            found = ids >= 0
            if found.any():
                stored = faiss.downcast_index(index.refine_index).reconstruct_batch(ids[found])
                rows = np.nonzero(found)[0]
                exact[found] = np.einsum("ij,ij->i", stored, vectors[rows]).astype(np.float32)
            return scores, np.where(found, ids + self.lo, -1), exact

    return ShardActor


class ShardedEngine(Engine):
    """An :class:`~medcbir.engine.Engine` whose FAISS search runs in Ray actors.

    Use :meth:`open` (or ``open_engine(..., ray=..., shards=N)``); ``close()`` ends the actors
    (and the local Ray runtime if this engine started it).
    """

    @classmethod
    def open(cls, index_dir, encoder=None, device=None, verify: str = "checksums", *, ray="local", shards: int = 2) -> "ShardedEngine":
        """Open ``index_dir`` with its shards spread over ``shards`` Ray actors.

        Args:
            index_dir, encoder, device: as for :meth:`Engine.open`.
            verify: each actor checks its own shards this way; the driver checks sizes.
            ray: ``"local"``/True (start a local runtime) or a cluster address.
            shards: number of actors (at most the number of shards).

        Raises:
            ConfigError: ``shards`` < 1, an unsupported index spec, or an unreachable cluster.
        """
        import ray as ray_module


        if int(shards) < 1:
            raise ConfigError(f"--shards must be at least 1, not {shards}")
        if not Path(index_dir).is_dir():

            raise IndexNotFound(f"index folder {index_dir} does not exist")
        store = IndexStore.open(index_dir, verify="sizes" if verify != "none" else "none", device=device, build_index=False)
        manifest = store.manifest
        approximate = bool(manifest.get("trained")) and not is_flat(store.index_spec)
        shard_faiss = [s.get("faiss") or {} for s in manifest["shards"]]
        if approximate and any(f.get("kind") != "sa_codes" for f in shard_faiss):
            store.close()
            raise ConfigError(f"sharded search supports exact and IVF indexes; this index is {store.index_spec}")
        engine = cls(store, None, device)
        if encoder is not None:
            from medcbir.encoders.runtime import open_encoder

            enc = open_encoder(encoder, device=device)
            _check_encoder(enc, store.encoder_info)
            engine._encoder = enc
        engine._started_ray = connect(ray)
        engine._refine_factor = None
        # a projected chain, or a re-rank from the shards, is re-ranked in each part (exact scores over
        # its own shards for the latter) and merged by those scores
        if approximate and split_refine(store.index_spec)[1] is not None and split_projection(store.index_spec)[0] is None \
                and not reranks_from_shards(store.index_spec):
            engine._refine_factor = float(store.search_params.get("k_factor") or 1.0)
        actor = _actor_class()
        inline = isinstance(manifest.get("deleted") or [], list)
        all_deleted = None if inline else deleted_ids(Path(index_dir), manifest, verify=False)
        engine._parts = []
        for run in split_shards(manifest["shards"], shards) if manifest["shards"] else []:
            part, lo = part_manifest(manifest, run)
            hi = lo + int(part["next_id"])
            deleted = None if all_deleted is None else all_deleted[(all_deleted >= lo) & (all_deleted < hi)] - lo
            if not inline:
                part["deleted"] = []
            engine._parts.append((lo, hi, actor.remote(str(Path(index_dir).absolute()), part, lo, verify, deleted)))
        try:
            ray_module.get([a.ready.remote() for _, _, a in engine._parts])
        except Exception as exc:  # noqa: BLE001 - an actor failed to open its part (e.g. a corrupt shard)
            engine.close()

            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, Exception) and hasattr(cause, "args") and cause.args:
                raise IndexCorrupt(str(cause.args[0]).splitlines()[0]) from None
            raise
        return engine

    @property
    def shards(self) -> int:
        """Number of actors holding parts of the index."""
        return len(self._parts)

    def search_groups(self, vectors, k, base, groups, index=None):
        """Like :meth:`Engine.search_groups`, fanned out to the actors (``index`` given: local)."""
        if index is not None:
            return super().search_groups(vectors, k, base, groups, index=index)
        import ray

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        group_list = [(key, list(map(int, rows))) for key, rows in groups.items()]
        ref = ray.put(vectors)
        futures = [
            actor.search.remote(ref, int(k), None if base is None else np.ascontiguousarray(base[lo:hi]), group_list, dict(self.knobs), self._refine_factor)
            for lo, hi, actor in self._parts
        ]
        answers = ray.get(futures)
        return merge(answers, int(k), self._refine_factor is not None, len(vectors))

    def region_index(self):
        """The actors' regions, scaled with the statistics of the whole index (:class:`ShardedRegions`)."""
        if getattr(self, "_region_index", None) is None:
            self._region_index = ShardedRegions(self)
        return self._region_index

    def set_search_params(self, **knobs) -> None:
        super().set_search_params(**knobs)
        if knobs.get("k_factor") and self._refine_factor is not None:
            self._refine_factor = float(knobs["k_factor"])

    def close(self) -> None:
        import ray

        for _, _, actor in getattr(self, "_parts", []):
            ray.kill(actor)
        self._parts = []
        super().close()
        if getattr(self, "_started_ray", False):
            ray.shutdown()
            self._started_ray = False


class ShardedRegions:
    """Region search over the actors: one metric from all parts' moments, each part searched,
    hits merged by score with every item once and the per-series cap applied across parts."""

    def __init__(self, engine: ShardedEngine) -> None:
        import ray


        check_regions(engine.store)
        self.engine = engine
        parts = ray.get([actor.region_moments.remote() for _, _, actor in engine._parts])
        if not engine.store.has_regions or any(p is None for p in parts):
            raise ConfigError(f"index {engine.store.index_dir} has no regions, so it cannot answer a region query; "
                              f"add them in place (`medcbir index ARCHIVE --out {engine.store.index_dir} --refresh-regions`) or build "
                              "a new index (`medcbir index ARCHIVE NEW_INDEX`: regions are on by default)")
        # every shard's moments added in shard order, as one process adds them
        dim = int(engine.store.manifest["regions"]["dim"])
        self.metric = RegionMetric.from_moments(*region_index.sum_moments([m for part in parts for m in part], dim))
        self.count = sum(ray.get([a.region_prepare.remote(self.metric.mean, self.metric.matrix) for _, _, a in engine._parts]))

    def __len__(self) -> int:
        return self.count

    def search(self, vector, k: int, admissible, codes=None, per_series: int = 0) -> list[tuple[int, float, tuple]]:
        import ray

        # A series may span parts: each part returns more than K under its own cap, the cap is
        # applied again over the merged hits.
        fetch = int(k) * 2 if per_series > 0 else int(k)
        futures = [actor.region_search.remote(vector, fetch, np.ascontiguousarray(admissible[lo:hi]),
                                              None if codes is None else np.ascontiguousarray(codes[lo:hi]), per_series)
                   for lo, hi, actor in self.engine._parts]
        hits = sorted((h for part in ray.get(futures) for h in part), key=lambda h: (-h[1], h[0]))
        out, per = [], {}
        for item, score, box in hits:
            if per_series > 0 and codes is not None:
                code = int(codes[item])
                if per.get(code, 0) >= per_series:
                    continue
                per[code] = per.get(code, 0) + 1
            out.append((item, score, box))
            if len(out) == k:
                break
        return out


def merge(answers: list[tuple], k: int, refine: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the parts' answers into (scores, ids) n×k, best first (-inf / -1 padding)."""
    scores_out = np.full((n, k), -np.inf, dtype=np.float32)
    ids_out = np.full((n, k), -1, dtype=np.int64)
    if not answers:
        return scores_out, ids_out
    scores = np.concatenate([a[0] for a in answers], axis=1)
    ids = np.concatenate([a[1] for a in answers], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    if refine:
        exact = np.concatenate([a[2] for a in answers], axis=1)
        depth = answers[0][0].shape[1]  # K × k_factor: the candidates one index would re-rank
        order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.where(ids >= 0, np.take_along_axis(exact, order, axis=1), -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    width = top_ids.shape[1]
    ids_out[:, :width] = np.where(np.isfinite(top_scores), top_ids, -1)
    scores_out[:, :width] = top_scores
    return scores_out, ids_out


def _index_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class IndexActor:
        """Holds one whole index (any spec, HNSW and projected chains included) and searches it."""

        def __init__(self, index_dir: str, verify: str, threads: int) -> None:
            if threads:
                faiss.omp_set_num_threads(int(threads))
            self.engine = Engine(IndexStore.open(index_dir, verify=verify))

        def ready(self) -> dict:
            store = self.engine.store
            return {"items": len(store.ids), "dim": store.dim, "spec": store.index_spec, "exact": bool(store.exact),
                    "open_seconds": store.open_seconds, "fingerprint": store.encoder_info["fingerprint"]}

        def search(self, vectors, k: int, knobs: dict):
            """(scores, local ids) of this index's live items, best first."""
            engine = self.engine
            engine.knobs = dict(knobs)
            live = engine.store.live_mask
            base = None if live.all() else live
            return engine.search_groups(vectors, int(k), base, {None: list(range(len(vectors)))})

        def meta(self, ids) -> list[dict]:
            return self.engine.store.meta(np.asarray(ids, dtype=np.int64))

        def pid(self) -> int:
            return os.getpid()

    return IndexActor


class ShardedIndexes:
    """Search over N separate indexes, one Ray actor each: how an archive too large for one
    machine is served (each machine builds and holds the index of its part of the archive).

    Each actor opens its index as it is (any spec: exact, IVF, projected chains, HNSW — the
    parts share nothing, so each may have its own trained quantiser) and answers with its own
    top-K; the driver merges by score. Items are named ``(part, id)``; :attr:`offsets` turn them
    into one numbering (``offsets[part] + id``), the ids one index over the parts' vectors
    concatenated in order would give. When every part is exact the merged top-K equals that one
    index's (the parts' top-K hold every item of the global top-K); approximate parts return
    each their own approximation, whose recall is each part's measured recall.

    All parts must hold embeddings of one encoder (same fingerprint and dimension).
    """

    @classmethod
    def open(cls, index_dirs, *, ray="local", verify: str = "checksums", threads: int = 0) -> "ShardedIndexes":
        """Start one actor per index folder and open them in parallel.

        Args:
            index_dirs: the indexes' folders (on a cluster, each where its actor's node sees it).
            ray: ``"local"``/True (start a local runtime) or a cluster address.
            verify: how each actor checks its index's files (``IndexStore.open``).
            threads: FAISS threads per actor (0: FAISS's default).

        Raises:
            ConfigError: no index, indexes of different encoders, or an unreachable cluster.
            IndexNotFound, IndexCorrupt: a part cannot be opened (named).
        """
        import ray as ray_module


        dirs = [Path(d) for d in index_dirs]
        if not dirs:
            raise ConfigError("sharded search needs at least one index")
        for d in dirs:
            if not (d / "manifest.json").is_file():
                raise IndexNotFound(f"index folder {d} holds no index")
        self = cls()
        self._started_ray = connect(ray)
        actor = _index_actor_class()
        self._actors = [actor.remote(str(d.absolute()), verify, int(threads)) for d in dirs]
        try:
            self.parts = ray_module.get([a.ready.remote() for a in self._actors])
        except Exception as exc:  # noqa: BLE001 - an actor failed to open its index
            self.close()
            cause = getattr(exc, "cause", None) or exc
            raise IndexCorrupt(str(getattr(cause, "args", [cause])[0]).splitlines()[0]) from None
        if len({(p["fingerprint"], p["dim"]) for p in self.parts}) > 1:
            self.close()
            raise ConfigError("sharded search over indexes of different encoders: " + ", ".join(
                f"{d} ({p['fingerprint'][:12]}, {p['dim']}-d)" for d, p in zip(dirs, self.parts)))
        self.index_dirs = dirs
        self.offsets = np.cumsum([0] + [p["items"] for p in self.parts])[:-1].astype(np.int64)
        self.knobs: dict = {}
        return self

    def __len__(self) -> int:
        return int(sum(p["items"] for p in getattr(self, "parts", [])))

    @property
    def exact(self) -> bool:
        """True when every part searches exactly (then answers equal one exact index's)."""
        return all(p["exact"] for p in self.parts)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` over all parts: (scores, parts, ids) each B×k, best first (padding: -inf, -1, -1)."""
        import ray

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ref = ray.put(vectors)
        answers = ray.get([a.search.remote(ref, int(k), dict(self.knobs)) for a in self._actors])
        scores = np.concatenate([a[0] for a in answers], axis=1)
        local = np.concatenate([a[1] for a in answers], axis=1)
        part = np.concatenate([np.full(a[1].shape, p, dtype=np.int64) for p, a in enumerate(answers)], axis=1)
        scores = np.where(local >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : int(k)]
        top = np.take_along_axis(scores, order, axis=1)
        found = np.isfinite(top)
        return (top, np.where(found, np.take_along_axis(part, order, axis=1), -1),
                np.where(found, np.take_along_axis(local, order, axis=1), -1))

    def global_ids(self, parts: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``(part, id)`` → ``offsets[part] + id`` (-1 stays -1)."""
        return np.where(ids >= 0, self.offsets[np.clip(parts, 0, None)] + ids, -1)

    def pids(self) -> list[int]:
        """Process ids of the actors, one per part (for measuring their memory)."""
        import ray

        return ray.get([a.pid.remote() for a in self._actors])

    def meta(self, part: int, ids) -> list[dict]:
        """Metadata of ``ids`` of one part (as ``IndexStore.meta``)."""
        import ray

        return ray.get(self._actors[int(part)].meta.remote(list(map(int, ids))))

    def close(self) -> None:
        import ray

        for actor in getattr(self, "_actors", []):
            ray.kill(actor)
        self._actors = []
        if getattr(self, "_started_ray", False):
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "ShardedIndexes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ShardedEngine", "ShardedIndexes", "merge", "part_manifest", "split_shards"]
