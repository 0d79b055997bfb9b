"""Turning what a user asks with into query embeddings.

A query is one of:

- a path to a DICOM file: decoded with ``medcbir.imaging.read_dicom`` (with the index's
  pseudonym key, so "same patient" works) and preprocessed with the encoder's preprocessing;
  a multi-frame file is queried with its **frame 0** (one query = one result list); to query
  another frame, pass ``Item``/``Decoded`` objects from ``read_dicom`` instead;
- a ``pydicom.Dataset`` (read with its pixel data, e.g. received over DICOM): as a file, frame 0;
- a SOP Instance UID already in the index (``"1.2.3"`` for frame 0, ``"1.2.3:4"`` for frame 4):
  its stored embedding is used, no encoder needed;
- an ``Item`` (modality units, preprocessed here) or a ``Decoded`` (its ``image`` is
  preprocessed C×S×S when it has that shape, raw H×W modality values otherwise);
- a numpy array: 1-D = one embedding (length D), 2-D = one raw H×W image in modality units,
  3-D = one preprocessed C×S×S image.

A whole batch may also be given as one array: B×D embeddings (2-D) or B×C×S×S images (4-D).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcbir.errors import ConfigError, DecodeError
from medcbir.imaging import read_dicom
from medcbir.imaging.items import Decoded, Item, ItemMeta

UID_QUERY = re.compile(r"^(?P<uid>[0-9]+(\.[0-9]+)+)(:(?P<frame>[0-9]+))?$")


@dataclass
class Query:
    """One resolved query.

    Attributes:
        label: how the query is named in output (path, UID, ``array[3]``...).
        embedding: the D-vector, when known already (given or stored).
        image: the preprocessed C×S×S image still to embed.
        item_id: the query's own id when it is an item of the index.
        patient: the query's patient pseudonym ("" = unknown), for ``same-patient``.
        study: the query's StudyInstanceUID ("" = unknown), for ``same-study``.
        series: the query's SeriesInstanceUID ("" = unknown), for ``same-series``.
    """

    label: str
    embedding: np.ndarray | None = None
    image: np.ndarray | None = None
    item_id: int = -1
    patient: str = ""
    study: str = ""
    series: str = ""


def own_ids(query: Query, include_self: bool = False) -> np.ndarray:
    """The ids a query must not get back as neighbours: its own item, unless ``include_self``."""
    if include_self or query.item_id < 0:
        return np.zeros(0, dtype=np.int64)
    return np.array([query.item_id], dtype=np.int64)


def _preprocess_raw(pixels: np.ndarray, preprocessing) -> np.ndarray:
    """A bare H×W array in modality units: the modality the encoder's first window rule names."""
    named = [m for m in preprocessing.policies[0].modalities if m != "*"]
    meta = ItemMeta(sop_instance_uid="", modality=named[0] if named else "")
    return preprocessing.apply(Item(meta=meta, pixels=np.asarray(pixels, dtype=np.float32)))


def _image_query(array: np.ndarray, label: str, preprocessing, meta=None) -> Query:
    shape = (preprocessing.channels, preprocessing.size, preprocessing.size)
    if array.ndim == 3:
        if tuple(array.shape) != shape:
            raise ConfigError(f"query {label}: a preprocessed image must be {'×'.join(map(str, shape))}, got {'×'.join(map(str, array.shape))}")
        image = np.asarray(array, dtype=np.float32)
    elif array.ndim == 2:
        image = _preprocess_raw(array, preprocessing)
    else:
        raise ConfigError(f"query {label}: expected an H×W or C×S×S image, got shape {array.shape}")
    return Query(
        label=label,
        image=image,
        patient=getattr(meta, "patient_pseudonym", "") or "",
        study=getattr(meta, "study_instance_uid", "") or "",
        series=getattr(meta, "series_instance_uid", "") or "",
    )


