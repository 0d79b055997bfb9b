"""Search results: a neighbour (id, score, rank) and its item's metadata as plain Python values.

The metadata of a neighbour is read from the index's shards on first access, for all the
neighbours of its batch at once (:class:`RowBatch`), so a batch search returns quickly even with
thousands of neighbours nobody looks at the metadata of, and reading the metadata of a result
list costs one grouped read per shard rather than one per row.
"""

from __future__ import annotations

import math

import numpy as np


def plain(value):
    """A numpy scalar/array/bytes value as a plain Python value (str, int, float, tuple)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return tuple(plain(v) for v in value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    return value


class MetaTable:
    """Row access to the metadata of an index's rows.

    Args:
        columns: the index's :class:`~medcbir.indexer.columns.ShardColumns` (rows read from the
            shards), or a mapping of column name → numpy array (first axis = rows).
        row_of_id: callable mapping an int64 id array to row indices.
        source_path: maps a recorded ``source`` to the file's path (sealed records are opened
            with the archive key: ``IndexStore.source_path``), or None to show records as stored.
    """

    def __init__(self, columns, row_of_id, source_path=None) -> None:
        self.columns = columns
        self.row_of_id = row_of_id
        self.source_path = source_path

    def row(self, row: int) -> dict:
        """The metadata of one row as ``{column: plain value}``."""
        return self.rows(np.array([row], dtype=np.int64))[0]

    def rows(self, rows: np.ndarray) -> list[dict]:
        """Metadata of many rows (read together: one grouped read per shard and column)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        read = getattr(self.columns, "rows", None)
        if read is not None:
            out = read(rows)
        else:
            out = [{name: plain(col[r]) for name, col in self.columns.items()} for r in rows.tolist()]
        if self.source_path is not None:
            for meta in out:
                if "source" in meta:
                    meta["source"] = self.source_path(meta["source"])
        return out

    def of_ids(self, ids) -> list[dict]:
        return self.rows(self.row_of_id(np.asarray(ids, dtype=np.int64)))

    def batch(self, rows) -> "RowBatch":
        """A :class:`RowBatch` of ``rows`` (read on the first access of any of them)."""
        return RowBatch(self, rows)


class RowBatch:
    """The rows of a batch of neighbours: the first neighbour whose metadata is asked reads
    every row of the batch at once; each neighbour then gets its own dict.

    Args:
        table: the :class:`MetaTable`.
        rows: the rows of the batch (repeats and -1 padding allowed).
    """

    __slots__ = ("table", "_rows", "_metas")

    def __init__(self, table: MetaTable, rows) -> None:
        self.table = table
        self._rows = rows
        self._metas: dict[int, dict] | None = None

    def row(self, row: int) -> dict:
        if self._metas is None or row not in self._metas:
            rows = np.unique(np.asarray(self._rows, dtype=np.int64))
            rows = rows[rows >= 0]
            if row not in set(rows.tolist()):
                rows = np.array([row], dtype=np.int64)
            metas = dict(zip(rows.tolist(), self.table.rows(rows)))
            self._metas = metas if self._metas is None else {**self._metas, **metas}
        return dict(self._metas[row])


class Neighbour:
    """One retrieved item.

    Attributes:
        id: the item's int64 id in the index.
        score: similarity (inner product of L2-normalised embeddings = cosine; higher is closer).
        rank: 1-based rank within its query's result list.
        meta: the item's metadata (``ItemMeta`` columns) as plain Python values.
        region: for a region query, the matched region ``(x, y, w, h)`` in the item's stored
            pixel grid (None otherwise); ``query_region``: the query's box it matched.
    """

    __slots__ = ("id", "score", "rank", "_meta", "_table", "_row", "region", "query_region")

    def __init__(self, id: int, score: float, rank: int, meta: dict | None = None, table: MetaTable | RowBatch | None = None,
                 row: int = -1) -> None:
        # Plain Python numbers expected (the engine passes ``tolist()`` values): no conversion
        # here keeps building thousands of neighbours per batch cheap.
        self.id = id
        self.score = score
        self.rank = rank
        self._meta = meta
        self._table = table
        self._row = row
        self.region = None
        self.query_region = None

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = self._table.row(self._row) if self._table is not None else {}
        return self._meta

    def to_dict(self) -> dict:
        """``{"id", "score", "rank", **meta}``; NaN floats become None (valid JSON)."""
        out = {"id": self.id, "score": self.score, "rank": self.rank}
        if self.region is not None:
            out["region"] = [int(v) for v in self.region]
            out["query_region"] = [int(v) for v in self.query_region] if self.query_region is not None else None
        for key, value in self.meta.items():
            if isinstance(value, float) and math.isnan(value):
                value = None
            elif isinstance(value, tuple):
                value = [None if isinstance(v, float) and math.isnan(v) else v for v in value]
            out[key] = value
        return out

    def __eq__(self, other) -> bool:
        if not isinstance(other, Neighbour):
            return NotImplemented
        return (self.id, self.score, self.rank) == (other.id, other.score, other.rank)

    def __repr__(self) -> str:
        uid = self.meta.get("sop_instance_uid", "?")
        return f"Neighbour(rank={self.rank}, id={self.id}, score={self.score:.4f}, sop={uid}, frame={self.meta.get('frame', 0)})"
