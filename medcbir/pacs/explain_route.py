"""``POST /medcbir/explain``: the explain helper's batched search+explain, fed from Orthanc.

Items indexed by the plugin record ``orthanc://<instance-id>`` as their source, which
:func:`medcbir.explain.explain_search` cannot open; :class:`OrthancFiles` wraps the engine so
that the neighbours it returns point at their DICOM files fetched from Orthanc into a
temporary folder. Everything else (masks shared across the query and its neighbours, one
batched pass, the report panel) is the explain helper's code, unchanged.

With ``"roi": [x, y, w, h]`` the request explains a *region* match instead
(:func:`medcbir.explain.explain_region_match`, as ``medcbir explain --roi``): the region search's
neighbours, each with its matched box and a map of which of its pixels make that box match the
query's box (RELAX or occlusion, the methods a measured region descriptor can be explained by).
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

from medcbir.engine.neighbour import Neighbour
from medcbir.errors import ConfigError
from medcbir.pacs.dicom_store import store_all
from medcbir.pacs.orthanc_config import instance_of

FORMATS = ("png", "html", "json")
SPARE = 4  # extra neighbours searched to replace ones deleted in Orthanc but not yet tombstoned
#: perturbed pixels a region explanation describes at once (medcbir.explain.regions.PIXEL_BUDGET)
REGION_PIXELS = 4_000_000


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
        self.instances: dict[str, str] = {}  # local copy's path → its Orthanc instance id

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
        self.instances[str(path)] = instance
        return {**meta, "source": str(path)}

    def search(self, queries, k: int = 10, **filters):
        """The engine's neighbours that Orthanc still holds (a few more are searched so that a
        neighbour deleted behind the index is replaced by the next one), ranked 1..k; a region
        search's neighbours keep their matched box."""
        results = self._engine.search(queries, k=k + SPARE, **filters)
        out = []
        for row in results:
            kept = []
            for n in row:
                if len(kept) == k:
                    break
                meta = self._local(dict(n.meta))
                if meta is not None:
                    local = Neighbour(n.id, n.score, len(kept) + 1, meta)
                    local.region, local.query_region = n.region, n.query_region
                    kept.append(local)
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
    if request.get("roi") is not None:
        # a region explanation holds the query and K frames (up to 1024² float32) with a map each,
        # and one batch of perturbed neighbourhoods (REGION_PIXELS float32, with the descriptor's
        # intermediates counted 4×)
        return (k + 1) * 1024 * 1024 * 4 * 2 + REGION_PIXELS * 4 * 4
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
    if request.get("roi") is not None:
        return region_explain_answer(engine, rest, query_path, request, label=label)
    from medcbir.explain import METHODS, explain_search
    from medcbir.explain.report import render_html, render_png

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


def region_explain_answer(engine, rest, query_path: Path, request: dict, label: str | None = None) -> tuple[bytes, str]:
    """Explain a region match (``request["roi"]``); the answer body and its MIME type.

    ``format`` json: :meth:`~medcbir.explain.regions.RegionExplanation.to_dict` with each
    neighbour's Orthanc ``instance``/``series``/``study`` and ``overlay_png`` (base64 PNG: the
    neighbour's frame, its map over it and its matched box, enlarged by a whole factor so it lays
    exactly over the frame), the query's ``overlay_png`` (its frame and box), ``status`` and
    ``caveat``; png: the query and the neighbours side by side; html: the same as a page.
    ``pairwise`` and ``store`` do not apply (the maps are not the whole-image explanation's).
    """
    from medcbir.explain.region_files import QUERY_COLOUR, json_default, overlay
    from medcbir.explain.regions import check_region_method, explain_region_match
    from medcbir.explain.status import CAVEAT, display_name, region_method_status

    fmt = str(request.get("format") or "png").lower()
    method = str(request.get("method") or "relax")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    check_region_method(method)
    if request.get("pairwise") or request.get("store"):
        raise ConfigError("roi (a region-match explanation) does not combine with pairwise or store")
    n_masks = request.get("n_masks")
    label = label or "the query"
    roi = tuple(int(v) for v in request["roi"])
    with tempfile.TemporaryDirectory(prefix="medcbir-explain-") as folder:
        files = OrthancFiles(engine, rest, Path(folder))
        result = explain_region_match(files, str(query_path), roi, k=int(request.get("k", 5)), exclude=request.get("exclude") or "same-series",
                                      method=method, n_masks=int(n_masks) if n_masks is not None else None, seed=int(request.get("seed", 0)))
        instances = [files.instances.get(str(nb.meta.get("source", ""))) for nb in result.neighbours]
    result.query_label = label
    name = f"region-match {display_name(method)}"
    status = region_method_status(getattr(engine.store, "index_dir", None), method)
    query_png = _png(overlay(result.query_image, result.query_display, None, result.query_box, QUERY_COLOUR))
    shown = [_png(overlay(result.images[i], result.display[i], result.map_of(i), nb.region)) for i, nb in enumerate(result.neighbours)]
    if fmt == "json":
        payload = result.to_dict()
        payload["query"]["overlay_png"] = base64.b64encode(query_png).decode("ascii")
        for entry, instance, png in zip(payload["neighbours"], instances, shown):
            parents = rest.parents(instance) if instance else None
            series, study = parents if parents else (None, None)
            entry.update(instance=instance, series=series, study=study, overlay_png=base64.b64encode(png).decode("ascii"))
        payload.update(status=status, caveat=CAVEAT, method_name=name, roi=list(roi))
        return json.dumps(payload, indent=2, default=json_default).encode("utf-8"), "application/json"
    captions = [f"{label}: region {','.join(map(str, result.query_box))}"] + [
        f"#{nb.rank} score {nb.score:.3f}, region {','.join(map(str, nb.region))}" for nb in result.neighbours]
    title = f"{name} explanation of {label} and its top-{len(result.neighbours)} region matches"
    if fmt == "html":
        figures = "".join(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{html.escape(text)}">'
            f"<figcaption>{html.escape(text)}</figcaption></figure>" for png, text in zip([query_png, *shown], captions))
        page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                "<style>figure{display:inline-block;margin:4px}img{width:256px;image-rendering:pixelated}</style></head><body>"
                f"<h1>{html.escape(title)}</h1><p>{html.escape(status['text'])}</p><p><strong>{html.escape(CAVEAT)}</strong></p>"
                f"{figures}</body></html>")
        return page.encode("utf-8"), "text/html"
    return _panel([query_png, *shown], captions, [title, status["text"], CAVEAT]), "image/png"


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _panel(pngs: list[bytes], captions: list[str], lines: list[str], side: int = 256) -> bytes:
    """The images side by side (each ``side`` pixels high), a caption under each, ``lines`` below."""
    from PIL import Image, ImageDraw

    tiles = []
    for png in pngs:
        tile = Image.open(io.BytesIO(png)).convert("RGB")
        tiles.append(tile.resize((max(1, round(tile.width * side / tile.height)), side), Image.NEAREST))
    width = max(sum(t.width for t in tiles) + 8 * (len(tiles) + 1), 900)
    panel = Image.new("RGB", (width, side + 40 + 16 * len(lines) + 8), "white")
    draw = ImageDraw.Draw(panel)
    x = 8
    for tile, caption in zip(tiles, captions):
        panel.paste(tile, (x, 8))
        draw.text((x, side + 14), caption[:48], fill="black")
        x += tile.width + 8
    for i, line in enumerate(lines):
        draw.text((8, side + 36 + 16 * i), line, fill="black")
    buf = io.BytesIO()
    panel.save(buf, format="PNG")
    return buf.getvalue()

