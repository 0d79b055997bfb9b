"""An explanation shown as a radiologist reads images: each explained image at its stored
resolution in its reading window, its heatmap over the whole frame, and beside it the series
description, study date, position in mm, label and percentile (:mod:`medcbir.engine.reading`),
with the method's measured status and the "not for diagnosis" caveat
(:mod:`medcbir.explain.status`).
"""

from __future__ import annotations

from pathlib import Path

from medcbir.engine import reading
from medcbir.explain.dicom_maps import _frame_item, heatmap_on_source, seen_region, whole_frame
from medcbir.explain.status import CAVEAT, display_name, method_status
from medcbir.imaging.reading_window import windowed


def _index_dir(engine):
    return getattr(getattr(engine, "store", None), "index_dir", None)


def native_panel(explanation, engine, query_source=None, title: str | None = None) -> dict:
    """The report panel of ``explanation`` (``Explanation.panel()``) with every image replaced by
    its source frame in its reading window and every heatmap put on that frame.

    Args:
        explanation: the :class:`~medcbir.explain.runner.Explanation`.
        engine: the engine it was computed with (preprocessing, key, reading context).
        query_source: the query's DICOM file (None: the query's indexed source, else its
            model input is shown).
        title: the panel's title.
    """
    panel = explanation.panel(title)
    if title is None:
        panel["title"] = panel["title"].replace(explanation.method, display_name(explanation.method), 1)
    status = method_status(_index_dir(engine), explanation.method)
    panel["status"] = status
    panel["caveat"] = CAVEAT
    panel["caption"] = f"{panel.get('caption', '')} {status['text']}. {CAVEAT}".strip()
    prep = engine.encoder.preprocessing
    key = engine.pseudonym_key
    query_meta = dict(explanation.query_meta or {})
    if query_source is None and query_meta.get("sop_instance_uid"):
        try:
            [own] = engine.lookup.find([query_meta["sop_instance_uid"]], [int(query_meta.get("frame", 0) or 0)])
            if own >= 0:
                query_source = engine.meta([int(own)])[0].get("source")
        except Exception:  # noqa: BLE001 - the model input stays shown
            query_source = None
    sources = [(query_source, 0, query_meta, None)] + [
        (nb.meta.get("source"), int(nb.meta.get("frame", 0) or 0), dict(nb.meta), nb.score) for nb in explanation.neighbours]
    query_native = None
    for i, (entry, (source, frame, meta, score)) in enumerate(zip(panel["items"], sources)):
        shown = dict(entry.get("meta") or {})
        if meta.get("sop_instance_uid"):
            shown.update(reading.context(engine, meta, score))
        if source and Path(str(source)).is_file():
            shown.update({k: v for k, v in reading.header_context(source).items() if v})
            try:
                item = _frame_item(Path(str(source)), frame, key)
            except Exception:  # noqa: BLE001 - unreadable now: the model input stays shown
                item = None
            if item is not None:
                grey, how = windowed(item)
                heat = whole_frame(heatmap_on_source(explanation.heatmaps[i], item, prep), seen_region(item, prep))
                entry.update(image=grey, heatmap=heat)
                shown["window"] = how
                if i == 0:
                    query_native = item
        entry["meta"] = shown
    if query_native is not None and panel.get("pairwise"):
        seen = seen_region(query_native, prep)
        grey = panel["items"][0]["image"]
        for j, entry in enumerate(panel["pairwise"]):
            entry.update(image=grey, heatmap=whole_frame(heatmap_on_source(explanation.pairwise[j], query_native, prep), seen))
    return panel