class QueryResolver:
    """Resolves heterogeneous queries against one open engine.

    Args:
        engine: the :class:`~medcbir.engine.Engine` (for the key lookup, dimension,
            preprocessing and pseudonym key).
    """

    def __init__(self, engine) -> None:
        self.engine = engine

    def resolve(self, queries) -> list[Query]:
        """One :class:`Query` per query, in order (see the module docstring for the kinds).

        Raises:
            DecodeError: a file cannot be decoded.
            ConfigError: unknown or deleted UID, wrong shape or dimension.
        """
        if isinstance(queries, np.ndarray):
            return self._batch_array(queries)
        if isinstance(queries, (str, Path)) or _is_single(queries):
            queries = [queries]
        queries = list(queries)
        resolved: list[Query | None] = [None] * len(queries)
        uid_slots: list[tuple[int, str, int]] = []
        for i, q in enumerate(queries):
            if isinstance(q, (str, Path)):
                text = str(q)
                match = UID_QUERY.match(text)
                if match and not Path(text).exists():
                    uid_slots.append((i, match["uid"], int(match["frame"] or 0)))
                    continue
                resolved[i] = self._path(Path(text))
            else:
                resolved[i] = self._object(q, f"query[{i}]")
        if uid_slots:
            self._uids(uid_slots, resolved)
        return resolved  # type: ignore[return-value]

    # -- kinds ------------------------------------------------------------------------
    def _batch_array(self, array: np.ndarray) -> list[Query]:
        if array.ndim == 1:
            return [self._embedding(array, "embedding[0]")]
        if array.ndim == 2:
            self._check_dim(array, "embeddings")
            rows = np.asarray(array, dtype=np.float32)
            return [Query(label=f"embedding[{i}]", embedding=rows[i]) for i in range(len(rows))]
        if array.ndim == 3:
            return [self._object(array, "image[0]")]
        if array.ndim == 4:
            prep = self.engine.encoder.preprocessing
            return [_image_query(array[i], f"image[{i}]", prep) for i in range(len(array))]
        raise ConfigError(f"cannot query with an array of shape {array.shape}")

    def _check_dim(self, array: np.ndarray, label: str) -> None:
        if array.shape[-1] != self.engine.dim:
            raise ConfigError(f"{label} have dimension {array.shape[-1]}, the index has dimension {self.engine.dim}")

    def _embedding(self, vector: np.ndarray, label: str) -> Query:
        self._check_dim(vector, label)
        return Query(label=label, embedding=np.asarray(vector, dtype=np.float32))

    def _object(self, q, label: str) -> Query:
        from pydicom.dataset import Dataset

        if isinstance(q, Dataset):
            return self._dataset(q, str(q.get("SOPInstanceUID", "") or label))

        if isinstance(q, Item):
            label = q.meta.sop_instance_uid or label
            image = self.engine.encoder.preprocessing.apply(q)
            query = Query(label=label, image=image, patient=q.meta.patient_pseudonym, study=q.meta.study_instance_uid,
                          series=q.meta.series_instance_uid)
            return self._known(query, q.meta)
        if isinstance(q, Decoded):
            query = _image_query(np.asarray(q.image), q.meta.sop_instance_uid or label, self.engine.encoder.preprocessing, q.meta)
            return self._known(query, q.meta)
        array = np.asarray(q)
        if array.dtype == object or array.ndim == 0:
            raise ConfigError(f"cannot query with a {type(q).__name__}")
        if array.ndim == 1:
            return self._embedding(array, label)
        return _image_query(array, label, self.engine.encoder.preprocessing)

    def _path(self, path: Path) -> Query:
        if not path.is_file():
            raise DecodeError(f"query {path} is neither a readable file nor a SOP Instance UID")
        return self._dataset(path, str(path))

    def _dataset(self, source, label: str) -> Query:
        """A query read from a file path or a ``pydicom.Dataset`` (frame 0)."""
        path = label
        try:
            items = read_dicom(source, key=self.engine.pseudonym_key)
        except DecodeError as exc:
            raise DecodeError(f"cannot decode query {path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a reader bug must still be one line
            raise DecodeError(f"cannot decode query {path}: {exc.__class__.__name__}: {exc}") from None
        if not items:
            raise DecodeError(f"cannot decode query {path}: no image frames")
        item = items[0]
        query = Query(
            label=label,
            image=self.engine.encoder.preprocessing.apply(item),
            patient=item.meta.patient_pseudonym,
            study=item.meta.study_instance_uid,
            series=item.meta.series_instance_uid,
        )
        return self._known(query, item.meta)

    def _known(self, query: Query, meta) -> Query:
        """A query that is itself indexed: take its patient from the index (its pseudonym is
        authoritative even if the key file was not found) and know its own id."""
        uid = getattr(meta, "sop_instance_uid", "") or ""
        if not uid:
            return query
        own = self.engine.lookup.find([uid], [int(getattr(meta, "frame", 0) or 0)])[0]
        if own >= 0 and bool(self.engine.live[own]):
            query.item_id = int(own)
            row = self.engine.meta([own])[0]
            query.patient = row.get("patient_pseudonym", "") or query.patient
            query.study = row.get("study_instance_uid", "") or query.study
            query.series = row.get("series_instance_uid", "") or query.series
        return query

    def _uids(self, slots: list[tuple[int, str, int]], resolved: list) -> None:
        ids = self.engine.lookup.find([s[1] for s in slots], [s[2] for s in slots])
        missing = [f"{uid}:{frame}" if frame else uid for (_, uid, frame), id_ in zip(slots, ids) if id_ < 0]
        if missing:
            raise ConfigError(f"query {missing[0]} is not a SOP Instance UID in the index (nor a file)" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        deleted = self.engine.deleted_ids(ids)
        if len(deleted):
            raise ConfigError(f"query item id {int(deleted[0])} has been deleted from the index")
        vectors = self.engine.embeddings(ids)
        metas = self.engine.meta(ids)
        for (slot, uid, frame), id_, vec, meta in zip(slots, ids, vectors, metas):
            resolved[slot] = Query(
                label=f"{uid}:{frame}" if frame else uid,
                embedding=np.asarray(vec, dtype=np.float32),
                item_id=int(id_),
                patient=meta.get("patient_pseudonym", "") or "",
                study=meta.get("study_instance_uid", "") or "",
                series=meta.get("series_instance_uid", "") or "",
            )


def _is_single(q) -> bool:
    from pydicom.dataset import Dataset

    return isinstance(q, (Item, Decoded, Dataset))
