"""The explanation report: one self-contained HTML page and a PNG of the same panel.

Laid out like the figures of the RELAX paper: the top row shows the query and its top-K
neighbours with their similarity scores and image identifiers (UIDs, series, modality — never
patient identity), the bottom row each image's heatmap over it; an optional third row holds the
query explained w.r.t. each neighbour. Images are inlined as base64 PNG, so the file can be
mailed or archived alone.

Colour scale (``scale``): by default (``"per-image"``) every heatmap is normalised on its own
between its robust percentiles (``PERCENTILES``: 1st → bottom of the colour map, 99th → top), so
the structure inside each map is visible even when the maps of a row differ only in the third
decimal (as RELAX maps of a near-uniform encoder do). ``"shared"`` puts every
map of a row on one scale (the same robust percentiles over all of them) to compare magnitudes
across images. Either way each map's raw range (min–max) is printed under it.

The renderer takes plain arrays and dicts (it knows nothing of how heatmaps are computed).

Example:
    >>> panel = {"title": "RELAX", "items": [{"label": "query", "score": None, "meta": {...},
    ...          "image": img, "heatmap": heat}, ...]}
    >>> html_path, png_path = render_report("report.html", panel)
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from medcbir.errors import ConfigError

# image identifiers only: anything else in a meta dict (e.g. patient_pseudonym) is not shown
SHOWN = (
    ("series_description", "series description"),
    ("study_date", "study date"),
    ("position", "position"),
    ("label", "label"),
    ("percentile", "percentile"),
    ("window", "window"),
    ("sop_instance_uid", "SOP"),
    ("frame", "frame"),
    ("series_instance_uid", "series"),
    ("study_instance_uid", "study"),
    ("modality", "modality"),
    ("body_part", "body part"),
    ("instance_number", "instance"),
)
OVERLAY_ALPHA = 0.5
#: share of OVERLAY_ALPHA at the bottom of the colour map: low importance (and the parts of the
#: frame the encoder never saw) stay readable, and the whole colour range still shows
ALPHA_FLOOR = 0.2
#: displayed width of each image in the HTML report, in CSS pixels (the image itself keeps its
#: stored resolution: a click opens it full size)
CELL = 256
#: Robust range of a heatmap: values below/above these percentiles saturate the colour map.
PERCENTILES = (1.0, 99.0)
SCALES = ("per-image", "shared")


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    return np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _overlay(image: np.ndarray, scaled: np.ndarray, cmap: str) -> np.ndarray:
    """The image in gray with the already normalised heatmap (values in [0, 1]) blended over it,
    more opaque where the map is higher: the lowest values (and the parts of the frame the
    encoder never saw) leave the image as it is, so no crop box shows."""
    colour = _cmap(cmap)(np.clip(scaled, 0, 1))[..., :3]
    base = _gray(image).astype(np.float64) / 255
    alpha = overlay_alpha(scaled)[..., None]
    return (255 * ((1 - alpha) * base + alpha * colour)).round().astype(np.uint8)


def overlay_alpha(scaled: np.ndarray) -> np.ndarray:
    """Opacity of the colour map over the image for normalised heatmap values in [0, 1]: from
    ``ALPHA_FLOOR`` × ``OVERLAY_ALPHA`` at the bottom of the colour map to ``OVERLAY_ALPHA`` at its top."""
    return OVERLAY_ALPHA * (ALPHA_FLOOR + (1 - ALPHA_FLOOR) * np.clip(np.asarray(scaled, dtype=np.float64), 0, 1))


def _robust(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, PERCENTILES)
    if hi <= lo:  # a (nearly) constant map: fall back to its full range
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi)


def normalise_heatmaps(heatmaps: list[np.ndarray], scale: str = "per-image") -> tuple[list[np.ndarray], list[tuple[float, float]], list[tuple[float, float]]]:
    """Heatmaps mapped to [0, 1] for display.

    Args:
        heatmaps: H×W maps in raw units.
        scale: ``"per-image"`` (each map between its own robust percentiles) or ``"shared"``
            (all maps between the robust percentiles of their union).

    Returns:
        (scaled maps in [0, 1], the (lo, hi) raw values mapped to 0 and 1 per map, the raw
        (min, max) per map). A constant map becomes all zeros.
    """
    if scale not in SCALES:
        raise ConfigError(f"heatmap scale must be one of {', '.join(SCALES)}, not {scale!r}")
    maps = [np.nan_to_num(np.asarray(h, dtype=np.float64)) for h in heatmaps]
    raw = [(float(m.min()), float(m.max())) if m.size else (0.0, 0.0) for m in maps]
    if scale == "shared":
        shared = _robust(np.concatenate([m.ravel() for m in maps])) if maps else (0.0, 1.0)
        ranges = [shared] * len(maps)
    else:
        ranges = [_robust(m.ravel()) for m in maps]
    scaled = [np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m) for m, (lo, hi) in zip(maps, ranges)]
    return scaled, ranges, raw


def _colourbar(lo: float, hi: float, cmap: str, height: int = 160) -> np.ndarray:
    ramp = np.linspace(1, 0, height)[:, None].repeat(16, axis=1)
    return (_cmap(cmap)(ramp)[..., :3] * 255).round().astype(np.uint8)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _check(panel: dict) -> list[dict]:
    items = panel.get("items")
    if not items:
        raise ConfigError("a report panel needs at least one item (the query)")
    for i, item in enumerate(items):
        img, heat = np.asarray(item.get("image")), np.asarray(item.get("heatmap"))
        if img.ndim != 2 or heat.shape != img.shape:
            raise ConfigError(f"report item {i}: image and heatmap must be H×W of the same shape, got {img.shape} and {heat.shape}")
    return items


def position_text(meta: dict) -> str:
    """``-314.7 mm (slice 12 of 48)`` from ``position_mm``/``slice_position`` and the series index."""
    value = meta.get("position_mm", meta.get("slice_position"))
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    text = f"{float(value):.1f} mm"
    if meta.get("index_in_series") and meta.get("series_slices"):
        text += f" (slice {meta['index_in_series']} of {meta['series_slices']})"
    return text


def _meta_rows(meta: dict) -> str:
    rows = []
    meta = dict(meta or {})
    if position_text(meta):
        meta["position"] = position_text(meta)
    if meta.get("percentile") is not None:
        meta["percentile"] = f"{float(meta['percentile']):.1f}"
    for key, name in SHOWN:
        if key in (meta or {}):
            value = meta[key]
            text = f"{value:.1f}" if isinstance(value, float) else str(value)
            short = text if len(text) <= 28 else "…" + text[-27:]
            rows.append(f'<div class="m"><span>{html.escape(name)}</span> <code title="{html.escape(text)}">{html.escape(short)}</code></div>')
    return "".join(rows)


def _cell(label: str, score, meta: dict | None, uri: str, alt: str, raw: tuple[float, float] | None = None) -> str:
    pct = (meta or {}).get("percentile")
    pct_text = f" · percentile {float(pct):.1f}" if pct is not None else ""
    score_text = f'<div class="s">score {score:.4f}{pct_text}</div>' if score is not None else '<div class="s">&nbsp;</div>'
    raw_text = f'<div class="r">raw {raw[0]:.6g} – {raw[1]:.6g}</div>' if raw is not None else ""
    return (
        f'<figure><div class="l">{html.escape(label)}</div>{score_text}'
        f'<a href="{uri}" target="_blank"><img src="{uri}" alt="{html.escape(alt)}" width="{CELL}"></a>{raw_text}'
        f"{_meta_rows(meta) if meta is not None else ''}</figure>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px} p{font-size:13px;color:#555;max-width:72em}
.row{display:flex;gap:10px;align-items:flex-start;margin:8px 0}
figure{margin:0;width:266px;font-size:11px}
figure img{display:block;border:1px solid #ccc;height:auto}
.caveat{color:#a00;font-weight:600}
.l{font-weight:600} .s{color:#444} .r{color:#444;font-family:monospace} .m span{color:#777} code{font-size:10px}
.bar{display:flex;flex-direction:column;align-items:center;font-size:11px}
.rowname{writing-mode:vertical-rl;transform:rotate(180deg);font-size:12px;color:#666}
h2{font-size:16px;margin-top:24px} .status{color:#333;font-style:italic}
"""


