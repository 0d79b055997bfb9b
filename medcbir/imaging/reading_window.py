"""The window a radiologist reads an image in, for medcbir's own renderings (viewer, report).

Not the encoder's window (that one is part of the model): what a person looks at. In order:

1. the image's own VOI window (WindowCenter/WindowWidth), as the scanner or the PACS set it;
2. for CT without one, a preset by body part (:data:`BODY_PART_PRESETS`; soft tissue,
   ``ct-abdomen``, when the body part is unknown or not listed);
3. otherwise the image's 1st–99th percentiles.

The image keeps its stored resolution (rows × columns); MONOCHROME1 is inverted after windowing.
"""

from __future__ import annotations

import numpy as np

from medcbir.imaging.windows import WINDOWS

BODY_PART_PRESETS = {
    "HEAD": "ct-brain", "BRAIN": "ct-brain", "SKULL": "ct-bone",
    "CHEST": "ct-mediastinum", "THORAX": "ct-mediastinum", "LUNG": "ct-lung", "HEART": "ct-mediastinum",
    "ABDOMEN": "ct-abdomen", "LIVER": "ct-abdomen", "PELVIS": "ct-abdomen", "KIDNEY": "ct-abdomen",
    "SPINE": "ct-bone", "CSPINE": "ct-bone", "TSPINE": "ct-bone", "LSPINE": "ct-bone",
}
SOFT_TISSUE = "ct-abdomen"


def reading_window(item) -> tuple[float, float, str]:
    """``(low, high, how)`` of the window to show ``item`` in (modality units); ``how`` names it
    (``"VOI 40/400"``, ``"CT preset ct-abdomen"``, ``"1-99 %"``)."""
    if item.voi is not None and float(item.voi[1]) > 0:
        centre, width = float(item.voi[0]), float(item.voi[1])
        return centre - width / 2, centre + width / 2, f"VOI {centre:g}/{width:g}"
    if str(item.meta.modality).upper() == "CT":
        name = BODY_PART_PRESETS.get(str(item.meta.body_part or "").upper().replace(" ", ""), SOFT_TISSUE)
        lo, hi = WINDOWS[name]
        return float(lo), float(hi), f"CT preset {name}"
    pixels = np.asarray(item.pixels, dtype=np.float32)
    finite = pixels[np.isfinite(pixels)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1.0), "1-99 %"


def windowed(item) -> tuple[np.ndarray, str]:
    """``item``'s pixels in its reading window as float32 in [0, 1] (rows × columns) and the
    window's name."""
    lo, hi, how = reading_window(item)
    grey = np.clip((np.asarray(item.pixels, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if getattr(item, "inverted", False):
        grey = 1.0 - grey
    return np.nan_to_num(grey), how
