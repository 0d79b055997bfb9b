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

from medcbir.errors import DecodeError
from medcbir.imaging.derived import MANUFACTURER, MODEL_NAME, NOT_FOR_DIAGNOSIS, mark, read_header, software_version

OVERLAY_ALPHA = 0.55
CMAP = "jet"
SC_SERIES_NUMBER = 9902
PM_SERIES_NUMBER = 9903


def heatmap_on_source(heatmap: np.ndarray, item, preprocessing) -> np.ndarray:
    """``heatmap`` (S×S, model input) on ``item``'s rows×cols grid; 0 where the input saw nothing.

    Args:
        heatmap: the explanation of the preprocessed image of ``item``.
        item: the decoded source frame (:class:`medcbir.imaging.Item`).
        preprocessing: the encoder's :class:`medcbir.imaging.Preprocessing`.
    """
    from PIL import Image

    from medcbir.imaging.foreground import Region

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


def overlay_rgb(item, heat: np.ndarray, caption: str = "", short: str = "NOT FOR DIAGNOSIS") -> np.ndarray:
    """rows×cols×3 uint8: ``item`` at its stored resolution in its reading window with ``heat``'s
    colour map blended in over the whole frame (opacity growing with the importance, between
    its 1st and 99th percentiles), and ``caption`` burned in at the bottom (``short`` instead
    when the image is too small for the caption in two lines)."""
    import matplotlib

    from medcbir.imaging.reading_window import windowed

    grey, _ = windowed(item)
    hlo, hhi = np.percentile(heat, [1, 99]) if heat.size else (0.0, 1.0)
    scaled = np.clip((heat - hlo) / max(float(hhi - hlo), 1e-12), 0, 1)
    colour = matplotlib.colormaps[CMAP](scaled)[..., :3]
    alpha = (OVERLAY_ALPHA * (0.2 + 0.8 * scaled))[..., None]  # more opaque where the importance is higher
    rgb = grey[..., None] * (1 - alpha) + colour * alpha
    out = (rgb * 255).round().astype(np.uint8)
    return burn_caption(out, caption, short) if caption else out


def burn_caption(rgb: np.ndarray, caption: str, short: str = "NOT FOR DIAGNOSIS") -> np.ndarray:
    """``caption`` written in white on a dark band at the bottom of ``rgb`` (wrapped to its width,
    at most two lines; ``short`` when the caption needs more), so the band covers little of it."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    size = max(6, min(14, h // 24, w // 24))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # an old Pillow: the fixed bitmap font
        font = ImageFont.load_default()
    per_line = max(8, int(w / (0.55 * size)))
    most = 1 if h < 160 else 2
    lines = textwrap.wrap(caption, per_line)
    if len(lines) > most:
        lines = textwrap.wrap(short, per_line)
    if len(lines) > most:
        lines = textwrap.wrap("NOT FOR DIAGNOSIS", per_line)[:most]
    band = (size + 2) * len(lines) + 4
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, max(0, h - band), w, h], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((3, h - band + 2 + i * (size + 2)), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _source_image_sequence(header, frame: int, purpose: str):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = frame + 1
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121322", "DCM", "Source image for image processing operation"
    ref.PurposeOfReferenceCodeSequence = [code]
    return [ref]


def secondary_capture(header, frame: int, rgb: np.ndarray, method: str, series_uid: str, instance_number: int,
                      status: str = ""):
    """The overlay as a highdicom Secondary Capture in ``header``'s patient/study (``status``: the
    method's measured status, kept in its Image Comments)."""
    import highdicom as hd

    spacing = header.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        patient_orientation=("L", "P"), transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "YES"
    sc.SourceImageSequence = _source_image_sequence(header, frame, "source")
    sc.DerivationDescription = f"{method} explanation heatmap (medcbir) burned into the source image; {NOT_FOR_DIAGNOSIS}"
    sc.ImageComments = f"{method} heatmap overlay, {NOT_FOR_DIAGNOSIS}" + (f". {status}" if status else "")
    sc.ConversionType = "WSD"
    sc.Laterality = header.get("Laterality", "")  # type 2C in General Series: empty when unknown
    mark(sc, f"medcbir {method} overlay - NOT FOR DIAGNOSIS")
    return sc


def parametric_map(header, heat: np.ndarray, method: str, series_uid: str, instance_number: int):
    """The raw heatmap values as a float highdicom Parametric Map on ``header``'s grid."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    lo, hi = float(np.min(heat)), float(np.max(heat))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=method[:16], lut_explanation=f"{method} importance (medcbir)"[:64],
        unit=codes.UCUM.NoUnits, value_range=(lo, hi if hi > lo else lo + 1.0), slope=1.0, intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=[header], pixel_array=heat[None].astype(np.float32), series_instance_uid=series_uid,
        series_number=PM_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=software_version(),
        device_serial_number="none", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # heatmap values span far less than 1: a width < 1 needs LINEAR_EXACT
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=(lo + hi) / 2, window_width=max(hi - lo, 1e-6),
                                                         window_explanation="heatmap range", voi_lut_function="LINEAR_EXACT")],
        content_description=f"{method} heatmap values, {NOT_FOR_DIAGNOSIS}"[:64], content_label="HEATMAP",
    )
    pm.Laterality = header.get("Laterality", "")
    mark(pm, f"medcbir {method} heatmap values - NOT FOR DIAGNOSIS")
    return pm


@dataclass
class ExplanationObjects:
    """The objects of one explanation: per explained image, its overlay and its map."""

    overlays: list = field(default_factory=list)
    maps: list = field(default_factory=list)

    def all(self) -> list:
        return [*self.overlays, *self.maps]


def _frame_item(source: Path, frame: int, key: bytes | None):
    from medcbir.imaging import read_dicom

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
    from medcbir.explain.status import CAVEAT, display_name

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
    from medcbir.engine.dicom_kos import query_source
    from medcbir.imaging.derived import save

    objects = explanation_objects(explanation, Path(query_source(engine, query)), engine.encoder.preprocessing, engine.pseudonym_key)
    return [save(ds, folder) for ds in objects.all()]
