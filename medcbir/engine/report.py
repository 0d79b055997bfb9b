"""The explanation report: one self-contained HTML page and a PNG of the same panel.

Laid out like the figures of the RELAX paper: the top row shows the query and its top-K
neighbours with their similarity scores and image identifiers (UIDs, series, modality — never
patient identity), the bottom row each image's heatmap over it, on one colour scale per row with
a colour bar; an optional third row holds the query explained w.r.t. each neighbour. Images are
inlined as base64 PNG, so the file can be mailed or archived alone.

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
    ("sop_instance_uid", "SOP"),
    ("frame", "frame"),
    ("series_instance_uid", "series"),
    ("study_instance_uid", "study"),
    ("modality", "modality"),
    ("body_part", "body part"),
    ("instance_number", "instance"),
    ("slice_position", "z"),
)
OVERLAY_ALPHA = 0.5


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


def _overlay(image: np.ndarray, heat: np.ndarray, lo: float, hi: float, cmap: str) -> np.ndarray:
    scaled = np.clip((np.asarray(heat, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    colour = _cmap(cmap)(scaled)[..., :3]
    base = _gray(image).astype(np.float64) / 255
    return (255 * ((1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * colour)).round().astype(np.uint8)


def _colourbar(lo: float, hi: float, cmap: str, height: int = 160) -> np.ndarray:
    ramp = np.linspace(1, 0, height)[:, None].repeat(16, axis=1)
    return (_cmap(cmap)(ramp)[..., :3] * 255).round().astype(np.uint8)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _scale(heatmaps: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([np.asarray(h, dtype=np.float64).ravel() for h in heatmaps])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    return float(values.min()), float(values.max())


def _check(panel: dict) -> list[dict]:
    items = panel.get("items")
    if not items:
        raise ConfigError("a report panel needs at least one item (the query)")
    for i, item in enumerate(items):
        img, heat = np.asarray(item.get("image")), np.asarray(item.get("heatmap"))
        if img.ndim != 2 or heat.shape != img.shape:
            raise ConfigError(f"report item {i}: image and heatmap must be H×W of the same shape, got {img.shape} and {heat.shape}")
    return items


def _meta_rows(meta: dict) -> str:
    rows = []
    for key, name in SHOWN:
        if key in (meta or {}):
            value = meta[key]
            text = f"{value:.1f}" if isinstance(value, float) else str(value)
            short = text if len(text) <= 28 else "…" + text[-27:]
            rows.append(f'<div class="m"><span>{html.escape(name)}</span> <code title="{html.escape(text)}">{html.escape(short)}</code></div>')
    return "".join(rows)


def _cell(label: str, score, meta: dict | None, uri: str, alt: str) -> str:
    score_text = f'<div class="s">score {score:.4f}</div>' if score is not None else '<div class="s">&nbsp;</div>'
    return (
        f'<figure><div class="l">{html.escape(label)}</div>{score_text}'
        f'<img src="{uri}" alt="{html.escape(alt)}" width="160" height="160">'
        f"{_meta_rows(meta) if meta is not None else ''}</figure>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px} p{font-size:13px;color:#555;max-width:72em}
.row{display:flex;gap:10px;align-items:flex-start;margin:8px 0}
figure{margin:0;width:170px;font-size:11px}
figure img{image-rendering:pixelated;display:block;border:1px solid #ccc}
.l{font-weight:600} .s{color:#444} .m span{color:#777} code{font-size:10px}
.bar{display:flex;flex-direction:column;align-items:center;font-size:11px}
.rowname{writing-mode:vertical-rl;transform:rotate(180deg);font-size:12px;color:#666}
"""


def _row_html(name: str, cells: list[str], bar: str | None) -> str:
    return f'<div class="row"><div class="rowname">{html.escape(name)}</div>{"".join(cells)}{bar or ""}</div>'


def _bar_html(lo: float, hi: float, cmap: str) -> str:
    uri = _data_uri(_png(_colourbar(lo, hi, cmap)))
    return f'<div class="bar"><span>{hi:.4g}</span><img class="colourbar" src="{uri}" alt="colour bar" width="16" height="160"><span>{lo:.4g}</span></div>'


