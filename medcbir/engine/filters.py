"""Which items a query may retrieve: metadata filters, tombstones and per-query exclusions.

Everything here is a boolean mask over the *id range* (``mask[id]``), computed with numpy on the
index's column arrays and handed to FAISS as an ``IDSelectorBitmap`` (see ``selectors``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcbir.errors import ConfigError

EXCLUDES = ("none", "same-patient", "same-study", "same-series")


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Filters:
    """Metadata filters shared by every query of a call (each: None = no constraint).

    Args:
        modality: allowed modalities (e.g. ``"CT"`` or ``["CT", "MR"]``).
        body_part: allowed BodyPartExamined values (case-insensitive, e.g. ``"ABDOMEN"``).
        series: allowed SeriesInstanceUIDs.
        study: allowed StudyInstanceUIDs.
    """

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    study: tuple[str, ...] = ()

    @classmethod
    def of(cls, modality=None, body_part=None, series=None, study=None) -> "Filters":
        return cls(
            tuple(m.upper() for m in _as_tuple(modality)),
            tuple(b.upper() for b in _as_tuple(body_part)),
            _as_tuple(series),
            _as_tuple(study),
        )

    @property
    def empty(self) -> bool:
        return not (self.modality or self.body_part or self.series or self.study)


def check_exclude(exclude: str) -> str:
    if exclude not in EXCLUDES:
        raise ConfigError(f"exclude must be one of {', '.join(EXCLUDES)}, not {exclude!r}")
    return exclude


def column_is_in(column: np.ndarray, values: tuple[str, ...], upper: bool = False) -> np.ndarray:
    """Row mask: ``column[row]`` is one of ``values`` (string columns of any numpy flavour)."""
    col = np.asarray(column)
    if col.dtype.kind == "S":
        wanted = np.array([v.encode() for v in values])
    else:
        if col.dtype.kind != "U":
            col = col.astype(str)
        wanted = np.array(values, dtype=str)
    if upper:
        col = np.char.upper(col)
    return np.isin(col, wanted)


class KeyLookup:
    """Find the ids of ``(sop_instance_uid, frame)`` keys without a per-item Python dict.

    Built lazily (one argsort of the UID column) on the first lookup, so opening an index
    does not pay for it.

    Args:
        columns: the index's column mapping (``sop_instance_uid`` and ``frame`` are read on
            first lookup).
        ids: the id of each row.
    """

    def __init__(self, columns, ids: np.ndarray) -> None:
        self.columns, self.ids = columns, ids
        self._order: np.ndarray | None = None
        self._sorted: np.ndarray | None = None

    def _build(self) -> None:
        uids = np.asarray(self.columns["sop_instance_uid"])
        if uids.dtype.kind == "O":
            uids = uids.astype(str)
        self._order = np.argsort(uids, kind="stable")
        self._sorted = uids[self._order]

    def find(self, uids, frames=None) -> np.ndarray:
        """ids of the given keys (``frames=None`` → frame 0); -1 where a key is not in the index."""
        if self._order is None:
            self._build()
        uids = list(uids)
        frames = [0] * len(uids) if frames is None else [int(f) for f in frames]
        if self._sorted.dtype.kind == "S":
            keys = np.array([u.encode() for u in uids], dtype=self._sorted.dtype) if uids else np.array([], dtype=self._sorted.dtype)
        else:
            keys = np.array(uids, dtype=str)
        lo = np.searchsorted(self._sorted, keys, side="left")
        hi = np.searchsorted(self._sorted, keys, side="right")
        frames_col = np.asarray(self.columns["frame"])
        out = np.full(len(uids), -1, dtype=np.int64)
        for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
            # a UID has one row per frame: a handful of candidates at most
            for row in self._order[a:b]:
                if int(frames_col[row]) == frames[i]:
                    out[i] = int(self.ids[row])
                    break
        return out
