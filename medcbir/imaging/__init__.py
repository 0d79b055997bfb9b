"""medcbir.imaging: DICOM in, images out (see docs/contracts.md, imaging section).

Items (one per frame) in modality units with metadata and a keyed patient pseudonym, named and
DICOM windows, the preprocessing recipe that is part of a model, walking an archive with worker
processes, the :class:`Source` protocol, and the synthetic phantom archive.
"""

from __future__ import annotations

from medcbir.imaging.dicom import MAX_PIXELS, read_dicom
from medcbir.imaging.items import SKIP_REASONS, Decoded, Item, ItemMeta, SkipFile, WalkReport
from medcbir.imaging.phantom import PhantomSummary, make_archive
from medcbir.imaging.preprocess import Preprocessing, resize_keep_aspect
from medcbir.imaging.pseudonym import load_or_create_key, pseudonym
from medcbir.imaging.sources import FolderSource, Source, decode_bytes
from medcbir.imaging.walk import Walk, auto_workers, list_files, walk
from medcbir.imaging.windows import WINDOWS, apply_window, voi_range, window_range

__all__ = [
    "MAX_PIXELS",
    "SKIP_REASONS",
    "WINDOWS",
    "Decoded",
    "FolderSource",
    "Item",
    "ItemMeta",
    "PhantomSummary",
    "Preprocessing",
    "SkipFile",
    "Source",
    "Walk",
    "WalkReport",
    "apply_window",
    "auto_workers",
    "decode_bytes",
    "list_files",
    "load_or_create_key",
    "make_archive",
    "pseudonym",
    "read_dicom",
    "resize_keep_aspect",
    "voi_range",
    "walk",
    "window_range",
]
