"""An archive's embeddings with their keys: the embedding step of indexing, without an index.

Example:
    >>> found = embed_archive("archive/", "default")              # doctest: +SKIP
    >>> found.vectors.shape, found.keys[0]                         # doctest: +SKIP
    ((80, 2020), ('1.2.826.0.1.3680043.8.498.1', 0))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcbir.encoders.runtime import open_encoder
from medcbir.imaging.items import ItemMeta
from medcbir.imaging.walk import walk


@dataclass
class Embeddings:
    """Embeddings of the items of an archive, row for row with their keys.

    Attributes:
        keys: ``(sop_instance_uid, frame)`` of each row.
        vectors: N×D float32, each row of unit norm.
        metas: each row's :class:`~medcbir.imaging.ItemMeta` (``patient_pseudonym`` is empty
            unless a pseudonym key was given).
        fingerprint: the encoder's fingerprint.
        skipped: reason → files that gave no item (``not-dicom``, ``truncated``, ...).
    """

    keys: list[tuple[str, int]]
    vectors: np.ndarray
    metas: list[ItemMeta] = field(repr=False)
    fingerprint: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def embed_archive(
    archive: str | Path | Iterable[Path],
    encoder: Any = "default",
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: Any = None,
    key: bytes | None = None,
) -> Embeddings:
    """Decode every item of an archive with the encoder's preprocessing and embed it.

    Args:
        archive: a folder (walked recursively), one file, or an iterable of file paths.
        encoder: anything :func:`~medcbir.encoders.runtime.open_encoder` takes.
        batch_size: images per encoder forward.
        workers: decoding processes (0 = automatic, 1 = this process).
        device: the :class:`~medcbir.device.Device` (None = automatic).
        key: the archive's pseudonym key, to fill in ``patient_pseudonym``.

    Raises:
        ArchiveNotFound: the folder or file does not exist.
        ConfigError: an encoder that cannot be opened.
    """
    enc = open_encoder(encoder, device=device)
    items = walk(archive, preprocessing=enc.preprocessing, workers=workers, key=key)
    metas: list[ItemMeta] = []
    images: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    try:
        for decoded in items:
            metas.append(decoded.meta)
            images.append(decoded.image)
            if len(images) == batch_size:
                chunks.append(enc.embed(np.stack(images)))
                images = []
    finally:
        items.close()
    if images:
        chunks.append(enc.embed(np.stack(images)))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, enc.dim), np.float32)
    return Embeddings(
        keys=[(m.sop_instance_uid, int(m.frame)) for m in metas],
        vectors=vectors,
        metas=metas,
        fingerprint=enc.fingerprint,
        skipped=dict(items.report.skipped),
    )