def _row_html(name: str, cells: list[str], bar: str | None) -> str:
    return f'<div class="row"><div class="rowname">{html.escape(name)}</div>{"".join(cells)}{bar or ""}</div>'


def _bar_html(scale: str, cmap: str, lo: float | None = None, hi: float | None = None) -> str:
    uri = _data_uri(_png(_colourbar(0.0, 1.0, cmap)))
    top, bottom = (f"{hi:.4g}", f"{lo:.4g}") if scale == "shared" else ("p99", "p1")
    title = "one scale for the row" if scale == "shared" else "each map on its own scale"
    return (f'<div class="bar" title="{title}"><span>{top}</span><img class="colourbar" src="{uri}" alt="colour bar" '
            f'width="16" height="160"><span>{bottom}</span></div>')


def _heat_row(entries: list[dict], scale: str, cmap: str) -> tuple[list[str], str]:
    scaled, ranges, raw = normalise_heatmaps([e["heatmap"] for e in entries], scale)
    cells = [
        _cell(e.get("label", ""), None, None, _data_uri(_png(_overlay(e["image"], m, cmap))), f"{e.get('label', '')} heatmap", r)
        for e, m, r in zip(entries, scaled, raw)
    ]
    lo, hi = ranges[0] if ranges else (0.0, 1.0)
    return cells, _bar_html(scale, cmap, lo, hi)


