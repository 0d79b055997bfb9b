"""An archive's embeddings with their keys: the embedding step of indexing, without an index.

:func:`save_embeddings` writes them for the user's own analysis (``medcbir embed``): ``.npz``
with the arrays ``sop_instance_uid``, ``frame``, ``vectors`` (N×D) and ``fingerprint``, or
``.parquet`` (through pyarrow) with one row per item, the columns ``sop_instance_uid``,
``frame`` and ``vector``, and the encoder's fingerprint in the file's metadata.

Example:
    >>> found = embed_archive("archive/", "default")              # doctest: +SKIP
    >>> found.vectors.shape, found.keys[0]                         # doctest: +SKIP
    ((80, 2020), ('1.2.826.0.1.3680043.8.498.1', 0))
    >>> save_embeddings(found, "embeddings.npz")                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcbir.encoders.runtime import open_encoder
from medcbir.errors import ConfigError
from medcbir.fsutil import atomic_path
from medcbir.imaging.items import ItemMeta
from medcbir.imaging.walk import walk

#: What :func:`save_embeddings` writes, by file suffix.
FORMATS = (".npz", ".parquet")


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


def check_output(path: str | Path) -> Path:
    """Refuse an output :func:`save_embeddings` cannot write, before any embedding is computed.

    Raises:
        ConfigError: a suffix other than ``.npz`` / ``.parquet``, or ``.parquet`` without pyarrow.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--out {path}: write .npz or .parquet, not {suffix or 'a file without a suffix'}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow, which is not installed here; write .npz instead") from None
    return path


def save_embeddings(found: Embeddings, path: str | Path) -> Path:
    """Write embeddings with their keys atomically, as ``.npz`` or ``.parquet`` (see the module docstring)."""
    path = check_output(path)
    uids = np.asarray([uid for uid, _ in found.keys], dtype=str)
    frames = np.asarray([frame for _, frame in found.keys], dtype=np.int64)
    vectors = np.ascontiguousarray(found.vectors, dtype=np.float32)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary name
                np.savez(f, sop_instance_uid=uids, frame=frames, vectors=vectors, fingerprint=np.asarray(found.fingerprint))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1] if vectors.ndim == 2 else 0)
            table = pa.table({"sop_instance_uid": pa.array(uids.tolist(), pa.string()), "frame": pa.array(frames), "vector": column})
            pq.write_table(table.replace_schema_metadata({"medcbir.fingerprint": found.fingerprint}), tmp)
    return path
