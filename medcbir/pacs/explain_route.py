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

from medcbir.errors import ConfigError, DecodeError
from medcbir.pacs.orthanc_config import instance_of

FORMATS = ("png", "html", "json")


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

    def _local(self, meta: dict) -> dict:
        instance = instance_of(str(meta.get("source", "")))
        if instance is None:
            return meta  # indexed from a file: explain_search reads it directly
        data = self._rest.instance_file(instance)
        if data is None:
            raise DecodeError(f"neighbour {meta.get('sop_instance_uid', '?')} is no longer in Orthanc")
        path = self._folder / f"{instance}.dcm"
        path.write_bytes(data)
        return {**meta, "source": str(path)}

    def search(self, queries, k: int = 10, **filters):
        from medcbir.engine.neighbour import Neighbour

        results = self._engine.search(queries, k=k, **filters)
        return [[Neighbour(n.id, n.score, n.rank, self._local(dict(n.meta))) for n in row] for row in results]


def explain_answer(engine, rest, query_path: Path, request: dict, label: str | None = None) -> tuple[bytes, str]:
    """Explain a query and its neighbours; the answer body and its MIME type.

    Args:
        engine: the open engine.
        rest: Orthanc REST client (to fetch the neighbours' files).
        query_path: the query's DICOM file.
        request: ``k`` (5), ``method`` ("relax"), ``exclude`` ("none"), ``format``
            ("png" | "html" | "json"), ``n_masks`` (RELAX; default and the other
            RELAX options: ``medcbir.explain.relax.FAST_DEFAULTS``), ``seed`` (0), ``pairwise``.
        label: how the query is named in the panel title.
    """
    from medcbir.engine.report import render_html, render_png
    from medcbir.explain import METHODS, explain_search

    fmt = str(request.get("format") or "png").lower()
    method = str(request.get("method") or "relax")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    try:
        k = int(request.get("k", 5))
        options = {}
        if method in ("relax", "smoothgrad"):
            options["seed"] = int(request.get("seed", 0))
        if method == "relax":
            from medcbir.explain.relax import relax_options

            n_masks = request.get("n_masks")
            options = relax_options(**options, n_masks=int(n_masks) if n_masks is not None else None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad numeric option: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="medcbir-explain-") as folder:
        explanation = explain_search(
            OrthancFiles(engine, rest, Path(folder)), str(query_path), k=k, method=method,
            pairwise=bool(request.get("pairwise", False)), exclude=request.get("exclude") or "none", **options)
        if fmt == "json":
            return json.dumps(explanation.to_dict(), indent=2, default=str).encode("utf-8"), "application/json"
        panel = explanation.panel(title=f"{method} explanation of {label or 'the query'} and its top-{len(explanation.neighbours)}")
        if fmt == "html":
            return render_html(panel).encode("utf-8"), "text/html"
        png = render_png(Path(folder) / "panel.png", panel)
        return png.read_bytes(), "image/png"
