"""What a radiologist reads beside a hit: where the slice lies in its series, the exam's date and
series description, the label when the index has one, and how unusual the similarity is.

- **Position.** ``position_mm`` is the slice's position along its series' normal (the index's
  ``slice_position``, in mm, patient coordinates); ``index_in_series`` its 1-based place among
  the series' indexed slices in that order, of ``series_slices``.
- **Percentile.** The hit's score placed in the archive's sampled query–neighbour similarity
  distribution (:mod:`medcbir.indexer.similarity`, stored in the manifest at index time).
- **Label.** An index may carry a labels CSV (``INDEX/labels.csv``, ``sop_instance_uid,frame,label``):
  its label is shown; an index without one shows none.
- **Series description, study date, body part** come from the DICOM header of the item
  (:func:`header_context`): the index keeps no free-text descriptions.

Thresholds (``min_score``, ``min_percentile``): hits below them are dropped, and a query whose
best hit is below them gets :data:`NOTHING_SIMILAR` instead of neighbours.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medcbir.errors import ConfigError
from medcbir.imaging.labels import read_labels
from medcbir.indexer.similarity import percentile as placed

NOTHING_SIMILAR = "no sufficiently similar image"
LABELS_FILE = "labels.csv"


def similarity_record(engine) -> dict | None:
    """The manifest's ``"similarity"`` sample of ``engine``'s index, or None."""
    manifest = getattr(engine.store, "manifest", None) or {}
    return manifest.get("similarity")


def percentile(engine, score: float) -> float | None:
    return placed(float(score), similarity_record(engine))


def index_labels(engine) -> dict:
    """``{(sop_instance_uid, frame): label}`` from ``INDEX/labels.csv``, or {} (cached on the engine)."""
    cached = getattr(engine, "_reading_labels", None)
    if cached is not None:
        return cached
    labels: dict = {}
    folder = getattr(engine.store, "index_dir", None)
    path = Path(folder) / LABELS_FILE if folder is not None else None
    if path is not None and path.is_file():
        labels = read_labels(path).by_item()
    try:
        engine._reading_labels = labels
    except AttributeError:
        pass
    return labels


def series_place(engine, meta: dict) -> dict:
    """``{"position_mm", "index_in_series", "series_slices"}`` of one item's metadata."""
    position = meta.get("slice_position")
    position = None if position is None or (isinstance(position, float) and math.isnan(position)) else float(position)
    uid = meta.get("series_instance_uid") or ""
    out = {"position_mm": None if position is None else round(position, 2), "index_in_series": None, "series_slices": None}
    if not uid:
        return out
    cache = engine.__dict__.setdefault("_reading_series", {}) if hasattr(engine, "__dict__") else {}
    if uid not in cache:
        ids = np.flatnonzero(engine.exclusion_mask("series_instance_uid", uid) & engine.live)
        positions = np.asarray(engine.meta_column("slice_position", ids), dtype=np.float64) if len(ids) else np.zeros(0)
        numbers = np.asarray(engine.meta_column("instance_number", ids), dtype=np.float64) if len(ids) else np.zeros(0)
        cache[uid] = (np.unique(positions[np.isfinite(positions)]), np.unique(numbers))
    positions, numbers = cache[uid]
    if position is not None and len(positions):
        out["index_in_series"] = int(np.searchsorted(positions, position - 1e-6)) + 1
        out["series_slices"] = int(len(positions))
    elif meta.get("instance_number") not in (None, -1) and len(numbers):
        out["index_in_series"] = int(np.searchsorted(numbers, float(meta["instance_number"]))) + 1
        out["series_slices"] = int(len(numbers))
    return out


def study_date(meta: dict) -> str:
    """``YYYY-MM-DD`` of the item's study (from ``study_datetime``), or ""."""
    text = str(meta.get("study_datetime") or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) >= 8 else ""


def context(engine, meta: dict, score: float | None = None) -> dict:
    """Everything :mod:`reading` adds for one hit (or the query, without ``score``)."""
    out = {**series_place(engine, meta), "study_date": study_date(meta), "modality": meta.get("modality") or "",
           "body_part": meta.get("body_part") or ""}
    label = index_labels(engine).get((meta.get("sop_instance_uid"), int(meta.get("frame") or 0)))
    if label is not None:
        out["label"] = label
    if score is not None:
        out["percentile"] = percentile(engine, score)
    return out


def header_context(source) -> dict:
    """``{"series_description", "study_date", "body_part", "series_number"}`` from a DICOM file's
    header ("" for what it lacks, {} when it cannot be read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True,
                             specific_tags=["SeriesDescription", "StudyDate", "BodyPartExamined", "SeriesNumber", "StudyDescription"])
    except Exception:  # noqa: BLE001 - a neighbour whose file moved still gets its index context
        return {}
    date = str(ds.get("StudyDate", "") or "")
    return {"series_description": str(ds.get("SeriesDescription", "") or ""),
            "study_description": str(ds.get("StudyDescription", "") or ""),
            "study_date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) >= 8 else "",
            "body_part": str(ds.get("BodyPartExamined", "") or ""),
            "series_number": str(ds.get("SeriesNumber", "") or "")}


def check_thresholds(min_score: float | None, min_percentile: float | None) -> None:
    if min_percentile is not None and not 0 <= float(min_percentile) <= 100:
        raise ConfigError(f"--min-percentile must be between 0 and 100, not {min_percentile}")
    if min_score is not None and not -1 <= float(min_score) <= 1:
        raise ConfigError(f"--min-score must be a cosine between -1 and 1, not {min_score}")


def above_thresholds(engine, neighbours: list, min_score: float | None = None, min_percentile: float | None = None) -> list:
    """The neighbours at or above both thresholds (all when both are None).

    Raises:
        ConfigError: ``min_percentile`` on an index without a similarity sample.
    """
    check_thresholds(min_score, min_percentile)
    if min_percentile is not None and similarity_record(engine) is None:
        raise ConfigError("this index has no similarity sample for percentiles (re-run `medcbir index` on it to draw one)")
    kept = []
    for n in neighbours:
        if min_score is not None and float(n.score) < float(min_score):
            continue
        if min_percentile is not None and (percentile(engine, n.score) or 0.0) < float(min_percentile):
            continue
        kept.append(n)
    return kept