def render_html(panel: dict, cmap: str = "jet") -> str:
    """The report page as a string (every image inlined)."""
    items = _check(panel)
    lo, hi = _scale([it["heatmap"] for it in items])
    top = [_cell(it.get("label", ""), it.get("score"), it.get("meta", {}), _data_uri(_png(_gray(it["image"]))), f"{it.get('label', '')} image") for it in items]
    bottom = [
        _cell(it.get("label", ""), None, None, _data_uri(_png(_overlay(it["image"], it["heatmap"], lo, hi, cmap))), f"{it.get('label', '')} heatmap")
        for it in items
    ]
    rows = [_row_html("images", top, None), _row_html(panel.get("method", "heatmaps"), bottom, _bar_html(lo, hi, cmap))]
    pairwise = panel.get("pairwise") or []
    if pairwise:
        plo, phi = _scale([p["heatmap"] for p in pairwise])
        cells = [
            _cell(p.get("label", ""), None, None, _data_uri(_png(_overlay(p["image"], p["heatmap"], plo, phi, cmap))), f"{p.get('label', '')} heatmap")
            for p in pairwise
        ]
        spacer = "<figure></figure>"  # keeps each pairwise map under its neighbour
        rows.append(_row_html("query vs neighbour", [spacer] + cells, _bar_html(plo, phi, cmap)))
    title = html.escape(panel.get("title", "medcbir explanation"))
    caption = html.escape(panel.get("caption", ""))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>'
        f"<body><h1>{title}</h1><p>{caption}</p>{''.join(rows)}</body></html>\n"
    )


def render_png(path_png: str | Path, panel: dict, cmap: str = "jet") -> Path:
    """The panel as one PNG figure (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    items = _check(panel)
    pairwise = panel.get("pairwise") or []
    n = len(items)
    nrows = 3 if pairwise else 2
    fig = Figure(figsize=(2.2 * n + 0.8, 2.4 * nrows), dpi=100)
    grid = fig.add_gridspec(nrows, n + 1, width_ratios=[1] * n + [0.08])
    lo, hi = _scale([it["heatmap"] for it in items])
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
        mappable = ax.imshow(it["heatmap"], cmap=cmap, vmin=lo, vmax=hi, alpha=OVERLAY_ALPHA)
        ax.axis("off")
    fig.colorbar(mappable, cax=fig.add_subplot(grid[1, n]))
    if pairwise:
        plo, phi = _scale([p["heatmap"] for p in pairwise])
        for j, p in enumerate(pairwise):
            ax = fig.add_subplot(grid[2, j + 1])
            ax.imshow(p["image"], cmap="gray", vmin=0, vmax=1)
            pm = ax.imshow(p["heatmap"], cmap=cmap, vmin=plo, vmax=phi, alpha=OVERLAY_ALPHA)
            ax.set_title(p.get("label", ""), fontsize=7)
            ax.axis("off")
        fig.colorbar(pm, cax=fig.add_subplot(grid[2, n]))
    fig.suptitle(panel.get("title", ""), fontsize=9)
    path_png = Path(path_png)
    tmp = path_png.with_name(path_png.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path_png)
    return path_png


def render_report(path_html: str | Path, panel: dict, cmap: str = "jet") -> tuple[Path, Path]:
    """Write the HTML report and its PNG panel (``<name>.png`` next to it).

    Args:
        path_html: the HTML file to write (its folder is created).
        panel: ``{"title", "method", "caption", "items": [{"label", "score", "meta", "image"
            (H×W in [0,1]), "heatmap" (H×W)}], "pairwise": [{"label", "image", "heatmap"}]}``;
            the first item is the query.
        cmap: matplotlib colour map of the heatmaps (``"jet"``, ``"inferno"``...).

    Returns:
        (html path, png path).
    """
    path_html = Path(path_html)
    path_html.parent.mkdir(parents=True, exist_ok=True)
    text = render_html(panel, cmap)
    tmp = path_html.with_name(path_html.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path_html)
    return path_html, render_png(path_html.with_suffix(".png"), panel, cmap)