def render_html(panel: dict, cmap: str = "jet", scale: str | None = None) -> str:
    """The report page as a string (every image inlined); ``scale`` as in the module docstring
    (default: the panel's ``"scale"``, else ``"per-image"``)."""
    items = _check(panel)
    scale = scale or panel.get("scale") or "per-image"
    top = [_cell(it.get("label", ""), it.get("score"), it.get("meta", {}), _data_uri(_png(_gray(it["image"]))), f"{it.get('label', '')} image") for it in items]
    bottom, bar = _heat_row(items, scale, cmap)
    rows = [_row_html("images", top, None), _row_html(panel.get("method", "heatmaps"), bottom, bar)]
    pairwise = panel.get("pairwise") or []
    if pairwise:
        cells, pbar = _heat_row(pairwise, scale, cmap)
        spacer = "<figure></figure>"  # keeps each pairwise map under its neighbour
        rows.append(_row_html("query vs neighbour", [spacer] + cells, pbar))
    title = html.escape(panel.get("title", "medcbir explanation"))
    note = "each heatmap normalised on its own (1st–99th percentile)" if scale == "per-image" else "one colour scale per row (1st–99th percentile of the row)"
    caption = html.escape(f"{panel.get('caption', '')} Colours: {note}; raw range under each map.".strip())
    if panel.get("caveat"):
        caption += '</p><p class="caveat">' + html.escape(panel["caveat"])
    sections = "".join(panel.get("sections") or [])  # more of the page, rendered by their owners (a region match)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
        f"<body><h1>{title}</h1><p>{caption}</p>{''.join(rows)}{sections}</body></html>\n"
    )


def render_png(path_png: str | Path, panel: dict, cmap: str = "jet", scale: str | None = None) -> Path:
    """The panel as one PNG figure (matplotlib, Agg backend); ``scale`` as for :func:`render_html`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    items = _check(panel)
    scale = scale or panel.get("scale") or "per-image"
    pairwise = panel.get("pairwise") or []
    n = len(items)
    nrows = 3 if pairwise else 2
    fig = Figure(figsize=(2.2 * n + 0.8, 2.5 * nrows), dpi=100)
    grid = fig.add_gridspec(nrows, n + 1, width_ratios=[1] * n + [0.08])
    scaled, _, raw = normalise_heatmaps([it["heatmap"] for it in items], scale)
    mappable = None
    for j, it in enumerate(items):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(it["image"], cmap="gray", vmin=0, vmax=1)
        meta = it.get("meta") or {}
        score = f"\n{it['score']:.4f}" if it.get("score") is not None else ""
        ax.set_title(f"{it.get('label', '')}{score}\n…{str(meta.get('sop_instance_uid', ''))[-14:]}", fontsize=7)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(it["image"], cmap="gray", vmin=0, vmax=1)
        mappable = ax.imshow(scaled[j], cmap=cmap, vmin=0, vmax=1, alpha=overlay_alpha(scaled[j]))
        ax.set_title(f"raw {raw[j][0]:.5g}–{raw[j][1]:.5g}", fontsize=6)
        ax.axis("off")
    bar = fig.colorbar(mappable, cax=fig.add_subplot(grid[1, n]))
    bar.set_label("per image p1–p99" if scale == "per-image" else "shared p1–p99", fontsize=6)
    if pairwise:
        pscaled, _, praw = normalise_heatmaps([p["heatmap"] for p in pairwise], scale)
        for j, p in enumerate(pairwise):
            ax = fig.add_subplot(grid[2, j + 1])
            ax.imshow(p["image"], cmap="gray", vmin=0, vmax=1)
            pm = ax.imshow(pscaled[j], cmap=cmap, vmin=0, vmax=1, alpha=overlay_alpha(pscaled[j]))
            ax.set_title(f"{p.get('label', '')}\nraw {praw[j][0]:.5g}–{praw[j][1]:.5g}", fontsize=6)
            ax.axis("off")
        fig.colorbar(pm, cax=fig.add_subplot(grid[2, n]))
    fig.suptitle(panel.get("title", "") + (f"\n{panel['caveat']}" if panel.get("caveat") else ""), fontsize=9)
    path_png = Path(path_png)
    tmp = path_png.with_name(path_png.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path_png)
    return path_png


def render_report(path_html: str | Path, panel: dict, cmap: str = "jet", scale: str | None = None) -> tuple[Path, Path]:
    """Write the HTML report and its PNG panel (``<name>.png`` next to it).

    Args:
        path_html: the HTML file to write (its folder is created).
        panel: ``{"title", "method", "caption", "items": [{"label", "score", "meta", "image"
            (H×W in [0,1]), "heatmap" (H×W)}], "pairwise": [{"label", "image", "heatmap"}]}``;
            the first item is the query; ``"sections"``: HTML sections appended to the page
            (e.g. :func:`medcbir.explain.region_files.region_section_html`).
        cmap: matplotlib colour map of the heatmaps (``"jet"``, ``"inferno"``...).
        scale: ``"per-image"`` (default) or ``"shared"`` (see the module docstring); None =
            the panel's ``"scale"`` key, else per-image.

    Returns:
        (html path, png path).
    """
    path_html = Path(path_html)
    path_html.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(panel, cmap, scale)
    tmp = path_html.with_name(path_html.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path_html)
    return path_html, render_png(path_html.with_suffix(".png"), panel, cmap, scale)
