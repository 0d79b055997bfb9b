"""``POST /medcbir/explain``: the explain helper's batched search+explain, fed from Orthanc.

Items indexed by the plugin record ``orthanc://<instance-id>`` as their source, which
:func:`medcbir.explain.explain_search` cannot open; :class:`OrthancFiles` wraps the engine so
that the neighbours it returns point at their DICOM files fetched from Orthanc into a
temporary folder. Everything else (masks shared across the query and its neighbours, one
batched pass, the report panel) is the explain helper's code, unchanged.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from medcbir.errors import ConfigError
from medcbir.pacs.orthanc_config import instance_of

FORMATS = ("png", "html", "json")
SPARE = 4  # extra neighbours searched to replace ones deleted in Orthanc but not yet tombstoned


class OrthancFiles:
    """An engine whose neighbours' ``source`` is a local copy of their Orthanc instance.

    Args:
        engine: the open :class:`medcbir.engine.Engine`.
        rest: :class:`medcbir.pacs.orthanc_rest.OrthancRest`.
        folder: where the copies go (the caller removes it).
    """

    def __init__(self, engine, rest, folder: Path) -> None:
        self._engine = engine
        self._rest = rest
        self._folder = Path(folder)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _local(self, meta: dict) -> dict | None:
        """``meta`` with a local ``source``; None when Orthanc no longer holds the instance."""
        instance = instance_of(str(meta.get("source", "")))
        if instance is None:
            return meta  # indexed from a file: explain_search reads it directly
        data = self._rest.instance_file(instance)
        if data is None:
            return None  # deleted in Orthanc; the worker has not tombstoned it yet
        path = self._folder / f"{instance}.dcm"
        path.write_bytes(data)
        return {**meta, "source": str(path)}

    def search(self, queries, k: int = 10, **filters):
        """The engine's neighbours that Orthanc still holds (a few more are searched so that a
        neighbour deleted behind the index is replaced by the next one), ranked 1..k."""
        from medcbir.engine.neighbour import Neighbour

        results = self._engine.search(queries, k=k + SPARE, **filters)
        out = []
        for row in results:
            kept = []
            for n in row:
                if len(kept) == k:
                    break
                meta = self._local(dict(n.meta))
                if meta is not None:
                    kept.append(Neighbour(n.id, n.score, len(kept) + 1, meta))
            out.append(kept)
        return out


def explain_bytes(engine, request: dict) -> float:
    """An upper estimate of the working memory of an explain request, in bytes.

    The query and its K neighbours (twice with ``pairwise``) are held as images, heatmaps and
    two RELAX accumulators; one forward batch of masked copies (120 images) is in flight with
    the encoder's activations (counted as 16 image-sized tensors per copy).
    """
    prep = engine.encoder.preprocessing
    channels = len(getattr(prep, "windows", ()) or (1,))
    image = channels * int(prep.size) ** 2 * 4
    k = int(request.get("k", 5))
    rows = (k + 1) * (2 if request.get("pairwise") else 1)
    return rows * image * 4 + 120 * image * 16


def explain_answer(engine, rest, query_path: Path, request: dict, label: str | None = None) -> tuple[bytes, str]:
    """Explain a query and its neighbours; the answer body and its MIME type.

    Args:
        engine: the open engine.
        rest: Orthanc REST client (to fetch the neighbours' files).
        query_path: the query's DICOM file.
        request: checked by :func:`medcbir.pacs.request_rules.check_request`: ``k`` (5),
            ``method`` ("relax"), ``exclude`` ("none"), ``format`` ("png" | "html" | "json"),
            ``n_masks`` (RELAX; default and the other RELAX options:
            ``medcbir.explain.relax.FAST_DEFAULTS``), ``seed`` (0), ``pairwise``, ``store``
            (overlays and parametric maps stored into Orthanc; the answer is then JSON with
            their Orthanc ids under ``stored``: ``overlays`` and ``maps``, query first).
        label: how the query is named in the answer (never a file-system path).
    """
    from medcbir.explain.report import render_html, render_png
    from medcbir.explain import METHODS, explain_search

    fmt = str(request.get("format") or "png").lower()
    method = str(request.get("method") or "relax")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    k = int(request.get("k", 5))
    options = {}
    if method in ("relax", "smoothgrad"):
        options["seed"] = int(request.get("seed", 0))
    if method == "relax":
        from medcbir.explain.relax import relax_options

        n_masks = request.get("n_masks")
        options = relax_options(**options, n_masks=int(n_masks) if n_masks is not None else None)
    label = label or "the query"
    with tempfile.TemporaryDirectory(prefix="medcbir-explain-") as folder:
        explanation = explain_search(
            OrthancFiles(engine, rest, Path(folder)), str(query_path), k=k, method=method,
            pairwise=bool(request.get("pairwise", False)), exclude=request.get("exclude") or "same-series", **options)
        # The query was read from a temporary file: answer its label, not that path.
        explanation.query_label = label
        from medcbir.explain.native import native_panel
        from medcbir.explain.status import CAVEAT, display_name, method_status

        status = method_status(getattr(engine.store, "index_dir", None), method)
        stored = None
        if request.get("store"):
            # the neighbours' files are still in ``folder`` here (OrthancFiles' local copies)
            from medcbir.explain.dicom_maps import explanation_objects
            from medcbir.pacs.dicom_store import store_all

            objects = explanation_objects(explanation, Path(query_path), engine.encoder.preprocessing, engine.pseudonym_key,
                                          caption=f"{status['text']}. {CAVEAT}")
            stored = {"overlays": store_all(rest, objects.overlays), "maps": store_all(rest, objects.maps)}
        if fmt == "json" or stored is not None:
            payload = explanation.to_dict()
            payload.update(status=status, caveat=CAVEAT, method_name=display_name(method))
            if stored is not None:
                payload["stored"] = stored
            return json.dumps(payload, indent=2, default=str).encode("utf-8"), "application/json"
        panel = native_panel(explanation, engine, query_source=Path(query_path),
                             title=f"{display_name(method)} explanation of {label} and its top-{len(explanation.neighbours)}")
        if fmt == "html":
            return render_html(panel).encode("utf-8"), "text/html"
        png = render_png(Path(folder) / "panel.png", panel)
        return png.read_bytes(), "image/png"
