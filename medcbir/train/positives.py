"""Positive pairs for a head on frozen embeddings, found without labels.

Two kinds, both images of the same anatomy:

- **augmented views**: an image and an archive augmentation of it
  (:class:`~medcbir.train.views.ArchiveAugment`: field of view, positioning, gamma, noise,
  blur/sharpen, erasing), what two acquisitions of one slice differ by;
- **series-verified pairs across exams**: a slice and one of its nearest neighbours in other
  exams (studies: other patients, or another exam of the same patient) whose link agrees with the rigid map between the two series
  (:mod:`medcbir.encoders.agreement`). Positions alone would pair slices at the same *relative*
  position, which is the same anatomy only where scan ranges agree; the series map is fitted per
  pair of series, so differing ranges and directions are allowed for. These are the starting
  encoder's own neighbours, kept only where the archive's geometry vouches for them (as Radenović
  et al. kept only the image pairs a 3D reconstruction verified).

Neighbouring slices of one series are *not* used: they teach the map to ignore what tells levels
apart along a series (docs/adaptation.md, "The stages").
"""

from __future__ import annotations

import numpy as np

from medcbir.encoders.agreement import K, agreement


def series_verified_pairs(vectors: np.ndarray, exam, series, position, rows: np.ndarray, k: int = K) -> np.ndarray:
    """P×2 global row indices of neighbour links across exams, among ``rows``, that agree with their series map.

    Args:
        vectors: N×D embeddings.
        exam: N exam (study) UIDs: a slice's neighbours come from other exams.
        series, position: N series UIDs and slice positions (mm).
        rows: the rows that take part (queries and neighbours), so held-out patients stay out of a fit.
        k: neighbours per slice.
    """
    rows = np.asarray(rows, dtype=np.int64)
    exam = np.asarray(exam, dtype=object)[rows]
    if len(np.unique(exam.astype(str))) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    found = agreement(np.asarray(vectors)[rows], exam, np.asarray(series, dtype=object)[rows], np.asarray(position, dtype=np.float64)[rows], k=k)
    local = np.repeat(found.queries, found.k)[found.agreeing.reshape(-1)]
    partner = found.neighbours.reshape(-1)[found.agreeing.reshape(-1)]
    return np.stack([rows[local], rows[partner]], axis=1) if len(local) else np.zeros((0, 2), dtype=np.int64)
