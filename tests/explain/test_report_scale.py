"""Readable heatmaps: each map normalised on its own by default, a shared scale on request, and
each map's raw range printed — checked on the rendered overlay pixels, not on the code path."""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
import pytest
from PIL import Image

from medcbir.explain.report import normalise_heatmaps, overlay_alpha, render_html, render_report
from medcbir.errors import ConfigError


def _panel(n: int = 4, size: int = 24) -> dict:
    """Maps like a near-uniform encoder's: each with structure, all within 0.9955–0.9975 but offset per image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size] / size
    items = []
    for i in range(n):
        structure = np.sin(6 * xx + i) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size))
        heat = 0.9955 + 0.0005 * i + 0.00025 * (structure - structure.min()) / np.ptp(structure)
        items.append({"label": f"#{i}", "score": None, "meta": {}, "image": np.zeros((size, size)), "heatmap": heat})
    return {"title": "t", "method": "relax", "items": items}


def _overlays(text: str) -> list[np.ndarray]:
    """The heatmap overlays of the page (the images whose alt ends with 'heatmap'), as RGB arrays."""
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*heatmap"', text)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB"), dtype=np.float64) for u in uris]


def _ends(cmap: str = "jet") -> tuple[np.ndarray, np.ndarray]:
    """The overlay colour of the bottom and the top of the colour map over a black image (each
    blended at its own opacity: higher values are more opaque)."""
    c = matplotlib.colormaps[cmap]
    return tuple(255 * float(overlay_alpha(np.array(v))) * np.asarray(c(v)[:3]) for v in (0.0, 1.0))


def _reaches(overlay: np.ndarray, colour: np.ndarray) -> bool:
    return bool((np.abs(overlay - colour).max(axis=2) <= 1.0).any())


def test_per_image_normalisation_makes_every_map_span_the_full_colour_range():
    panel = _panel()
    low, high = _ends()
    overlays = _overlays(render_html(panel))
    assert len(overlays) == len(panel["items"])
    for overlay in overlays:
        assert _reaches(overlay, low) and _reaches(overlay, high)
    scaled, ranges, raw = normalise_heatmaps([it["heatmap"] for it in panel["items"]])
    for m, (lo, hi), (mn, mx), it in zip(scaled, ranges, raw, panel["items"]):
        assert m.min() == 0.0 and m.max() == 1.0
        assert (lo, hi) == pytest.approx(tuple(np.percentile(it["heatmap"], [1, 99])))
        assert (mn, mx) == (float(it["heatmap"].min()), float(it["heatmap"].max()))


def test_shared_scale_keeps_magnitudes_comparable():
    panel = _panel()
    low, high = _ends()
    overlays = _overlays(render_html(panel, scale="shared"))
    # the lowest map never reaches the top colour, the highest never the bottom one
    assert _reaches(overlays[0], low) and not _reaches(overlays[0], high)
    assert _reaches(overlays[-1], high) and not _reaches(overlays[-1], low)
    with pytest.raises(ConfigError, match="scale"):
        render_html(panel, scale="log")


def test_raw_range_is_printed_per_image(tmp_path):
    panel = _panel(3)
    html_path, png_path = render_report(tmp_path / "r.html", panel)
    text = html_path.read_text()
    for it in panel["items"]:
        assert f"raw {it['heatmap'].min():.6g} – {it['heatmap'].max():.6g}" in text
    assert "normalised on its own" in text
    with Image.open(png_path) as png:
        assert png.format == "PNG"


def test_a_constant_map_does_not_divide_by_zero():
    scaled, _, raw = normalise_heatmaps([np.full((4, 4), 0.5), np.arange(16.0).reshape(4, 4)])
    assert np.all(scaled[0] == 0) and raw[0] == (0.5, 0.5) and scaled[1].max() == 1.0
