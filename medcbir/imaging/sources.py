"""Where items come from: the :class:`Source` protocol the indexer consumes, and the folder source.

Network sources (DICOMweb, Orthanc, in ``medcbir.pacs``) implement the same protocol and
decode what they download with :func:`decode_bytes`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from medcbir.errors import ArchiveNotFound
from medcbir.imaging.dicom import MAX_DECODE_BYTES, MAX_PIXELS, read_dicom
from medcbir.imaging.items import Decoded, WalkReport, decoded_item
from medcbir.imaging.preprocess import Preprocessing
from medcbir.imaging.walk import walk


@runtime_checkable
class Source(Protocol):
    """An archive as the indexer sees it.

    Attributes:
        name: human description (the folder path or the server URL).
        report: the walk's counts, filled in while :meth:`decoded` is iterated.
    """

    name: str
    report: WalkReport

    def decoded(
        self,
        preprocessing: Preprocessing | None,
        key: bytes | None,
        skip_source: Callable[[str], bool] | None = None,
    ) -> Iterator[Decoded]:
        """Decoded items in a stable order.

        Args:
            preprocessing: applied to every item (``Decoded.image`` = ``preprocessing.apply``).
            key: the pseudonym key.
            skip_source: receives the exact string that becomes ``ItemMeta.source``; True =
                do not fetch/decode it (already committed).
        """
        ...


class FolderSource:
    """A folder tree of DICOM files, decoded by :func:`~medcbir.imaging.walk.walk`.

    Args:
        path: the archive folder (or a single file).
        workers: decoding processes (0 = auto, 1 = in-process).
        quarantine: the log of skipped files (appended to).
        timeout: per-file decoding timeout in seconds.

    Raises:
        ArchiveNotFound: ``path`` does not exist.
    """

    def __init__(self, path: str | Path, workers: int = 0, quarantine: Path | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path).absolute()
        if not self.path.exists():
            raise ArchiveNotFound(f"archive not found: {path}")
        self.name = str(self.path)
        self.workers = workers
        self.quarantine = quarantine
        self.timeout = timeout
        self.report = WalkReport()
        # How a file is named in the quarantine log (the indexer sets a SourceSeal's seal).
        self.log_name: Callable[[str], str] | None = None

    @property
    def root(self) -> Path:
        """The archive root (the folder, or a single file's folder)."""
        return self.path if self.path.is_dir() else self.path.parent

    def decoded(
        self,
        preprocessing: Preprocessing | None,
        key: bytes | None,
        skip_source: Callable[[str], bool] | None = None,
    ) -> Iterator[Decoded]:
        skip_path = (lambda p: skip_source(str(p))) if skip_source is not None else None
        w = walk(
            self.path,
            preprocessing=preprocessing,
            workers=self.workers,
            key=key,
            quarantine=self.quarantine,
            skip_path=skip_path,
            timeout=self.timeout,
            log_name=self.log_name,
        )
        self.report = w.report
        yield from w


def decode_bytes(data: bytes, uri: str, key: bytes | None, preprocessing: Preprocessing | None, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_DECODE_BYTES) -> list[Decoded]:
    """Decode one DICOM file held in memory (e.g. downloaded from a PACS), in-process.

    Args:
        data: the file's bytes (Part 10, or a bare dataset).
        uri: recorded as ``ItemMeta.source``.
        key: the pseudonym key.
        preprocessing: applied to each item when given.
        max_pixels, max_bytes: the bounds of :func:`medcbir.imaging.read_dicom`.

    Raises:
        SkipFile: the data must be skipped (a ``DecodeError`` with ``reason`` and ``detail``).
    """
    items = read_dicom(io.BytesIO(data), key=key, uri=uri, max_pixels=max_pixels, max_bytes=max_bytes)
    return [decoded_item(item, preprocessing) for item in items]
