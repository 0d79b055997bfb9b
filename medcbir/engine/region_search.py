"""Region search: the regions of indexed images nearest to a region of a query image.

An index with regions stores, for every item, the boxes of the structures that stand out in it
and their descriptors (:mod:`medcbir.encoders.regions`). A region query describes the user's box
the same way and ranks the index's *regions*; each item is answered once, with its best-matching
region, and the usual filters (exclusion, modality/body part/series/study, per-series cap, the
query's own item) apply to the items.

Descriptors are compared by Euclidean distance with their intensity coordinates on a compressed
scale (linear within ±30 units, logarithmic beyond, so tens of units between soft-tissue structures
count beside the hundreds between tissues), after whitening with a floor (:class:`RegionMetric`):
centred, rotated onto their principal axes, each axis divided by its spread, or by the mean spread
of all axes when its own is smaller. Large differences of level
(fat, soft tissue, bone) then do not swamp size, texture and shape, and directions the archive
barely varies in, such as the sum of the rim harmonics, are not blown up into the largest
coordinates, as plain whitening (the metric before ``floored-v1``) did: a lesion seen at another
field of view then moved further than the distance to its neighbours. The
statistics come from the moments of all of the index's regions, stored per shard when shards are
committed (:mod:`medcbir.indexer.region_index`; parts add up: a sharded engine gets the same
numbers), so they follow the archive as it grows, and any two processes opening one generation
get the same numbers.

The score of a hit is ``1 / (1 + d² / D)`` (D = descriptor length): 1 for an identical region,
about 1/3 for two regions drawn at random from the index (scaled, their expected d² is 2D).

Up to :data:`FLAT_MAX` regions are searched exactly; a larger region index is searched with an
inverted-file index (``IVF``) whose probe count reaches :data:`TARGET_RECALL` on a sample of its
own regions, trained and stored when shards are committed (an index written before that trains it
at its first region query, :func:`build_region_index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from medcbir.encoders.regions import REGIONS_VERSION, describe_query, mask_box
from medcbir.engine.queries import UID_QUERY
from medcbir.engine.selectors import Selection
from medcbir.errors import ConfigError, DecodeError, IndexCorrupt
from medcbir.imaging import read_dicom
from medcbir.imaging.items import Decoded, Item, ItemMeta
from medcbir.indexer import region_index
from medcbir.indexer.region_index import (FLAT_MAX, METRIC, TARGET_RECALL, RegionMetric, StoredIVF,  # noqa: F401 - part of this module's API
                                          build_region_index, moments)

#: At least this share of the items admissible: a region query searches every region and drops the
#: inadmissible hits; below it, a FAISS selector over the regions keeps them out of the search.
POSTFILTER_SHARE = 0.5


def check_regions(store) -> None:
    """ConfigError naming the fix when ``store`` has no regions, or regions another region recipe made."""
    where = getattr(store, "index_dir", "")
    if not getattr(store, "has_regions", False):
        raise ConfigError(f"index {where} has no regions, so it cannot answer a region query; "
                          f"add them in place (`medcbir index ARCHIVE --out {where} --refresh-regions`) or build a new index "
                          "(`medcbir index ARCHIVE NEW_INDEX`: regions are on by default)")
    made_by = (store.manifest.get("regions") or {}).get("version")
    if made_by != REGIONS_VERSION:
        raise ConfigError(f"index {where} stores regions made by {made_by!r}, and this medcbir describes regions as "
                          f"{REGIONS_VERSION!r}: the two do not compare; re-describe them in place "
                          f"(`medcbir index ARCHIVE --out {where} --refresh-regions`, the slices are not embedded again)")


class RegionIndex:
    """The regions of one open engine, scaled and indexed (opened on first region query).

    Opening reads the shards' regions one shard at a time and keeps only what search needs: each
    region's item id and box, and the FAISS index of its scaled vector (float32 when searched
    exactly, float16 in an IVF above :data:`FLAT_MAX` regions); descriptors are not kept.

    Attributes:
        item_ids: int32 (R,) the item each region belongs to (int64 beyond 2^31 items).
        boxes: int16 (R, 4) the regions' boxes in their items' stored pixel grids (int32 when a
            coordinate does not fit).
        metric: the :class:`RegionMetric` of this index's regions.
        dim: the descriptor length.
        stored: True when the metric and the search index came from the index's stored
            region structure (:mod:`medcbir.indexer.region_index`), nothing computed at open.
    """

    def __init__(self, regions, metric: RegionMetric | None = None, ivf: StoredIVF | None = None, stored: bool = False) -> None:
        descriptors = np.asarray(regions.descriptors, dtype=np.float32)
        metric = metric if metric is not None else RegionMetric.fit(descriptors)
        self._build(lambda: iter([regions]), len(regions.rows), descriptors.shape[1] if descriptors.ndim == 2 else len(metric.mean),
                    metric, ivf, stored)

    def _build(self, parts, total: int, dim: int, metric: RegionMetric, ivf: StoredIVF | None, stored: bool) -> None:
        """Index ``total`` regions read from ``parts()`` (an iterable of :class:`ShardRegions` with
        global rows), scaled by ``metric``."""
        self.metric = metric
        self.dim = int(dim)
        self.coarse = None  # (A, b): the query carried into a stored IVF's own metric
        self._direct = False
        ids, boxes = [], []
        use_stored = ivf is not None and ivf.lists is not None and len(ivf.lists) == total
        if use_stored:
            self.index = ivf.empty_index()
            self.coarse = ivf.coarse_map(metric)
            at = 0
            for part in parts():
                n = len(part.rows)
                region_index.fill_at(self.index, metric(part.descriptors), at, ivf.lists[at:at + n])
                ids.append(part.rows)
                boxes.append(part.boxes)
                at += n
        elif total <= FLAT_MAX:
            self.index = faiss.IndexFlatL2(self.dim)
            for part in parts():
                if len(part.rows):
                    self.index.add(metric(part.descriptors))
                ids.append(part.rows)
                boxes.append(part.boxes)
        else:  # an IVF to train now (an index written before the structure was stored): every vector at once
            vectors = []
            for part in parts():
                vectors.append(metric(part.descriptors))
                ids.append(part.rows)
                boxes.append(part.boxes)
            self.index = build_region_index(np.concatenate(vectors))
            del vectors
        self.item_ids = _compact(np.concatenate(ids) if ids else np.zeros(0, np.int64), (np.int32, np.int64))
        self.boxes = _compact(np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.int32), (np.int16, np.int32))
        self.stored = bool(stored and (use_stored or not isinstance(self.index, faiss.IndexIVF)))

    @classmethod
    def open(cls, store) -> "RegionIndex":
        """The regions of an opened :class:`~medcbir.indexer.IndexStore`, with its stored structure."""
        check_regions(store)
        structure = region_index.load(store)
        return cls.from_store(store, structure.metric(), structure.ivf, structure.stored)

    @classmethod
    def from_store(cls, store, metric: RegionMetric, ivf: StoredIVF | None = None, stored: bool = False) -> "RegionIndex":
        """The regions of ``store`` read shard by shard, scaled by ``metric``."""
        self = cls.__new__(cls)
        self._build(store.region_parts, store.region_count(), int(store.manifest["regions"]["dim"]), metric, ivf, stored)
        return self

    @classmethod
    def of(cls, engine) -> "RegionIndex":
        cached = getattr(engine, "_region_index", None)
        if cached is not None:
            return cached
        engine._region_index = cls.open(engine.store)
        return engine._region_index

    def vectors_of(self, rows) -> np.ndarray:
        """float32 (n, dim): the scaled vectors of regions ``rows`` as the index holds them (an
        IVF's decoded from float16; the first call there maps ids to lists)."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if isinstance(self.index, faiss.IndexIVF):
            if not self._direct:
                self.index.make_direct_map()
                self._direct = True
            return np.stack([self.index.reconstruct(int(r))[:self.dim] for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(rows) if len(rows) else np.zeros((0, self.dim), np.float32)

    def memory_bytes(self) -> int:
        """Bytes this structure holds for search: item ids, boxes and the FAISS index's vectors or codes, ids and centroids."""
        n = len(self.item_ids)
        if isinstance(self.index, faiss.IndexIVF):
            held = n * (int(self.index.code_size) + 8) + int(self.index.nlist) * int(self.index.d) * 4
        else:
            held = n * self.dim * 4
        return int(self.item_ids.nbytes + self.boxes.nbytes + held)

    def __len__(self) -> int:
        return len(self.item_ids)

    def score(self, distances: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.maximum(distances, 0.0) / self.dim)

    def search(self, vector: np.ndarray, k: int, admissible: np.ndarray, per_series_codes: np.ndarray | None = None,
               per_series: int = 0) -> list[tuple[int, float, int]]:
        """The best region of each of the ``k`` nearest admissible items.

        Args:
            vector: the scaled query descriptor.
            k: items wanted.
            admissible: bool over item ids (live, filtered, not excluded, not the query's own).
            per_series_codes: series code of each item id (with ``per_series``).
            per_series: at most this many items of one series (0 = no limit).

        Returns:
            ``(item id, score, region box)``, best first.
        """
        if not len(self.item_ids):
            return []
        share = float(np.count_nonzero(admissible)) / max(1, len(admissible))
        keep: list = []
        if share >= POSTFILTER_SHARE:
            # Most items admissible (the usual case: only the query's patient or study left out):
            # search every region and drop the inadmissible hits, instead of building a selector
            # over every region for one query (a gather and a bitmap over millions of regions).
            region_mask, total = None, len(self.item_ids)
            params = faiss.SearchParametersIVF(nprobe=self.index.nprobe) if isinstance(self.index, faiss.IndexIVF) else None
        else:
            region_mask = admissible[self.item_ids]
            total = int(np.count_nonzero(region_mask))
            if total == 0:
                return []
            selection = Selection(region_mask)
            keep.append(selection)
            params = faiss.SearchParametersIVF(sel=selection.selector, nprobe=self.index.nprobe) \
                if isinstance(self.index, faiss.IndexIVF) else faiss.SearchParameters(sel=selection.selector)
        fetch = max(4 * k, 64)
        fetch = min(total, fetch if region_mask is not None else int(fetch / share) + 1)  # dropped hits: fetch more
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        coarse = None
        if self.coarse is not None:  # a stored IVF: lists chosen in its own metric
            _, coarse = self.index.quantizer.search(region_index.padded(query @ self.coarse[0] + self.coarse[1], self.index.d),
                                                    int(self.index.nprobe))
        query = region_index.padded(query, self.index.d)
        while True:
            if coarse is None:
                d, rows = self.index.search(query, fetch, params=params)
            else:
                d, rows = np.empty((1, fetch), np.float32), np.empty((1, fetch), np.int64)
                self.index.search_preassigned_c(1, faiss.swig_ptr(query), fetch, faiss.swig_ptr(coarse),
                                                faiss.swig_ptr(np.zeros(coarse.shape, np.float32)), faiss.swig_ptr(d),
                                                faiss.swig_ptr(rows), False, params)
            found_d, found_rows = d[0], rows[0]
            if region_mask is None:
                valid = found_rows >= 0
                ok = valid.copy()
                ok[valid] = admissible[self.item_ids[found_rows[valid]]]
                found_d, found_rows = found_d[ok], found_rows[ok]
            hits = _best_per_item(found_d, found_rows, self.item_ids, k, per_series_codes, per_series)
            if len(hits) >= k or fetch >= total or rows[0, -1] < 0:
                break
            fetch = min(total, fetch * 4)
        del keep
        return [(item, float(self.score(np.float32(dist))), tuple(int(v) for v in self.boxes[row])) for item, dist, row in hits]


def _compact(values: np.ndarray, types) -> np.ndarray:
    """``values`` in the first integer type of ``types`` that holds them all."""
    for kind in types:
        info = np.iinfo(kind)
        if not len(values) or (int(values.min()) >= info.min and int(values.max()) <= info.max):
            return np.ascontiguousarray(values, dtype=kind)
    return np.ascontiguousarray(values)


def _best_per_item(distances, rows, item_ids, k, codes, per_series) -> list[tuple[int, float, int]]:
    out, seen, per = [], set(), {}
    for dist, row in zip(distances.tolist(), rows.tolist()):
        if row < 0:
            break
        item = int(item_ids[row])
        if item in seen:
            continue
        if per_series > 0 and codes is not None:
            code = int(codes[item])
            if per.get(code, 0) >= per_series:
                continue
            per[code] = per.get(code, 0) + 1
        seen.add(item)
        out.append((item, dist, row))
        if len(out) == k:
            break
    return out


@dataclass
class RegionQuery:
    """A region query resolved: its frame, its box, its descriptor and who it belongs to."""

    label: str
    box: tuple[int, int, int, int]
    descriptor: np.ndarray
    item_id: int = -1
    patient: str = ""
    study: str = ""
    series: str = ""


def resolve_region_query(engine, query, roi=None, roi_mask=None, *, snap: bool = False) -> RegionQuery:
    """Describe the region of a query (a DICOM path, an indexed UID, an ``Item``, or an H×W array).

    Args:
        roi: ``(x, y, w, h)`` in the query frame's stored pixel grid.
        roi_mask: instead of ``roi``, a mask (array, PNG or .npy path) on that grid; its bounding box is the region.
        snap: replace the box by the structure it was drawn around (see :func:`~medcbir.encoders.regions.describe_query`).
    """
    item, label = _query_item(engine, query)
    if (roi is None) == (roi_mask is None):
        raise ConfigError("a region query needs exactly one of a box (--roi X,Y,W,H) and a mask (--roi-mask FILE)")
    box = roi if roi is not None else mask_box(roi_mask, item.pixels.shape)
    descriptor, box = describe_query(item, box, snap=snap)
    out = RegionQuery(label=label, box=box, descriptor=descriptor, patient=item.meta.patient_pseudonym,
                      study=item.meta.study_instance_uid, series=item.meta.series_instance_uid)
    uid = item.meta.sop_instance_uid
    if uid:
        own = int(engine.lookup.find([uid], [int(item.meta.frame)])[0])
        if own >= 0 and bool(engine.live[own]):
            out.item_id = own
            row = engine.meta([own])[0]
            out.patient = row.get("patient_pseudonym", "") or out.patient
            out.study = row.get("study_instance_uid", "") or out.study
    return out


def _query_item(engine, query):
    """(Item in modality units, label) of a region query."""
    if isinstance(query, Item):
        return query, query.meta.sop_instance_uid or "query"
    if isinstance(query, Decoded):
        image = np.asarray(query.image)
        if image.ndim != 2:
            raise ConfigError("a region query needs the frame in modality units (an H×W image), not a preprocessed one")
        return Item(query.meta, image.astype(np.float32)), query.meta.sop_instance_uid or "query"
    if isinstance(query, np.ndarray):
        if query.ndim != 2:
            raise ConfigError(f"a region query image must be H×W in modality units, not shape {query.shape}")
        return Item(ItemMeta(sop_instance_uid=""), np.asarray(query, dtype=np.float32)), "array"
    text = str(query)
    match = UID_QUERY.match(text)
    path = Path(text)
    frame = 0
    if match and not path.exists():
        ids = engine.lookup.find([match["uid"]], [int(match["frame"] or 0)])
        if ids[0] < 0:
            raise ConfigError(f"query {text} is not a SOP Instance UID in the index (nor a file)")
        meta = engine.meta(ids)[0]
        path, frame = Path(str(meta.get("source", ""))), int(match["frame"] or 0)
        if not path.is_file():
            raise DecodeError(f"query {text}: its file {path} is not readable here; a region query needs the image itself")
    elif not path.is_file():
        raise DecodeError(f"query {path} is neither a readable file nor a SOP Instance UID")
    try:
        items = read_dicom(path, key=engine.pseudonym_key)
    except DecodeError as exc:
        raise DecodeError(f"cannot decode query {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a reader bug must still be one line
        raise DecodeError(f"cannot decode query {path}: {exc.__class__.__name__}: {exc}") from None
    if frame >= len(items):
        raise IndexCorrupt(f"query {text}: its file has {len(items)} frames, not frame {frame}")
    return items[frame], (text if match else str(path))
