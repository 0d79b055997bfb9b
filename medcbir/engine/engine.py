"""The search engine: an open index plus its encoder, answering top-K queries.

Example:
    >>> engine = Engine.open("INDEX")
    >>> [hits] = engine.search(["1.2.826.0.1.3680043.8.498.1"], k=5, exclude="same-patient")
    >>> [(n.rank, round(n.score, 3), n.meta["sop_instance_uid"]) for n in hits]
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from medcbir.encoders.compat import check_compatible
from medcbir.encoders.spec import source_available
from medcbir.engine.filters import Filters, KeyLookup, check_exclude
from medcbir.engine.grouping import CASE_FIELDS, GROUP_COLUMNS, CaseHit, check_group_by, check_per_series, rank_groups, shaped_hits
from medcbir.engine.neighbour import MetaTable, Neighbour, plain
from medcbir.engine.prior import prior_exams
from medcbir.engine.queries import Query, QueryResolver, own_ids
from medcbir.engine.region_search import RegionIndex, resolve_region_query
from medcbir.engine.selectors import Route, Selection, is_exact, keep_admissible, route
from medcbir.errors import ConfigError, EncoderMismatch, IndexNotFound
from medcbir.indexer import IndexStore
from medcbir.indexer.faiss_index import apply_gpu_params, search_parameters

log = logging.getLogger(__name__)
#: Neighbours whose metadata is read together (whole result lists), on the first access of one.
NEIGHBOUR_BATCH = 1024


def _check_encoder(encoder, info: dict) -> None:
    """Refuse an encoder whose fingerprint differs from the one the index records."""
    check_compatible(encoder, info.get("fingerprint", ""), info.get("preprocessing"))


#: Columns :meth:`Engine.warm` builds: what a UID query with ``exclude=same-patient`` needs.
WARM_COLUMNS = ("sop_instance_uid", "patient_pseudonym")


class Engine:
    """Top-K retrieval over one committed generation of an index.

    Use :meth:`open`. Opening reads the manifest, the ids and the FAISS index (memory-mapped
    where FAISS can); it makes no Python object per item. The metadata stays in the shards:
    results' rows are read from them, and the columns that filters, exclusions, grouping and
    UID queries use are held as compact codes built on first use
    (:class:`~medcbir.indexer.columns.ShardColumns`). The encoder is loaded on first use
    (image/DICOM queries), so embedding and UID queries never pay for torch start-up.

    Args:
        store: an open ``medcbir.indexer.IndexStore``.
        encoder: an ``Encoder`` (already checked), or None to load the one the index records.
        device: the ``Device`` the encoder runs on (None = ``Device.auto()``).
    """

    def __init__(self, store, encoder=None, device=None) -> None:
        self.store = store
        self.device = device
        self._encoder = encoder
        self.index = store.faiss_index
        self.ids = np.asarray(store.ids, dtype=np.int64)
        self.dim = int(store.dim)
        # The metadata columns (ShardColumns): rows read from the shards, codes built on first use.
        self.columns = store.columns
        n = len(self.ids)
        # Ids are dense and in row order in every index the indexer writes; then id == row and
        # no lookup table is needed. Otherwise one int64 array maps ids to rows.
        self._dense = n == 0 or (int(self.ids[0]) == 0 and int(self.ids[-1]) == n - 1 and bool(np.all(np.diff(self.ids) == 1)))
        self.id_range = int(self.ids.max()) + 1 if n else 0
        if not self._dense:
            self._row_of_id = np.full(self.id_range, -1, dtype=np.int64)
            self._row_of_id[self.ids] = np.arange(n, dtype=np.int64)
        live_rows = np.asarray(store.live_mask, dtype=bool) if getattr(store, "live_mask", None) is not None else np.ones(n, bool)
        self.live = self.id_mask(live_rows)
        self._n_live = int(np.count_nonzero(live_rows))
        self.table = MetaTable(self.columns, self.rows_of, getattr(store, "source_path", None))
        self.lookup = KeyLookup(self.columns, self.ids)
        self.exact = bool(getattr(store, "exact", is_exact(self.index)))
        self.knobs: dict = {}
        # A GPU copy of the index, when the device has one and FAISS can move this index type.
        self.gpu_index = getattr(store, "gpu_index", None)
        self.last_route: Route | None = None
        manifest = getattr(store, "manifest", None) or {}
        self.recall: dict | None = manifest.get("recall") if not self.exact else None
        self._recall_warned = False
        self._masks: OrderedDict = OrderedDict()  # small LRU of filter masks

    # ------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, index_dir, encoder=None, device=None, verify: str = "checksums") -> "Engine":
        """Open an index for search in this process (:func:`medcbir.engine.opening.open_engine` also opens it sharded over Ray).

        Args:
            index_dir: the index folder (with ``manifest.json``).
            encoder: None (load the encoder recorded in the manifest, on first use), a path
                (checkpoint, ONNX, ``"default"``) or an ``Encoder``. One whose fingerprint
                differs from the index's raises :class:`~medcbir.errors.EncoderMismatch`.
            device: ``medcbir.device.Device`` for the encoder and FAISS; None = auto.
            verify: ``"checksums"`` (sha256 of every committed file: a damaged shard is named
                at open), ``"sizes"`` (existence and size only: fast on huge indexes) or ``"none"``.

        Raises:
            IndexNotFound: no index at ``index_dir``.
            IndexCorrupt: a shard or the manifest is damaged (the file is named).
            EncoderMismatch: ``encoder`` is not the index's encoder.
        """
        if not Path(index_dir).is_dir():
            raise IndexNotFound(f"index folder {index_dir} does not exist")
        store = IndexStore.open(index_dir, verify=verify, device=device)
        if encoder is not None:
            from medcbir.encoders.runtime import open_encoder

            encoder = open_encoder(encoder, device=device)
            _check_encoder(encoder, store.encoder_info)
            if encoder.dim != int(store.dim):
                raise EncoderMismatch(f"encoder gives {encoder.dim}-d embeddings, the index holds {store.dim}-d")
        return cls(store, encoder, device)

    @property
    def encoder(self):
        """The index's encoder (loaded from ``encoder_info["source"]`` on first access)."""
        if self._encoder is None:
            info = self.store.encoder_info
            source = info.get("source")
            if not source or source == "<module>":
                raise ConfigError("the index does not record where its encoder is; pass encoder=... (--encoder)")
            from medcbir.encoders.runtime import open_for_index

            if not source_available(source):
                raise ConfigError(f"the index's encoder {source} no longer exists; pass encoder=... (--encoder)")
            encoder = open_for_index(source, info.get("fingerprint", ""), self.device)
            _check_encoder(encoder, info)
            self._encoder = encoder
        return self._encoder

    @property
    def pseudonym_key(self) -> bytes | None:
        """The archive's pseudonym key (to compute a query file's patient pseudonym), if present."""
        try:
            return self.store.key()
        except (OSError, AttributeError):
            return None

    def __len__(self) -> int:
        return self._n_live

    def require_items(self) -> int:
        """The number of live items; raises when there is none (an empty archive was indexed,
        or every item was deleted): nothing can be searched, evaluated or explained."""
        if self._n_live == 0:
            where = getattr(self.store, "index_dir", None)
            raise ConfigError(f"the index{f' {where}' if where else ''} holds no live item: nothing to search "
                              "(was its archive empty? `medcbir index ARCHIVE --out INDEX` adds items)")
        return self._n_live

    def set_search_params(self, **knobs) -> None:
        """Default FAISS knobs for every search (``nprobe``, ``efSearch``, ``k_factor``)."""
        self.knobs.update({k: v for k, v in knobs.items() if v is not None})
        if self.gpu_index is not None:
            apply_gpu_params(self.gpu_index, {**getattr(self.store, "search_params", {}), **self.knobs})

    # ------------------------------------------------------------------------ ids ↔ rows
    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self._dense else self._row_of_id[ids]

    def id_mask(self, row_mask: np.ndarray) -> np.ndarray:
        """A row-aligned boolean mask as a mask over the id range."""
        if self._dense:
            return np.asarray(row_mask, dtype=bool)
        out = np.zeros(self.id_range, dtype=bool)
        out[self.ids[row_mask]] = True
        return out

    def meta(self, ids) -> list[dict]:
        """Metadata of items by id (``ItemMeta`` columns as plain Python values)."""
        self.ensure_checked(ids)
        return self.table.of_ids(ids)

    def source_path(self, recorded: str) -> str:
        """The file of a recorded ``source`` (a sealed folder record opened with the archive key);
        ``meta`` and neighbours already give it; URIs come back as they are."""
        resolve = getattr(self.store, "source_path", None)
        return resolve(recorded) if resolve is not None else recorded

    def meta_column(self, column: str, ids) -> list:
        """One metadata column of items by id, as plain Python values (read from the shards)."""
        return [plain(v) for v in self.columns.take(column, self.rows_of(ids)).tolist()]

    def embeddings(self, ids) -> np.ndarray:
        """Stored embeddings of items by id (B×D float32)."""
        return np.asarray(self.store.embeddings(np.asarray(ids, dtype=np.int64)), dtype=np.float32)

    def deleted_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return ids[~self.live[ids]]

    # ------------------------------------------------------------------------ masks
    def group_codes(self, column: str, ids, ordered: bool = False) -> tuple[np.ndarray, list | None]:
        """Group codes of items by id: equal codes exactly when their ``column`` values are equal
        (-1 where an id is -1, FAISS's padding).

        Returns:
            (int64 codes shaped like ``ids``, and with ``ordered`` the value of each code: codes
            then follow the values' sort order; else None).
        """
        ids = np.asarray(ids, dtype=np.int64)
        valid = ids >= 0
        codes, values = self.columns.groups(column, self.rows_of(ids[valid]), ordered=ordered)
        out = np.full(ids.shape, -1, dtype=np.int64)
        out[valid] = codes
        return out, values

    def filter_mask(self, filters: Filters) -> np.ndarray | None:
        """Id-range mask of live items passing ``filters``; None when every item passes."""
        if filters.empty and self._n_live == len(self.ids):
            return None
        key = filters
        if key not in self._masks:
            rows = np.ones(len(self.ids), dtype=bool)
            for column, values, upper in (
                ("modality", filters.modality, True),
                ("body_part", filters.body_part, True),
                ("series_instance_uid", filters.series, False),
                ("study_instance_uid", filters.study, False),
            ):
                if values:
                    rows &= self.columns.isin(column, values, upper=upper)
            self._masks[key] = self.id_mask(rows) & self.live
            while len(self._masks) > 8:
                self._masks.popitem(last=False)
        return self._masks[key]

    def exclusion_mask(self, column: str, value) -> np.ndarray:
        """Id-range mask of the items whose ``column`` equals ``value`` (to exclude): the rows the
        column's hash codes propose, confirmed against the stored values."""
        return self.id_mask(self.columns.equal(column, value))

    # ------------------------------------------------------------------------ search
    def embed(self, queries) -> np.ndarray:
        """Query embeddings (B×D float32, L2-normalised) for any mix of query kinds."""
        return self._embed(QueryResolver(self).resolve(queries))

    def _embed(self, queries: list[Query]) -> np.ndarray:
        out = np.empty((len(queries), self.dim), dtype=np.float32)
        to_embed = [i for i, q in enumerate(queries) if q.embedding is None]
        if to_embed:
            images = np.stack([queries[i].image for i in to_embed])
            out[to_embed] = self.encoder.embed(images)  # one batch for every image query
        for i, q in enumerate(queries):
            if q.embedding is not None:
                out[i] = q.embedding
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # The metric is cosine: given embeddings are normalised like stored ones.
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def search(
        self,
        queries,
        k: int = 10,
        *,
        exclude: str = "none",
        modality=None,
        body_part=None,
        series=None,
        study=None,
        per_series: int = 0,
        include_self: bool = False,
        roi=None,
        roi_mask=None,
        snap: bool = False,
    ) -> list[list[Neighbour]]:
        """The K nearest items of each query (or, with ``roi``, the K items with the nearest regions).

        Args:
            queries: DICOM paths, SOP UIDs in the index (``"UID"`` or ``"UID:frame"``),
                ``Item``/``Decoded`` objects, image arrays (C×S×S preprocessed or raw H×W),
                embeddings (D or B×D) — mixed freely; see ``medcbir.engine.queries``.
            k: neighbours per query.
            exclude: ``"none"``, ``"same-patient"`` (drop items of the query's patient) or
                ``"same-study"``; only applies to queries whose patient/study is known (files,
                decoded items, UIDs).
            modality, body_part, series, study: keep only items with these values (a value or
                a list of values each).
            per_series: at most this many neighbours of one series (0 = no limit); the K are
                then the best hits under that cap (``medcbir.engine.grouping``).
            include_self: also return a query's own item when the query is an item of the
                index (a UID, an indexed file or ``Item``); by default it is left out.
            roi: a region query: the box ``(x, y, w, h)`` in the query frame's stored pixel grid
                (x = column of its top-left corner); a list of boxes, one per query, for several.
                Each neighbour then carries its best-matching region (``Neighbour.region``, in its
                own pixel grid). Needs an index with regions (:mod:`medcbir.engine.region_search`)
                and queries whose image is at hand (a DICOM path, an indexed UID whose file is
                readable, an ``Item`` or an H×W array in modality units).
            roi_mask: instead of ``roi``, a mask (array, PNG or .npy path) on the query frame's grid.
            snap: replace each box by the structure it was drawn around, when one overlaps it.

        Returns:
            One list of :class:`Neighbour` per query, best first (fewer than K when fewer
            items pass the filters).

        Raises:
            DecodeError: a query file cannot be decoded.
            ConfigError: bad option, unknown UID, or an embedding of the wrong dimension.
        """
        check_exclude(exclude)
        if int(k) < 1:
            raise ConfigError(f"k must be ≥ 1, got {k}")
        # More neighbours than live items cannot be returned: k beyond them would only allocate
        # B×k answer slots (a huge -k costs memory and time, never answers).
        k = min(int(k), self.require_items())
        if roi is not None or roi_mask is not None:
            return self._search_regions(queries, k, roi, roi_mask, snap=snap, exclude=exclude, per_series=check_per_series(per_series),
                                        include_self=include_self, base=self.filter_mask(Filters.of(modality, body_part, series, study)))
        self._warn_low_recall()
        resolved = QueryResolver(self).resolve(queries)
        if not resolved:
            return []
        vectors = self._embed(resolved)
        base = self.filter_mask(Filters.of(modality, body_part, series, study))
        groups = self._group(resolved, exclude)
        own = [own_ids(q, include_self) for q in resolved]
        scores, ids = shaped_hits(self, vectors, int(k), base, groups, own=own, per_series=check_per_series(per_series))
        return self.neighbours(scores, ids)

    def region_index(self):
        """The index's regions, scaled and searchable (:class:`~medcbir.engine.region_search.RegionIndex`,
        built on first use); ConfigError naming the fix for an index without regions."""
        return RegionIndex.of(self)

    def _search_regions(self, queries, k, roi, roi_mask, *, snap, exclude, per_series, include_self, base) -> list[list[Neighbour]]:
        regions = self.region_index()
        if isinstance(queries, (str, Path, np.ndarray)) or not isinstance(queries, (list, tuple)):
            queries = [queries]
        queries = list(queries)
        boxes = _per_query(roi, len(queries), "roi") if roi is not None else [None] * len(queries)
        masks = _per_query(roi_mask, len(queries), "roi_mask") if roi_mask is not None else [None] * len(queries)
        codes = None
        if per_series > 0:
            codes = np.full(self.id_range, -1, dtype=np.int64)
            codes[self.ids] = self.columns.row_codes("series_instance_uid")
        column = {"same-patient": ("patient_pseudonym", "patient"), "same-study": ("study_instance_uid", "study")}.get(exclude)
        out = []
        for query, box, mask in zip(queries, boxes, masks):
            rq = resolve_region_query(self, query, box, mask, snap=snap)
            admissible = (self.live if base is None else base & self.live).copy()
            if column is not None and getattr(rq, column[1]):
                admissible &= ~self.exclusion_mask(column[0], getattr(rq, column[1]))
            if rq.item_id >= 0 and not include_self:
                admissible[rq.item_id] = False
            hits = regions.search(regions.metric(rq.descriptor)[0], k, admissible, codes, per_series)
            self.ensure_checked([item for item, _, _ in hits])
            neighbours = []
            rows = self.rows_of(np.array([item for item, _, _ in hits], dtype=np.int64)).tolist()
            batch = self.table.batch(rows)
            for rank, ((item, score, box), row) in enumerate(zip(hits, rows), 1):
                nb = Neighbour(item, score, rank, None, batch, int(row))
                nb.region = box
                nb.query_region = rq.box
                neighbours.append(nb)
            out.append(neighbours)
        return out

    def _warn_low_recall(self) -> None:
        """Warn once per engine when the index's measured recall@10 is below its target."""
        r = self.recall
        if self._recall_warned or not r or r.get("recall_at_10") is None:
            return
        self._recall_warned = True
        if float(r["recall_at_10"]) < float(r.get("target", 0.0)):
            log.warning(
                "index recall@10 is %.3f (measured on %s of its items with %s %s), below its target %.2f: "
                "searches may miss true neighbours; rebuild with --index-spec auto or a finer spec",
                float(r["recall_at_10"]), r.get("queries", "?"), r.get("spec", "?"), r.get("params", {}), float(r["target"]),
            )

    def search_cases(
        self,
        queries,
        k: int = 10,
        *,
        group_by: str = "study",
        exclude: str = "none",
        modality=None,
        body_part=None,
        series=None,
        study=None,
        per_group: int = 3,
        hits: int | None = None,
        include_self: bool = False,
    ) -> list[list[CaseHit]]:
        """The K most similar series or studies ("cases") for each query.

        Args:
            queries: a list of case queries; each is one query (as for :meth:`search`) or a
                list/tuple of queries forming one case, e.g. the slices of a series
                (:meth:`series_members`) or the files of a folder. Every image of every case is
                embedded in one batch.
            k: cases per query.
            group_by: ``"series"`` or ``"study"``.
            exclude, modality, body_part, series, study: as for :meth:`search`.
            per_group: best matching slices returned per case.
            hits: slice hits pooled per query slice before grouping (default ``max(100, 20·k)``).
            include_self: keep the query's own items among the hits.

        Returns:
            One list of :class:`~medcbir.engine.grouping.CaseHit` per case query, ranked by the
            rule of :func:`~medcbir.engine.grouping.rank_groups`.
        """
        check_exclude(exclude)
        check_group_by(group_by)
        if int(k) < 1 or int(per_group) < 1:
            raise ConfigError(f"k and per_group must be ≥ 1, got {k} and {per_group}")
        n_live = self.require_items()
        k = min(int(k), n_live)
        cases = [list(q) if isinstance(q, (list, tuple)) else [q] for q in _as_case_list(queries)]
        if any(not case for case in cases):
            raise ConfigError("a case query has no image (an empty series or folder?)")
        flat = [member for case in cases for member in case]
        resolved = QueryResolver(self).resolve(flat)
        vectors = self._embed(resolved)
        base = self.filter_mask(Filters.of(modality, body_part, series, study))
        pool = min(int(hits) if hits else max(100, 20 * int(k)), n_live)
        out, start = [], 0
        for case in cases:
            members = resolved[start : start + len(case)]
            rows = slice(start, start + len(case))
            start += len(case)
            own = np.unique(np.concatenate([own_ids(q, include_self) for q in members]))
            scores, ids = shaped_hits(self, vectors[rows], pool, base, self._group(members, exclude), own=[own] * len(members))
            # group codes of the pooled hits, in the order of their UIDs (the rule's tie-break)
            group_of, uids = self.group_codes(GROUP_COLUMNS[group_by], ids, ordered=True)
            ranked = rank_groups(scores, ids, group_of, int(k), int(per_group))
            out.append([self._case_hit(group_by, str(uids[code]), score, rank, n, slices) for rank, (code, score, n, slices) in enumerate(ranked, 1)])
        return out

    def _case_hit(self, group_by: str, uid: str, score: float, rank: int, n_hits: int, slices: list) -> CaseHit:
        ids = [i for i, _ in slices]
        rows = self.rows_of(np.array(ids, dtype=np.int64)).tolist()
        batch = self.table.batch(rows)
        neighbours = [Neighbour(i, s, r, None, batch, int(row)) for r, ((i, s), row) in enumerate(zip(slices, rows), 1)]
        meta = neighbours[0].meta if neighbours else {}
        return CaseHit(group_by, uid, score, rank, n_hits, neighbours, {c: meta.get(c) for c in CASE_FIELDS})

    def series_members(self, series_uid: str) -> list[str]:
        """The live items of a series in the index as ``"UID:frame"`` queries, head to feet.

        Ordered by slice position (descending z, then instance number): one case query for
        :meth:`search_cases`. Raises ``ConfigError`` for a series the index does not hold.
        """
        rows = np.flatnonzero(self.columns.equal("series_instance_uid", str(series_uid)) & self.live[self.ids])
        if not len(rows):
            raise ConfigError(f"series {series_uid} has no live item in the index")
        z = np.asarray(self.columns.take("slice_position", rows), dtype=np.float64)
        inst = np.asarray(self.columns.take("instance_number", rows), dtype=np.int64)
        rows = rows[np.lexsort((inst, -np.nan_to_num(z, nan=-np.inf)))]
        uids = self.columns.take("sop_instance_uid", rows)
        frames = self.columns.take("frame", rows)
        return [f"{u}:{int(f)}" for u, f in zip(uids.tolist(), frames.tolist())]

    def prior(self, query, *, modality=None, context: str = "series"):
        """The query patient's other studies, each with the slice nearest in anatomy.

        See :func:`medcbir.engine.prior.prior_exams` (this is a shortcut for it).
        """
        return prior_exams(self, query, modality=modality, context=context)

    def _group(self, queries: list[Query], exclude: str) -> dict:
        """Queries sharing an exclusion → one FAISS search each: {(column, value) | None: [query idx]}."""
        column = {"same-patient": ("patient_pseudonym", "patient"), "same-study": ("study_instance_uid", "study"),
                  "same-series": ("series_instance_uid", "series")}.get(exclude)
        groups: dict = {}
        for i, q in enumerate(queries):
            key = None
            if column is not None and getattr(q, column[1]):
                key = (column[0], getattr(q, column[1]))
            groups.setdefault(key, []).append(i)
        return groups

    def search_groups(self, vectors: np.ndarray, k: int, base: np.ndarray | None, groups: dict, index=None) -> tuple[np.ndarray, np.ndarray]:
        """Search ``vectors`` in groups, each with its own selector; returns (scores, ids) B×k.

        Args:
            vectors: B×D query embeddings.
            k: neighbours per query.
            base: admissible id-range mask shared by all groups (None = every item).
            groups: ``{None | (column, value): [row indices into vectors]}``; a (column, value)
                key excludes the items with that value.
            index: the FAISS index to search (default: the engine's; evaluation passes an
                exact index to measure recall).
        """
        gpu = self.gpu_index if index is None else None  # evaluation's exact index stays on the CPU
        index = self.index if index is None else index
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for key, members in groups.items():
            mask = base
            if key is not None:
                excluded = self.exclusion_mask(*key)
                mask = (self.live if base is None else base) & ~excluded
            rows = np.asarray(members, dtype=np.int64)
            q = vectors if len(rows) == len(vectors) else np.ascontiguousarray(vectors[rows])
            admissible = None if mask is None else float(np.count_nonzero(mask)) / max(1, len(self.ids))
            k_factor = float(self.knobs.get("k_factor") or getattr(self.store, "search_params", {}).get("k_factor") or 1.0)
            plan = route(k, gpu=gpu is not None, admissible=admissible, n_items=len(self.ids), k_factor=k_factor)
            self.last_route = plan
            if plan.path == "gpu":
                # GPU indexes ignore selectors: over-fetch without one, keep admissible ids here,
                # and re-search on the CPU (with the selector) any row left short.
                d, i = gpu.search(q, plan.fetch)
                short = np.zeros(len(rows), dtype=bool)
                if mask is not None:
                    d, i, short = keep_admissible(d, i, mask, k)
                    short &= plan.fetch < len(self.ids)
                else:
                    d, i = d[:, :k], i[:, :k]
                scores[rows], ids[rows] = d, i
                if not short.any():
                    continue
                rows, q = rows[short], np.ascontiguousarray(q[short])
            d, i = self._search_cpu(index, q, k, mask)
            scores[rows], ids[rows] = d, i
        self.ensure_checked(ids[ids >= 0])
        return scores, ids

    def ensure_checked(self, ids) -> None:
        """Hold an answer until the shards of ``ids`` have matched their checksums (at once
        unless the open deferred them: :mod:`medcbir.indexer.deferred_checks`)."""
        check = getattr(self.store, "ensure_checked", None)
        if check is not None:
            check(self.rows_of(np.asarray(ids, dtype=np.int64)))

    def _search_cpu(self, index, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One FAISS search on the CPU index with the filters applied inside FAISS (a selector)."""
        keep: list = []
        selection = Selection(mask) if mask is not None else None
        params = None
        if selection is not None or self.knobs:
            # Nothing to select and no knob to change: FAISS's own defaults, no parameter objects.
            params = search_parameters(index, self.knobs, selection.selector if selection else None, keep)
        d, i = index.search(q, k, params=params) if params is not None else index.search(q, k)
        del keep, selection  # FAISS pointed into these until the search returned
        return d, i

    def neighbours(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Neighbour]]:
        """FAISS (scores, ids) as :class:`Neighbour` lists (missing results dropped)."""
        n, k = ids.shape
        flat_ids = ids.ravel().tolist()
        rows = flat_ids if self._dense else self.rows_of(np.where(ids >= 0, ids, 0)).ravel().tolist()
        # One C-level map over all B×k results (no per-row Python loop building objects); the
        # metadata of a batch of result lists is read together when one of them is first asked.
        per = max(1, NEIGHBOUR_BATCH // max(1, k)) * k
        batches = itertools.chain.from_iterable(itertools.repeat(self.table.batch(rows[lo:lo + per]), min(per, n * k - lo)) for lo in range(0, n * k, per))
        flat = list(map(Neighbour, flat_ids, scores.ravel().tolist(), itertools.cycle(range(1, k + 1)), itertools.repeat(None), batches, rows))
        out = [flat[i * k : (i + 1) * k] for i in range(n)]
        if k and n and bool((ids[:, -1] < 0).any()):  # FAISS pads with -1 when fewer than k are admissible
            out = [[nb for nb in hits if nb.id >= 0] if hits[-1].id < 0 else hits for hits in out]
        return out

    def warm(self, columns=WARM_COLUMNS) -> threading.Thread:
        """Build, in a background thread, what the first queries would otherwise build: the SOP
        Instance UID lookup (a UID query), the patient hashes (``exclude=same-patient``), the
        shards' string widths (reading metadata rows) and the stored rows' memory maps (re-ranking).
        At 10M items that is seconds a query would wait for; a long-lived server (the Orthanc
        plugin) calls this right after opening. A query arriving meanwhile waits for the column it
        needs (the codes are built under the columns' lock, once). Returns the (daemon) thread.
        """
        steps = [(name, lambda name=name: self.columns.codes(name)) for name in columns if name in self.columns]
        steps += [("string widths", getattr(self.columns, "prepare", None)), ("stored rows", getattr(self.store, "prepare_reads", None))]

        def build() -> None:
            for what, step in steps:
                try:
                    if step is not None:
                        step()
                except Exception as exc:  # noqa: BLE001 - an optimisation: the query builds it, or reports the error
                    log.debug("warming %s: %s: %s", what, exc.__class__.__name__, exc)
                    return

        thread = threading.Thread(target=build, name="medcbir-warm", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Release the shard files (the engine must not be searched afterwards)."""
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.store.encoder_info
        return f"Engine({len(self)} live items, dim={self.dim}, spec={json.dumps(getattr(self.store, 'index_spec', '?'))}, encoder={str(info.get('fingerprint', ''))[:12]})"


def _per_query(value, n: int, name: str) -> list:
    """One box (or mask) for every query, or a list of one per query."""
    if name == "roi" and len(value) and not isinstance(value[0], (list, tuple, np.ndarray)):
        return [value] * n
    if name == "roi_mask" and (isinstance(value, (str, Path)) or (isinstance(value, np.ndarray) and value.ndim == 2)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ConfigError(f"{n} queries but {len(value)} regions ({name}): give one region, or one per query")
    return value


def _as_case_list(queries) -> list:
    """A single case (a path, UID, array...) as a one-element list of cases."""
    if isinstance(queries, (str, Path)) or not isinstance(queries, (list, tuple)):
        return [queries]
    return list(queries)


__all__ = ["Engine"]
