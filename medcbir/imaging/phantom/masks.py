"""Write the organ masks file: ``/<sop_instance_uid>/<organ>`` uint8 size × size, gzip.

Every organ gets a dataset on every slice (readers never need to check for presence). An organ
absent from a slice is a dataset whose one chunk is never written: HDF5 returns its fill value
(0) and it costs no storage. Datasets are made with h5py's low-level API and one shared creation
property list, which is several times faster than ``Group.create_dataset`` per mask, and without
timestamps, so the same archive seed gives the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np


def deflate_masks(masks: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The deflated chunks :meth:`MaskWriter.add` would write, computed where the masks are made
    (worker processes), so the single writer of masks.h5 only stores bytes."""
    return {
        organ: zlib.compress(np.ascontiguousarray(mask, dtype=np.uint8), 1)
        for organ, mask in masks.items()
        if mask.any()
    }


class MaskWriter:
    """Append one slice's masks at a time to a new ``masks.h5``.

    Args:
        path: the file to create (replaced if present).
        size: rows = columns of every mask.
        attrs: file attributes (format, seed, organ list, ...).
    """

    def __init__(self, path: Path, size: int, attrs: dict) -> None:
        self._file = h5py.File(path, "w", libver="earliest")
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._size = size
        self._space = h5py.h5s.create_simple((size, size))
        self._dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self._dcpl.set_chunk((size, size))
        self._dcpl.set_deflate(1)
        self._dcpl.set_fill_value(np.zeros((), dtype=np.uint8))
        self._dcpl.set_obj_track_times(False)

    def add(self, sop_instance_uid: str, organs: Iterable[str], masks: dict[str, np.ndarray], attrs: dict) -> None:
        """Write one slice's masks under ``/<sop_instance_uid>/``.

        Args:
            sop_instance_uid: the group name.
            organs: every organ to create a dataset for.
            masks: boolean or uint8 arrays of the organs present (others stay all zero), or
                their chunks already deflated by :func:`deflate_masks`.
            attrs: group attributes.
        """
        group = self._file.create_group(sop_instance_uid)
        for key, value in attrs.items():
            group.attrs[key] = value
        for organ in organs:
            dataset = h5py.h5d.create(group.id, organ.encode(), h5py.h5t.STD_U8LE, self._space, dcpl=self._dcpl)
            mask = masks.get(organ)
            if isinstance(mask, bytes):  # already deflated by deflate_masks (in a worker)
                dataset.write_direct_chunk((0, 0), mask)
            elif mask is not None and mask.any():
                # Deflate here and hand HDF5 the finished chunk: the same bytes as its gzip
                # filter would write, without a trip through the filter pipeline.
                dataset.write_direct_chunk((0, 0), zlib.compress(np.ascontiguousarray(mask, dtype=np.uint8), 1))
            dataset.close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
