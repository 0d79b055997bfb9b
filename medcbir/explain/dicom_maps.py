"""Explanations as DICOM: a Secondary Capture overlay and a Parametric Map per explained image.

For the query and each neighbour of an :class:`~medcbir.explain.runner.Explanation`:

- the heatmap (model-input geometry, S×S) is put back on its source image's pixel grid: resized
  onto the region the preprocessing cut (the body crop, or the whole image with its aspect kept)
  and zero outside it, so both objects align pixel for pixel with the source;
- a **Secondary Capture** (RGB) shows the source image at its stored resolution in its reading
  window (:mod:`medcbir.imaging.reading_window`: its VOI window, a CT body-part preset, else
  1-99 %) with the heatmap's colour map burned in over the whole frame (outside the region the
  encoder saw, the map's lowest value: no importance), blended in proportion to the importance so
  that no crop rectangle shows, and a caption line burned in at the bottom (the method, its
  measured status, "not for diagnosis"; ``BurnedInAnnotation YES``, ``ImageType
  DERIVED\\SECONDARY``, "not for diagnosis" in the series description, image comments and
  derivation description);
- a **Parametric Map** carries the raw heatmap values as 32-bit floats with a real-world value
  mapping named after the method.

Both reference their source (Source Image Sequence, and highdicom's references for the map),
live in the source's patient and study, and go in new series: one Secondary Capture series and
one Parametric Map series per explanation and study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcbir.engine.dicom_kos import query_source
from medcbir.errors import DecodeError
from medcbir.explain.status import CAVEAT, display_name
from medcbir.imaging import read_dicom
from medcbir.imaging.dicom_out.common import read_header, save
from medcbir.imaging.dicom_out.parametric_map import parametric_map
from medcbir.imaging.dicom_out.secondary_capture import burn_caption, overlay_rgb, secondary_capture
from medcbir.imaging.foreground import Region


def heatmap_on_source(heatmap: np.ndarray, item, preprocessing) -> np.ndarray:
    """``heatmap`` (S×S, model input) on ``item``'s rows×cols grid; 0 where the input saw nothing.

    Args:
        heatmap: the explanation of the preprocessed image of ``item``.
        item: the decoded source frame (:class:`medcbir.imaging.Item`).
        preprocessing: the encoder's :class:`medcbir.imaging.Preprocessing`.
    """
    from PIL import Image

    h, w = np.asarray(item.pixels).shape
    if getattr(preprocessing, "crop", "none") == "body":
        region = preprocessing.region(item)
    else:  # resize_keep_aspect: the longer side fills the input, the other is centred in padding
        side = max(h, w)
        region = Region((h - side) // 2, (w - side) // 2, side, side)
    heat = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
                      .resize((region.width, region.height), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.zeros((h, w), dtype=np.float32)
    r0, c0 = max(0, region.top), max(0, region.left)
    r1, c1 = min(h, region.top + region.height), min(w, region.left + region.width)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = heat[r0 - region.top:r1 - region.top, c0 - region.left:c1 - region.left]
    return out


def seen_region(item, preprocessing) -> np.ndarray:
    """rows×cols bool: the pixels of ``item`` the encoder's input was cut from."""
    h, w = np.asarray(item.pixels).shape
    inside = heatmap_on_source(np.ones((8, 8), np.float32), item, preprocessing)
    return inside.reshape(h, w) > 0


