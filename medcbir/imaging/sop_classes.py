"""Which DICOM objects are images for retrieval, and which only carry pixels (or none) beside one.

A Segmentation has a pixel matrix, but it is a label map of another image; an RT Structure Set,
a Structured Report, a Presentation State, a Key Object Selection and an Encapsulated PDF are
documents about images. Indexing them would put label maps and blank frames among a patient's
slices. medcbir's own derived objects (search results as KOS, explanation overlays as Secondary
Capture or Parametric Map) are not indexed either: a heatmap must never come back as a neighbour.

The first are skipped with the reason ``not-an-image``, medcbir's own objects (recognised by
their Manufacturer before their SOP class) with ``derived-by-medcbir``; both before any pixel is
decoded.
"""

from __future__ import annotations

#: SOP Class UID prefixes (ending with ".") and exact UIDs that are not images for retrieval,
#: with the name said in the skip detail. Prefixes cover families whose members keep being added.
NOT_IMAGE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.66.", "segmentation / registration / raw data"),  # SEG, surface SEG, label map, fiducials...
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report or key object selection"),  # every SR IOD, KOS = .88.59
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),  # grayscale, colour, pseudo-colour, blending...
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),  # PDF = .104.1, CDA, STL, OBJ, MTL
)
NOT_IMAGE_UIDS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
}

#: The Manufacturer medcbir writes into every object it derives (KOS, overlays, parametric maps),
#: and the file-meta ImplementationVersionName prefix it uses; either marks an object as ours.
DERIVED_MANUFACTURER = "medcbir"
DERIVED_IMPLEMENTATION_PREFIX = "MEDCBIR"


def not_image_class(sop_class_uid: str) -> str | None:
    """What kind of non-image object ``sop_class_uid`` names, or None for an image class."""
    uid = str(sop_class_uid or "").strip()
    if uid in NOT_IMAGE_UIDS:
        return NOT_IMAGE_UIDS[uid]
    for prefix, kind in NOT_IMAGE_PREFIXES:
        if uid.startswith(prefix):
            return kind
    return None


def _text(ds, keyword: str) -> str:
    """A tag as text, "" when absent or unreadable (real files are messy)."""
    if ds is None:
        return ""
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001
        return ""


def derived_by_medcbir(ds) -> bool:
    """True for an object medcbir wrote itself (see :data:`DERIVED_MANUFACTURER`)."""
    manufacturer = _text(ds, "Manufacturer").lower()
    version = _text(getattr(ds, "file_meta", None), "ImplementationVersionName")
    return manufacturer == DERIVED_MANUFACTURER or version.upper().startswith(DERIVED_IMPLEMENTATION_PREFIX)


def not_an_image(ds) -> str | None:
    """The skip detail when dataset ``ds`` must not be indexed as an image, else None."""
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
    kind = not_image_class(sop_class)
    if kind is not None:
        try:
            from pydicom.uid import UID

            name = UID(sop_class).name
        except Exception:  # noqa: BLE001 - the name is only for the message
            name = sop_class
        return f"{name} ({kind})" if name != sop_class else f"SOP class {sop_class} ({kind})"
    return None


def derived_detail(ds) -> str | None:
    """The skip detail when ``ds`` is medcbir's own object (reason ``derived-by-medcbir``), else None."""
    if not derived_by_medcbir(ds):
        return None
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
    try:
        from pydicom.uid import UID

        name = UID(sop_class).name
    except Exception:  # noqa: BLE001 - the name is only for the message
        name = sop_class
    return f"{name or 'object'} written by medcbir (a search result or an explanation, never indexed)"
