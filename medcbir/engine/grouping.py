"""Shaping slice hits into what a reader asks for: no self-match, a few hits per series, cases.

Three rules, each computed on the engine's ranked slice hits (FAISS, filters and exclusions
already applied), so they compose with every index spec:

- **Self** (``include_self=False``, the default of ``Engine.search``): a query that is itself an
  item of the index (a SOP UID, an indexed file, an ``Item`` of an indexed file) never gets
  itself back as a neighbour.
- **Per series** (``per_series=N``, N ≥ 1): walking the ranked hits best first, a hit is kept
  while fewer than N hits of its series were kept before it; the first K kept are the answer.
  The candidates are fetched in growing batches until K are kept or the admissible items run
  out, so the answer equals the same walk over the full ranking (exact on an exact index).
- **Cases** (``group_by="series"|"study"``): see :func:`rank_groups` for the ranking rule.

Evaluation (``medcbir.engine.evaluate``) does not use these rules: it keeps its leave-one-out
protocol (every slice is a hit, the query itself removed), so published MAP@K figures stay
comparable across versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medcbir.errors import ConfigError

GROUP_COLUMNS = {"series": "series_instance_uid", "study": "study_instance_uid"}
#: Candidates fetched at first per kept hit when hits per series are capped (doubled on demand).
PER_SERIES_FETCH = 4


def check_group_by(group_by: str) -> str:
    if group_by not in GROUP_COLUMNS:
        raise ConfigError(f"group_by must be one of {', '.join(GROUP_COLUMNS)}, not {group_by!r}")
    return group_by


def check_per_series(per_series) -> int:
    try:
        value = int(per_series or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"per_series must be an integer ≥ 0, not {per_series!r}") from None
    if value < 0:
        raise ConfigError(f"per_series must be ≥ 0 (0 = no limit), not {value}")
    return value


def _keep_row(ids: np.ndarray, own: np.ndarray, codes: np.ndarray | None, per_series: int, k: int) -> np.ndarray:
    """Positions of ``ids`` (one ranked row, -1 = padding) kept by the self and per-series rules."""
    valid = ids >= 0
    if len(own):
        valid &= ~np.isin(ids, own)
    positions = np.flatnonzero(valid)
    if codes is None or per_series <= 0:
        return positions[:k]
    kept, seen = [], {}
    for pos, code in zip(positions.tolist(), codes[positions].tolist()):
        n = seen.get(code, 0)
        if n < per_series:
            seen[code] = n + 1
            kept.append(pos)
            if len(kept) == k:
                break
    return np.asarray(kept, dtype=np.int64)


def _subgroups(groups: dict, rows: np.ndarray) -> dict:
    """``groups`` (key → row indices of the full batch) restricted to ``rows``, renumbered."""
    where = {int(r): i for i, r in enumerate(rows.tolist())}
    out: dict = {}
    for key, members in groups.items():
        sub = [where[m] for m in members if m in where]
        if sub:
            out[key] = sub
    return out


def shaped_hits(engine, vectors: np.ndarray, k: int, base, groups: dict, *, own: list[np.ndarray], per_series: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-K (scores, ids) per query after the self and per-series rules (B×k, -1 padded).

    Args:
        engine: the :class:`~medcbir.engine.Engine` (its ``search_groups`` does the FAISS work).
        vectors: B×D query embeddings.
        k: hits per query.
        base: admissible id-range mask (None = all), as for ``search_groups``.
        groups: exclusion groups, as for ``search_groups``.
        own: per query, the ids never to return (the query's own item(s)); empty arrays if none.
        per_series: at most this many hits per series (0 = no limit).
    """
    n = len(vectors)
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    if n == 0:
        return out_s, out_i
    n_own = max((len(o) for o in own), default=0)
    fetch = k + n_own if per_series <= 0 else max(k * PER_SERIES_FETCH, k + n_own + 16)
    limit = max(1, int(engine.id_range))
    pending = np.arange(n)
    while len(pending):
        fetch = min(fetch, limit)
        sub_vectors = vectors if len(pending) == n else np.ascontiguousarray(vectors[pending])
        sub_groups = groups if len(pending) == n else _subgroups(groups, pending)
        scores, ids = engine.search_groups(sub_vectors, fetch, base, sub_groups)
        # the series of every candidate of this round (exact: equal codes = the same series)
        codes = engine.group_codes("series_instance_uid", ids)[0] if per_series > 0 else None
        again = []
        for j, row in enumerate(pending.tolist()):
            row_codes = codes[j] if codes is not None else None
            keep = _keep_row(ids[j], own[row], row_codes, per_series, k)
            exhausted = fetch >= limit or ids[j, -1] < 0  # FAISS pads with -1: nothing more to find
            if len(keep) < k and not exhausted:
                again.append(row)
                continue
            out_s[row, : len(keep)] = scores[j, keep]
            out_i[row, : len(keep)] = ids[j, keep]
        pending = np.asarray(again, dtype=np.int64)
        fetch *= 4
    return out_s, out_i