def whole_frame(heat: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``heat`` over the whole frame: outside ``seen`` the lowest value inside it (no importance)."""
    out = np.asarray(heat, dtype=np.float32).copy()
    if seen.any() and not seen.all():
        out[~seen] = float(out[seen].min())
    return out


@dataclass
class ExplanationObjects:
    """The objects of one explanation: per explained image, its overlay and its map."""

    overlays: list = field(default_factory=list)
    maps: list = field(default_factory=list)

    def all(self) -> list:
        return [*self.overlays, *self.maps]


def _frame_item(source: Path, frame: int, key: bytes | None):
    items = read_dicom(source, key=key)
    match = [it for it in items if it.meta.frame == frame] or items[frame:frame + 1]
    if not match:
        raise DecodeError(f"{source} has no frame {frame}")
    return match[0]


def explanation_objects(explanation, query_source: Path, preprocessing, key: bytes | None = None, caption: str = "") -> ExplanationObjects:
    """Overlays and maps for the query and every neighbour of ``explanation``.

    Args:
        explanation: the :class:`~medcbir.explain.runner.Explanation` (heatmaps row 0 = query).
        query_source: the query's DICOM file.
        preprocessing: the encoder's preprocessing (to put heatmaps back on the source grid).
        key: the archive's pseudonym key (decoding only).
        caption: the line burned into every overlay (the method's measured status and the
            "not for diagnosis" caveat); default: the method and the caveat.
    """
    import highdicom as hd

    sources = [(Path(query_source), 0)] + [(Path(str(nb.meta.get("source", ""))), int(nb.meta.get("frame", 0) or 0))
                                           for nb in explanation.neighbours]
    series: dict[tuple[str, str], str] = {}
    out = ExplanationObjects()
    for i, (source, frame) in enumerate(sources):
        if not source.is_file():
            raise DecodeError(f"cannot write explanation objects: source {source} is not a local file")
        header = read_header(source)
        item = _frame_item(source, frame, key)
        heat = heatmap_on_source(explanation.heatmaps[i], item, preprocessing)
        study = str(header.StudyInstanceUID)
        sc_series = series.setdefault((study, "SC"), hd.UID())
        pm_series = series.setdefault((study, "PM"), hd.UID())
        shown = whole_frame(heat, seen_region(item, preprocessing))
        line = caption or f"{display_name(explanation.method)} heatmap. {CAVEAT}"
        short = f"{display_name(explanation.method)} - NOT FOR DIAGNOSIS"
        out.overlays.append(secondary_capture(header, frame, overlay_rgb(item, shown, line, short), explanation.method, sc_series, i + 1,
                                              status=caption))
        out.maps.append(parametric_map(header, heat, explanation.method, pm_series, i + 1))
    return out


def write_explanation(engine, query, explanation, folder) -> list[Path]:
    """Save the overlays and maps of ``explanation`` (of ``query``) in ``folder``; their paths."""
    objects = explanation_objects(explanation, Path(query_source(engine, query)), engine.encoder.preprocessing, engine.pseudonym_key)
    return [save(ds, folder) for ds in objects.all()]


def _draw_box(rgb: np.ndarray, box, colour=(0, 255, 0)) -> np.ndarray:
    """``rgb`` with the outline of ``box`` ``(x, y, w, h)`` drawn one pixel wide."""
    out = rgb.copy()
    h, w = out.shape[:2]
    x, y, bw, bh = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w - 1, x + bw - 1), min(h - 1, y + bh - 1)
    if x1 < x0 or y1 < y0:
        return out
    out[y0, x0:x1 + 1] = colour
    out[y1, x0:x1 + 1] = colour
    out[y0:y1 + 1, x0] = colour
    out[y0:y1 + 1, x1] = colour
    return out


def region_explanation_objects(explanation, key: bytes | None = None, status: str = "") -> ExplanationObjects:
    """Overlays and maps of a region-match explanation (:class:`~medcbir.explain.regions.RegionExplanation`):
    for each neighbour, its map (already on the neighbour's stored pixel grid) as a Parametric Map,
    and a Secondary Capture of the frame with the map blended in and the matched box outlined in
    green. The query has no map (a region match is explained over the neighbour), so no object.
    ``status``: the method's measured status on the index, burned into the caption and kept in
    the overlays' Image Comments (as for slice explanations)."""
    import highdicom as hd

    series: dict[tuple[str, str], str] = {}
    out = ExplanationObjects()
    method = f"region-{explanation.method}"
    for i, nb in enumerate(explanation.neighbours):
        source, frame = Path(str(nb.meta.get("source", ""))), int(nb.meta.get("frame", 0) or 0)
        if not source.is_file():
            raise DecodeError(f"cannot write explanation objects: source {source} is not a local file")
        header = read_header(source)
        item = _frame_item(source, frame, key)
        rows, cols = explanation.shapes[i]
        heat = np.ascontiguousarray(explanation.maps[i][:rows, :cols], dtype=np.float32)
        study = str(header.StudyInstanceUID)
        sc_series = series.setdefault((study, "SC"), hd.UID())
        pm_series = series.setdefault((study, "PM"), hd.UID())
        line = f"Region match ({display_name(explanation.method)}), matched box in green. {status + '. ' if status else ''}{CAVEAT}"
        short = f"{display_name(explanation.method)} - NOT FOR DIAGNOSIS"
        rgb = _draw_box(overlay_rgb(item, heat), nb.region)
        out.overlays.append(secondary_capture(header, frame, burn_caption(rgb, line, short), method, sc_series, i + 1, status=status))
        out.maps.append(parametric_map(header, heat, method, pm_series, i + 1))
    return out


def write_region_explanation_dicom(engine, explanation, folder, status: str = "") -> list[Path]:
    """Save the overlays and maps of a region-match explanation in ``folder``; their paths."""
    objects = region_explanation_objects(explanation, engine.pseudonym_key, status)
    return [save(ds, folder) for ds in objects.all()]
