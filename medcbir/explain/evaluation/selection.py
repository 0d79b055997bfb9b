"""Which indexed items an explanation score is computed on, and their masks in the images' geometry.

- :func:`select_items`: up to ``n`` items with a non-empty organ mask, spread over the index
  (or round-robin over the labels of a ``labels.csv``, centre of each level first);
- :func:`select_pairs`: each query's best-ranked neighbour that also has the organ mask;
- :func:`decode_with_masks`: the items' preprocessed images and their masks cut by the same
  geometry (:func:`mask_like`).
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from medcbir.errors import ConfigError
from medcbir.explain.runner import decode_item
from medcbir.imaging import resize_keep_aspect
from medcbir.imaging.foreground import extract


def select_items(engine, masks_file, organ: str, n: int, labels: dict[tuple[str, int], str] | None = None) -> list[tuple[int, np.ndarray]]:
    """Up to ``n`` (item id, organ mask) pairs spread over the index (round-robin over the
    ``{(sop_instance_uid, frame): label}`` of ``labels``, :meth:`medcbir.imaging.labels.Labels.by_item`)."""
    uids = np.asarray(engine.columns["sop_instance_uid"]).astype(str)
    frames = np.asarray(engine.columns["frame"])
    live = np.nonzero(engine.live[engine.ids] if len(engine.live) else np.zeros(0, bool))[0]
    with h5py.File(masks_file, "r") as fh:
        organs = {name for uid in list(fh.keys())[:1] for name in fh[uid].keys()}
        if organs and organ not in organs:
            raise ConfigError(f"organ {organ!r} is not in {masks_file}; it has {', '.join(sorted(organs))}")
        rows = [r for r in live if frames[r] == 0 and uids[r] in fh and organ in fh[uids[r]]]
        if labels:
            groups: dict[str, list[int]] = {}
            for r in rows:
                groups.setdefault(labels.get((uids[r], int(frames[r])), "?"), []).append(r)
            queues = [g[len(g) // 2 :] + g[: len(g) // 2][::-1] for g in groups.values()]  # centre first
            order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
        else:
            step = max(1, len(rows) // max(1, n))
            order = rows[::step] + [r for i, r in enumerate(rows) if i % step]
        chosen = []
        for r in order:
            mask = np.asarray(fh[uids[r]][organ]) > 0
            if mask.any():
                chosen.append((int(engine.ids[r]), mask))
            if len(chosen) == n:
                break
    if not chosen:
        raise ConfigError(f"no indexed item has a non-empty {organ!r} mask in {masks_file}")
    return chosen


def mask_like(preprocessing, item, mask: np.ndarray) -> np.ndarray:
    """``mask`` (at the item's pixel grid) through the same geometry as the item's image.

    The body crop (``crop="body"``, the default) cuts each image by its own foreground box
    (:meth:`~medcbir.imaging.Preprocessing.region`); a mask resized without that crop would be
    scored against pixels it does not cover.
    """
    mask = np.asarray(mask, dtype=np.float32)
    if preprocessing.crop == "none":
        return resize_keep_aspect(mask, preprocessing.size, fill=0.0) > 0.5
    return extract(mask, preprocessing.region(item), preprocessing.size, 0.0) > 0.5


def decode_with_masks(engine, ids, masks) -> tuple[list[dict], torch.Tensor, list[np.ndarray]]:
    """(metas, B×C×S×S preprocessed images, masks in the images' geometry) of indexed items."""
    prep = engine.encoder.preprocessing
    metas = engine.meta(list(ids))
    items = [decode_item(m, engine.pseudonym_key) for m in metas]
    images = torch.from_numpy(np.stack([prep.apply(it) for it in items]))
    return metas, images, [mask_like(prep, it, m) for it, m in zip(items, masks)]


def _organ_mask(fh, uid: str, organ: str) -> np.ndarray | None:
    if uid not in fh or organ not in fh[uid]:
        return None
    mask = np.asarray(fh[uid][organ]) > 0
    return mask if mask.any() else None


def select_pairs(engine, masks_file, organ: str, queries: list[tuple[int, np.ndarray]], n: int, exclude: str = "same-patient", k: int = 20) -> list[tuple[int, np.ndarray, int, np.ndarray]]:
    """Up to ``n`` (query id, query mask, neighbour id, neighbour mask) pairs.

    Each query's neighbour is its best-ranked search result (under ``exclude``) that is not the
    query itself and has a non-empty organ mask; queries without one in the top ``k`` are skipped.
    """
    pairs = []
    with h5py.File(masks_file, "r") as fh:
        for qid, qmask in queries:
            meta = engine.meta([qid])[0]
            [neighbours] = engine.search([f"{meta['sop_instance_uid']}:{int(meta.get('frame', 0) or 0)}"], k=k, exclude=exclude)
            for nb in neighbours:
                if nb.id == qid:
                    continue
                nmask = _organ_mask(fh, str(nb.meta.get("sop_instance_uid", "")), organ)
                if nmask is not None:
                    pairs.append((qid, qmask, int(nb.id), nmask))
                    break
            if len(pairs) == n:
                break
    if not pairs:
        raise ConfigError(f"no query has a neighbour with a non-empty {organ!r} mask among its top {k} (exclude {exclude})")
    return pairs