# ------------------------------------------------------------------------------ case ranking


@dataclass
class CaseHit:
    """One retrieved series or study.

    Attributes:
        group_by: ``"series"`` or ``"study"``.
        uid: its SeriesInstanceUID / StudyInstanceUID.
        score: the aggregate score of :func:`rank_groups` (higher is closer).
        rank: 1-based rank.
        n_hits: slice hits of the group in the query slices' candidate pools.
        slices: its best matching slices (:class:`~medcbir.engine.Neighbour`, best first; their
            ``score`` is the best score over the query slices, ``rank`` the order in the group).
        meta: study/series identifiers, modality and study date of the group's best slice.
    """

    group_by: str
    uid: str
    score: float
    rank: int
    n_hits: int
    slices: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "score": round(float(self.score), 6),
            "group_by": self.group_by,
            "uid": self.uid,
            "n_hits": self.n_hits,
            **self.meta,
            "slices": [{"rank": s.rank, "score": round(float(s.score), 6), **{c: s.meta.get(c) for c in SLICE_FIELDS}} for s in self.slices],
        }


SLICE_FIELDS = ("sop_instance_uid", "frame", "series_instance_uid", "study_instance_uid", "instance_number", "slice_position", "source")
CASE_FIELDS = ("study_instance_uid", "series_instance_uid", "modality", "body_part", "study_datetime")


def rank_groups(scores: np.ndarray, ids: np.ndarray, group_of: np.ndarray, k: int, per_group: int):
    """Rank groups (series or studies) from the slice hits of one query made of M slices.

    The rule (also stated in the README):

    1. Each query slice *i* has a pool of ranked slice hits (``scores[i]``, ``ids[i]``; -1 =
       padding). For a group *g* seen in any pool, ``best_i(g)`` is the best score of slice
       *i*'s hits in *g*; when *g* is not in slice *i*'s pool, ``best_i(g)`` is the lowest
       score of that pool (an upper bound of its true best in *g*), or, if the pool is empty,
       0.
    2. ``score(g)`` = mean over the M query slices of ``best_i(g)``. With one query image this
       is simply the group's best slice score.
    3. Groups are ranked by score (descending), ties by the number of hits of *g* over all
       pools (descending), then by group code (ascending, i.e. the UID's sort order).
    4. Each group keeps its ``per_group`` best slices, each slice scored by its best score over
       the query slices (ties by id).

    Args:
        scores, ids: M×P pools (float, int64 with -1 padding).
        group_of: M×P group code of each hit (equal codes = the same group; codes in the order
            of the groups' UIDs), as ``Engine.group_codes`` gives them.
        k: groups to return.
        per_group: slices per group.

    Returns:
        ``[(code, score, n_hits, [(id, score), ...]), ...]`` best first, at most ``k``.
    """
    m = len(ids)
    valid = ids >= 0
    if m == 0 or not valid.any():
        return []
    floors = np.array([float(s[v].min()) if v.any() else 0.0 for s, v in zip(scores, valid)], dtype=np.float64)
    flat_ids = ids[valid]
    flat_scores = scores[valid].astype(np.float64)
    flat_query = np.repeat(np.arange(m), valid.sum(axis=1))
    flat_group = np.asarray(group_of)[valid]
    groups, inverse = np.unique(flat_group, return_inverse=True)
    best = np.tile(floors[:, None], (1, len(groups)))  # M×G, the floor where a pool lacks the group
    seen = np.zeros((m, len(groups)), dtype=bool)
    # best_i(g): maximum over the pool; numpy's maximum.at handles repeated (i, g) pairs
    top_in_pool = np.full((m, len(groups)), -np.inf)
    np.maximum.at(top_in_pool, (flat_query, inverse), flat_scores)
    seen[flat_query, inverse] = True
    best[seen] = top_in_pool[seen]
    group_score = best.mean(axis=0)
    n_hits = np.bincount(inverse, minlength=len(groups))
    order = np.lexsort((groups, -n_hits, -group_score))[:k]
    out = []
    for g in order.tolist():
        in_g = inverse == g
        slice_ids, slice_scores = flat_ids[in_g], flat_scores[in_g]
        uniq = np.unique(slice_ids)
        top = np.full(len(uniq), -np.inf)
        np.maximum.at(top, np.searchsorted(uniq, slice_ids), slice_scores)
        chosen = np.lexsort((uniq, -top))[:per_group]
        out.append((int(groups[g]), float(group_score[g]), int(n_hits[g]), [(int(uniq[c]), float(top[c])) for c in chosen]))
    return out
