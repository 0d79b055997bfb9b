"""Region data of an index keyed by item, to compare two indexes of the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcbir.indexer import IndexStore


def region_data(index: Path, live_only: bool = True) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(sop_instance_uid, frame) → (boxes sorted, descriptors in the same order) of every (live) item."""
    with IndexStore.open(index) as store:
        regions = store.regions()
        assert regions is not None, f"{index} stores no regions"
        sops = np.asarray(store.columns["sop_instance_uid"])
        frames = np.asarray(store.columns["frame"])
        live = np.asarray(store.live_mask, dtype=bool)
        out: dict = {}
        rows = store.rows(regions.rows, strict=True)
        for row in range(len(sops)):
            if live_only and not live[row]:
                continue
            sop = sops[row].decode() if isinstance(sops[row], bytes) else str(sops[row])
            pick = np.flatnonzero(rows == row)
            order = np.lexsort(regions.boxes[pick].T[::-1])
            out[(sop, int(frames[row]))] = (regions.boxes[pick][order], regions.descriptors[pick][order])
    return out


def assert_same_regions(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert sum(len(v[0]) for v in a.values()) > 0
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0], err_msg=str(key))
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-3, err_msg=str(key))
