"""The HTML report renders every image in headless Chromium; the PNG panel is a real image."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from medcbir.explain.report import render_html, render_report
from medcbir.errors import ConfigError
from tests.conftest import require_binary

COUNT_SCRIPT = (
    "<script>window.addEventListener('load', () => {"
    " const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0);"
    " document.body.setAttribute('data-rendered', ok.length);"
    " document.body.setAttribute('data-total', document.images.length); });</script>"
)


def _panel(k: int, pairwise: bool = False, size: int = 32) -> dict:
    rng = np.random.default_rng(0)
    items = []
    for i in range(k + 1):
        items.append(
            {
                "label": "query" if i == 0 else f"#{i}",
                "score": None if i == 0 else 0.95 - 0.01 * i,
                "meta": {"sop_instance_uid": f"1.2.826.0.1.{i}", "series_instance_uid": "1.2.826.0.9", "modality": "CT",
                         "patient_pseudonym": "abcdef0123456789", "patient_id": "Doe^John"},
                "image": rng.random((size, size)),
                "heatmap": rng.random((size, size)) * (i + 1),
            }
        )
    panel = {"title": "RELAX test", "method": "relax", "items": items}
    if pairwise:
        panel["pairwise"] = [{"label": f"query vs #{i}", "image": items[0]["image"], "heatmap": rng.random((size, size))} for i in range(1, k + 1)]
    return panel


def chromium_counts(html_path, tmp_path) -> tuple[int, int]:
    """(images rendered with naturalWidth > 0, images in the page) after Chromium loads it."""
    chromium = require_binary("chromium")
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", COUNT_SCRIPT + "</body>"))
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    match = re.search(r'data-rendered="(\d+)" data-total="(\d+)"', result.stdout)
    assert match, (result.returncode, result.stderr[-2000:])
    return int(match[1]), int(match[2])


@pytest.mark.chromium
def test_report_renders_every_image_in_chromium(tmp_path):
    k = 5
    html_path, png_path = render_report(tmp_path / "out" / "report.html", _panel(k, pairwise=True))
    # top row 1+K images, bottom row 1+K overlays, K pairwise overlays, two colour bars
    expected = 2 * (k + 1) + k + 2
    rendered, total = chromium_counts(html_path, tmp_path)
    assert (rendered, total) == (expected, expected)
    with Image.open(png_path) as png:
        assert png.format == "PNG" and png.width > 400
        pixels = np.asarray(png.convert("L"))
        assert pixels.std() > 10  # not blank


def test_report_is_self_contained_and_shows_no_patient_identity(tmp_path):
    html_path, _ = render_report(tmp_path / "r.html", _panel(3))
    text = html_path.read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]*)"', text)
    assert len(srcs) == 2 * 4 + 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "1.2.826.0.1.3" in text and "score 0.9200" in text
    assert "abcdef0123456789" not in text and "Doe" not in text and "patient" not in text.lower()


def test_heatmap_row_shares_one_scale_when_asked():
    panel = _panel(2)
    panel["items"][1]["heatmap"] = np.full((32, 32), 7.0)
    text = render_html(panel, scale="shared")
    values = np.concatenate([it["heatmap"].ravel() for it in panel["items"]])
    lo, hi = np.percentile(values, [1, 99])  # robust range of the whole row
    assert f"<span>{hi:.4g}</span>" in text and f"<span>{lo:.4g}</span>" in text


def test_bad_panel_raises_config_error(tmp_path):
    with pytest.raises(ConfigError):
        render_report(tmp_path / "r.html", {"items": []})
    panel = _panel(1)
    panel["items"][1]["heatmap"] = np.zeros((8, 8))
    with pytest.raises(ConfigError):
        render_report(tmp_path / "r.html", panel)
