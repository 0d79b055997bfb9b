"""The prior exam: the same patient's other studies, each with the slice nearest in anatomy.

"Where is this slice in this patient's previous CT?" The patient is found by the keyed
pseudonym stored in the index (a query file's pseudonym is computed with the index's key; the
raw PatientID is never compared or shown). Every other study of that patient is listed, most
recent first, and for each the slice corresponding to the query (``medcbir.engine.alignment``):
when the query is an indexed slice, its whole series is aligned with each series of the other
study; otherwise the query slice alone is matched (its most similar slice). Among a study's
series of the query's modality the best-aligned one answers.

Example:
    >>> result = Engine.open("INDEX").prior("slice.dcm")
    >>> [(s.study_datetime, s.slice.meta["instance_number"]) for s in result.studies]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcbir.engine.alignment import Alignment, align_series
from medcbir.engine.filters import column_is_in
from medcbir.engine.neighbour import Neighbour
from medcbir.engine.queries import QueryResolver
from medcbir.errors import ConfigError

SLICE_FIELDS = ("sop_instance_uid", "frame", "series_instance_uid", "instance_number", "slice_position", "source")


@dataclass
class PriorStudy:
    """One other study of the query's patient.

    Attributes:
        study_instance_uid, series_instance_uid: the study and its best-aligned series.
        study_datetime: ``YYYYMMDDHHMMSS`` ("" if unknown).
        relation: ``"earlier"``, ``"later"``, ``"same-time"`` or ``"unknown"`` w.r.t. the query's study.
        slice: the corresponding slice (its ``score`` = cosine similarity with the query).
        alignment: how it was found (shift, alignment score, covered).
        n_slices: slices of that series in the index.
    """

    study_instance_uid: str
    series_instance_uid: str
    study_datetime: str
    relation: str
    slice: Neighbour
    alignment: Alignment
    n_slices: int

    def to_dict(self) -> dict:
        shift = self.alignment.shift
        return {
            "study_instance_uid": self.study_instance_uid,
            "study_datetime": self.study_datetime,
            "relation": self.relation,
            "series_instance_uid": self.series_instance_uid,
            "n_slices": self.n_slices,
            "score": round(float(self.slice.score), 6),
            "alignment_score": round(self.alignment.score, 6),
            "shift": None if np.isnan(shift) else round(shift, 3),
            "covered": self.alignment.covered,
            "slice": {c: _plain_nan(self.slice.meta.get(c)) for c in SLICE_FIELDS},
        }


@dataclass
class PriorResult:
    """What :func:`prior_exams` found: the query's study and the patient's other studies."""

    query: str
    query_study: str
    query_datetime: str
    context_slices: int
    studies: list[PriorStudy] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "query_study": self.query_study,
            "query_datetime": self.query_datetime,
            "context_slices": self.context_slices,
            "studies": [s.to_dict() for s in self.studies],
        }


def _plain_nan(value):
    return None if isinstance(value, float) and np.isnan(value) else value


def _relation(mine: str, theirs: str) -> str:
    if not mine or not theirs:
        return "unknown"
    return "earlier" if theirs < mine else "later" if theirs > mine else "same-time"


def _study_datetimes(engine, ids: np.ndarray, studies: np.ndarray) -> dict[str, str]:
    """Study UID → study date-time, from the index column or (older indexes) the files' headers."""
    out: dict[str, str] = {}
    if "study_datetime" in engine.columns:
        col = engine.columns.take("study_datetime", engine.rows_of(ids))
        for uid, value in zip(studies.tolist(), col.tolist()):
            out.setdefault(uid, str(value or ""))
        return out
    sources = engine.columns.take("source", engine.rows_of(ids))
    for uid, source in zip(studies.tolist(), sources.tolist()):
        if uid not in out:
            out[uid] = _header_datetime(engine.source_path(str(source)))
    return out


def _header_datetime(source: str) -> str:
    """StudyDate + StudyTime read from a local file's header ("" when it cannot be read)."""
    if not source or not Path(source).is_file():
        return ""
    try:
        import pydicom

        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["StudyDate", "StudyTime"])
    except Exception:  # noqa: BLE001 - an unreadable file only loses the date
        return ""
    date = "".join(ch for ch in str(ds.get("StudyDate", "") or "") if ch.isdigit())
    time = "".join(ch for ch in str(ds.get("StudyTime", "") or "").split(".")[0] if ch.isdigit())[:6]
    return date + time.ljust(6, "0") if len(date) == 8 else ""


