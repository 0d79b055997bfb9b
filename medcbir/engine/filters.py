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
    """Row mask: ``column[row]`` is one of ``values`` (string columns of any numpy flavour);
    ``upper``: compared without regard to case (both sides upper-cased)."""
    col = np.asarray(column)
    if upper:
        values = tuple(str(v).upper() for v in values)
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

    The UID column's sorted hash index is built on the first lookup (so opening an index does
    not pay for it); each key's candidate rows are confirmed against the stored UID and frame.

    Args:
        columns: the index's :class:`~medcbir.indexer.columns.ShardColumns`.
        ids: the id of each row.
    """

    def __init__(self, columns, ids: np.ndarray) -> None:
        self.columns, self.ids = columns, ids

    def find(self, uids, frames=None) -> np.ndarray:
        """ids of the given keys (``frames=None`` → frame 0); -1 where a key is not in the index.
        A key stored twice (a replaced item not yet compacted away) gives its first row's id."""
        uids = [str(u) for u in uids]
        frames = [0] * len(uids) if frames is None else [int(f) for f in frames]
        out = np.full(len(uids), -1, dtype=np.int64)
        if not uids:
            return out
        rows = self.columns.find("sop_instance_uid", uids)  # a UID has one row per frame: a handful
        stored = self.columns.take("frame", np.concatenate(rows)).tolist() if any(len(r) for r in rows) else []
        start = 0
        for i, candidates in enumerate(rows):
            for row, frame in zip(candidates.tolist(), stored[start:start + len(candidates)]):
                if int(frame) == frames[i]:
                    out[i] = int(self.ids[row])
                    break
            start += len(candidates)
        return out
