"""Heatmap overlays as DICOM Secondary Capture images (RGB, burned-in caption), written with highdicom.

The overlay shows the source image at its stored resolution in its reading window
(:mod:`medcbir.imaging.reading_window`: its VOI window, a CT body-part preset, else 1-99 %) with
the heatmap's colour map blended in over the whole frame in proportion to the importance, and a
caption line burned in at the bottom (``BurnedInAnnotation YES``, ``ImageType
DERIVED\\SECONDARY``, "not for diagnosis" in the series description, image comments and
derivation description). It lives in its source's patient and study and references the source
(Source Image Sequence).
"""

from __future__ import annotations

import textwrap

import numpy as np

from medcbir.imaging.dicom_out.common import MANUFACTURER, NOT_FOR_DIAGNOSIS, mark
from medcbir.imaging.reading_window import windowed

OVERLAY_ALPHA = 0.55
CMAP = "jet"
SC_SERIES_NUMBER = 9902


def overlay_rgb(item, heat: np.ndarray, caption: str = "", short: str = "NOT FOR DIAGNOSIS") -> np.ndarray:
    """rows×cols×3 uint8: ``item`` at its stored resolution in its reading window with ``heat``'s
    colour map blended in over the whole frame (opacity growing with the importance, between
    its 1st and 99th percentiles), and ``caption`` burned in at the bottom (``short`` instead
    when the image is too small for the caption in two lines)."""
    import matplotlib

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