def _anatomical_order(engine, ids: np.ndarray) -> np.ndarray:
    """``ids`` ordered head to feet (descending z, then instance number)."""
    rows = engine.rows_of(ids)
    z = np.asarray(engine.columns.take("slice_position", rows), dtype=np.float64)
    inst = np.asarray(engine.columns.take("instance_number", rows), dtype=np.int64)
    return ids[np.lexsort((inst, -np.nan_to_num(z, nan=-np.inf)))]


def prior_exams(engine, query, *, modality=None, context: str = "series") -> PriorResult:
    """The query patient's other studies, most recent first, each with its corresponding slice.

    Args:
        engine: an open :class:`~medcbir.engine.Engine`.
        query: a DICOM path, a SOP UID in the index (``UID[:frame]``), an ``Item``/``Decoded``.
        modality: only series of this modality (default: the query's modality when known).
        context: ``"series"`` (align the indexed query's whole series; the default) or
            ``"slice"`` (match the query slice alone: its most similar slice per study).

    Raises:
        ConfigError: the query's patient is unknown (an array query, or a file of an index
            without pseudonym key).
    """
    if context not in ("series", "slice"):
        raise ConfigError(f"context must be 'series' or 'slice', not {context!r}")
    engine.require_items()
    [q] = QueryResolver(engine).resolve([query])
    if not q.patient:
        raise ConfigError("the query's patient is unknown (not an item of the index and no pseudonym key to compute it); prior exams need a patient")
    vector = engine._embed([q])[0]
    patient_ids = np.flatnonzero(engine.exclusion_mask("patient_pseudonym", q.patient) & engine.live)
    rows = engine.rows_of(patient_ids)
    series_col = engine.columns.take("series_instance_uid", rows)
    study_col = engine.columns.take("study_instance_uid", rows)
    modality_col = engine.columns.take("modality", rows)
    own_meta = engine.meta([q.item_id])[0] if q.item_id >= 0 else {}
    wanted = modality or own_meta.get("modality") or None

    # The query's context: its whole series when it is an indexed slice (a strong witness of the shift).
    if q.item_id >= 0 and context == "series":
        own_series = _anatomical_order(engine, patient_ids[series_col == own_meta["series_instance_uid"]])
        context_vectors = engine.embeddings(own_series)
        query_index = int(np.flatnonzero(own_series == q.item_id)[0])
        context_z = np.asarray(engine.columns.take("slice_position", engine.rows_of(own_series)), dtype=np.float64)
    else:
        context_vectors, query_index, context_z = vector[None, :], 0, np.array([np.nan])
    context_vectors = context_vectors / np.maximum(np.linalg.norm(context_vectors, axis=1, keepdims=True), 1e-12)
    context_vectors[query_index] = vector  # the query as embedded now (identical for an indexed slice)

    others = study_col != q.study
    if wanted:
        others &= column_is_in(modality_col, tuple([wanted] if isinstance(wanted, str) else wanted), upper=True)
    dates = _study_datetimes(engine, patient_ids, study_col)
    mine = dates.get(q.study, "")
    if not mine and isinstance(query, (str, Path)) and Path(str(query)).is_file():
        mine = _header_datetime(str(query))  # a file of a study not (yet) in the index
    found: list[PriorStudy] = []
    for study in sorted(set(study_col[others].tolist())):
        best: tuple | None = None
        for series in sorted(set(series_col[others & (study_col == study)].tolist())):
            ids = _anatomical_order(engine, patient_ids[others & (series_col == series)])
            vectors = engine.embeddings(ids)
            z = np.asarray(engine.columns.take("slice_position", engine.rows_of(ids)), dtype=np.float64)
            alignment = align_series(context_vectors @ vectors.T, context_z, z, query_index)
            if best is None or alignment.score > best[0].score:
                best = (alignment, series, ids, vectors)
        alignment, series, ids, vectors = best
        id_ = int(ids[alignment.index])
        score = float(vectors[alignment.index] @ vector)
        neighbour = Neighbour(id_, score, 1, None, engine.table, int(engine.rows_of(np.array([id_]))[0]))
        found.append(PriorStudy(study, series, dates.get(study, ""), _relation(mine, dates.get(study, "")), neighbour, alignment, len(ids)))
    # most recent first (a stable sort keeps UID order among equal dates); no date ("") last
    found.sort(key=lambda s: s.study_instance_uid)
    found.sort(key=lambda s: s.study_datetime, reverse=True)
    return PriorResult(q.label, q.study, mine, len(context_vectors), found)
