"""Files of a region-match explanation: the maps (``maps.npy``), PNG overlays and a JSON summary.

``write_region_explanation(result, out)`` writes into ``out``:

- ``maps.npy``: the K×H×W float32 maps (neighbour i's map is ``maps[i, :rows_i, :cols_i]``);
- ``query.png``: the query frame with the query box (yellow);
- ``neighbour-<rank>.png``: each neighbour's frame with its map over it (positive part, the colour
  map's opacity following the value) and the matched box (green);
- ``explanation.json``: :meth:`RegionExplanation.to_dict` and each neighbour's frame shape;
- ``report.html``: one self-contained page (images inlined) of the above, with the method's
  measured status line and the caveat (:func:`region_page_html`).

:func:`region_section_html` is the same content as a section of another page (``medcbir demo``
adds it to its report, below the whole-image explanation).

Frames are shown in their display window (CT: L40 W400) and enlarged (nearest neighbour) to at
least :data:`MIN_SIDE` pixels so a small box stays visible.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from medcbir.explain.report import CSS, _meta_rows
from medcbir.explain.status import display_name

#: PNGs are enlarged by a whole factor until their longer side is at least this.
MIN_SIDE = 512
QUERY_COLOUR = (255, 220, 0)
MATCH_COLOUR = (0, 230, 0)
MAX_OPACITY = 0.6


def _grey(frame: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    scaled = np.clip((np.nan_to_num(np.asarray(frame, dtype=np.float64)) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.repeat(scaled[..., None], 3, axis=2)


def _enlarge(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    factor = max(1, math.ceil(MIN_SIDE / max(rgb.shape[:2])))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1), factor


def _draw_box(rgb: np.ndarray, box, factor: int, colour) -> None:
    x, y, w, h = (int(v) * factor for v in box)
    rows, cols = rgb.shape[:2]
    x1, y1 = min(cols - 1, x + w - 1), min(rows - 1, y + h - 1)
    thick = max(1, factor // 2)
    value = np.asarray(colour, dtype=np.float64) / 255
    rgb[y:y + thick, x:x1 + 1] = value
    rgb[max(y, y1 - thick + 1):y1 + 1, x:x1 + 1] = value
    rgb[y:y1 + 1, x:x + thick] = value
    rgb[y:y1 + 1, max(x, x1 - thick + 1):x1 + 1] = value


def overlay(frame: np.ndarray, window, heat: np.ndarray | None = None, box=None, colour=MATCH_COLOUR, cmap: str = "jet") -> np.ndarray:
    """uint8 RGB: the frame in its window, the positive part of ``heat`` blended over it, ``box`` outlined."""
    import matplotlib

    rgb = _grey(frame, window)
    if heat is not None:
        positive = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
        top = float(positive.max())
        if top > 0:
            level = positive / top
            colour_map = matplotlib.colormaps[cmap](level)[..., :3]
            alpha = (MAX_OPACITY * level)[..., None]
            rgb = (1 - alpha) * rgb + alpha * colour_map
    rgb, factor = _enlarge(rgb)
    if box is not None:
        _draw_box(rgb, box, factor, colour)
    return (255 * rgb).round().astype(np.uint8)


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def region_section_html(result, status: str | None = None, caveat: str | None = None, title: str | None = None) -> str:
    """A ``<section class="region-match">`` of a page: the query with its box (yellow), then each
    neighbour with its region-match map and matched box (green), its rank, score, matched region
    and the share of its map's positive mass inside that box; ``status`` (the method's measured
    status line, :func:`medcbir.explain.status.region_method_status`) and ``caveat`` under the title."""
    from medcbir.explain.runner import display_meta  # torch: loaded with the explanation already

    def figure(label: str, lines: list[str], uri: str, alt: str, meta: dict | None, kind: str) -> str:
        text = "".join(f'<div class="s">{html.escape(line)}</div>' for line in lines)
        return (f'<figure class="{kind}"><div class="l">{html.escape(label)}</div>{text}'
                f'<a href="{uri}" target="_blank"><img src="{uri}" alt="{html.escape(alt)}" width="256"></a>'
                f"{_meta_rows(meta) if meta else ''}</figure>")

    cells = []
    box = ",".join(map(str, result.query_box))
    if result.query_image is not None:
        uri = _png_uri(overlay(result.query_image, result.query_display, None, result.query_box, QUERY_COLOUR))
        cells.append(figure("query region", [f"box {box} (x, y, w, h)"], uri, "query image with the query box", None, "query"))
    for i, nb in enumerate(result.neighbours):
        region = ",".join(str(int(v)) for v in nb.region)
        uri = _png_uri(overlay(result.images[i], result.display[i], result.map_of(i), nb.region))
        lines = [f"score {float(nb.score):.4f}", f"matched region {region}", f"map in region {result.share_in_region(i):.0%}"]
        cells.append(figure(f"#{nb.rank}", lines, uri, f"neighbour {nb.rank}: region-match map and matched box",
                            display_meta(nb.meta), "neighbour"))
    heading = title or f"Why each region matched: region-match {display_name(result.method)}"
    masks = f", {result.n_masks} masks" if result.n_masks else ""
    note = (f"Query box {box} in the query's pixels (yellow). Each neighbour's map shows which of its pixels make its matched "
            f"region (green) match the query's region ({display_name(result.method)}{masks}, seed {result.seed}); "
            "maps are 0 outside the pixels the region descriptor reads.")
    paragraphs = [f"<p>{html.escape(note)}</p>"]
    if status:
        paragraphs.append(f'<p class="status">{html.escape(status)}</p>')
    if caveat:
        paragraphs.append(f'<p class="caveat">{html.escape(caveat)}</p>')
    return (f'<section class="region-match" id="region-match"><h2>{html.escape(heading)}</h2>{"".join(paragraphs)}'
            f'<div class="row">{"".join(cells)}</div></section>')


def region_page_html(result, status: str | None = None, caveat: str | None = None) -> str:
    """A whole HTML page (images inlined) of a region-match explanation: :func:`region_section_html`."""
    title = f"medcbir region-match explanation: {result.query_label}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{region_section_html(result, status, caveat)}</body></html>\n")


def write_region_explanation(result, out, status: str | None = None, caveat: str | None = None) -> list[Path]:
    """Write a :class:`~medcbir.explain.regions.RegionExplanation` into folder ``out``; returns the
    paths written (``status``, ``caveat``: the lines ``report.html`` shows under its title)."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    np.save(out / "maps.npy", result.maps.astype(np.float32))
    written.append(out / "maps.npy")
    if result.query_image is not None:
        Image.fromarray(overlay(result.query_image, result.query_display, None, result.query_box, QUERY_COLOUR)).save(out / "query.png")
        written.append(out / "query.png")
    for i, nb in enumerate(result.neighbours):
        path = out / f"neighbour-{nb.rank}.png"
        Image.fromarray(overlay(result.images[i], result.display[i], result.map_of(i), nb.region)).save(path)
        written.append(path)
    summary = {**result.to_dict(), "shapes": [list(s) for s in result.shapes]}
    (out / "explanation.json").write_text(json.dumps(summary, indent=2, default=json_default) + "\n")
    written.append(out / "explanation.json")
    (out / "report.html").write_text(region_page_html(result, status, caveat), encoding="utf-8")
    written.append(out / "report.html")
    return written


def json_default(value):
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else as its text)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
