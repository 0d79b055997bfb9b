"""What the imaging stage hands to the rest of medcbir: items, their metadata, skip reasons.

An *item* is one 2D image = one DICOM frame, keyed by ``(sop_instance_uid, frame)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from medcbir.errors import DecodeError

#: The fixed vocabulary of reasons a file is skipped (docs/contracts.md).
SKIP_REASONS: tuple[str, ...] = (
    "not-dicom",
    "dicomdir",
    "no-pixel-data",
    "truncated",
    "undecodable-syntax",
    "unsupported-image",
    "too-large",
    "timeout",
    "corrupt",
    "modality-mismatch",
    "not-an-image",
    "derived-by-medcbir",
)


class SkipFile(DecodeError):
    """A file that cannot become items, with a reason from :data:`SKIP_REASONS`.

    It is a :class:`~medcbir.errors.DecodeError`, so a query file that must be skipped turns
    into a one-line CLI error; the walk catches it and counts the reason instead.

    Args:
        reason: one of :data:`SKIP_REASONS`.
        detail: one human-readable line saying what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.reason = reason
        self.detail = " ".join(str(detail).split())[:300]
        super().__init__(f"{reason}: {self.detail}" if self.detail else reason)

    def __reduce__(self):  # picklable across worker processes
        return (SkipFile, (self.reason, self.detail))


@dataclass(frozen=True)
class ItemMeta:
    """Metadata of one item; never holds the raw PatientID or PatientName.

    ``patient_pseudonym`` is the first 32 hex chars of HMAC-SHA256(PatientID, archive key),
    ``""`` without a key. ``study_datetime`` is StudyDate + StudyTime as ``YYYYMMDDHHMMSS``
    (time ``000000`` when absent; ``""`` without a StudyDate): it orders a patient's exams.
    """

    sop_instance_uid: str
    frame: int = 0
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    modality: str = ""
    body_part: str = ""
    patient_pseudonym: str = ""
    instance_number: int = -1
    slice_position: float = math.nan
    rows: int = 0
    cols: int = 0
    pixel_spacing: tuple[float, float] = (math.nan, math.nan)
    transfer_syntax: str = ""
    source: str = ""
    study_datetime: str = ""

    COLUMNS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """Field name → value, in :attr:`COLUMNS` order (``pixel_spacing`` as a 2-tuple)."""
        return {name: getattr(self, name) for name in self.COLUMNS}

    @classmethod
    def from_dict(cls, data: dict) -> "ItemMeta":
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        values = {k: data[k] for k in cls.COLUMNS if k in data}
        if "pixel_spacing" in values:
            values["pixel_spacing"] = tuple(float(v) for v in values["pixel_spacing"])
        return cls(**values)


ItemMeta.COLUMNS = tuple(f.name for f in dataclasses.fields(ItemMeta))


@dataclass
class Item:
    """One decoded frame in modality units.

    Attributes:
        meta: the item's metadata.
        pixels: float32 H×W in modality units (HU for CT); colour already reduced to luma.
        voi: the file's VOI window as (centre, width), or None.
        inverted: True for MONOCHROME1 (display inverts after windowing).
        plane: ``axial``, ``coronal``, ``sagittal``, ``oblique`` (from ImageOrientationPatient),
            or ``""`` when the file has none.
    """

    meta: ItemMeta
    pixels: np.ndarray
    voi: tuple[float, float] | None = None
    inverted: bool = False
    plane: str = ""


@dataclass
class Decoded:
    """What a walk yields: an item's metadata and its image (preprocessed or modality units).

    ``extras`` holds what the preprocessing computed beside the image from the frame in modality
    units (``{"regions": RegionSet}`` for an index with regions), empty otherwise.
    """

    meta: ItemMeta
    image: np.ndarray
    extras: dict = field(default_factory=dict)

    def __iter__(self):  # allows ``meta, image = decoded``
        return iter((self.meta, self.image))


def decoded_item(item: Item, preprocessing) -> Decoded:
    """``item`` as a walk yields it: preprocessed when ``preprocessing`` is given, with the
    preprocessing's ``extras(item)`` when it has that method."""
    if preprocessing is None:
        return Decoded(item.meta, item.pixels)
    extras = preprocessing.extras(item) if hasattr(preprocessing, "extras") else {}
    return Decoded(item.meta, preprocessing.apply(item), extras)


@dataclass
class WalkReport:
    """Counts of a walk: every listed file is decoded, skipped (with a reason) or passed.

    Attributes:
        files: files listed (including passed ones).
        items: items yielded.
        decoded_files: files that gave at least one item.
        skipped: reason → number of files.
        by_modality: modality → number of items.
        by_transfer_syntax: transfer syntax UID → number of items.
        quarantined: (path, reason, detail) of every skipped file.
        passed: files the caller's ``skip_path`` predicate excluded (e.g. already indexed).
        elapsed_s: wall time of the walk so far.
    """

    files: int = 0
    items: int = 0
    decoded_files: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    by_modality: dict[str, int] = field(default_factory=dict)
    by_transfer_syntax: dict[str, int] = field(default_factory=dict)
    quarantined: list[tuple[str, str, str]] = field(default_factory=list)
    passed: int = 0
    elapsed_s: float = 0.0

    def count_items(self, metas) -> None:
        metas = list(metas)
        if metas:
            self.decoded_files += 1
        for meta in metas:
            self.items += 1
            self.by_modality[meta.modality or "?"] = self.by_modality.get(meta.modality or "?", 0) + 1
            ts = meta.transfer_syntax or "?"
            self.by_transfer_syntax[ts] = self.by_transfer_syntax.get(ts, 0) + 1

    def count_skip(self, path: str, reason: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.quarantined.append((path, reason, detail))

    def to_dict(self) -> dict:
        """JSON-ready dict (quarantined as a list of [path, reason, detail])."""
        data = dataclasses.asdict(self)
        data["quarantined"] = [list(q) for q in self.quarantined]
        return data
