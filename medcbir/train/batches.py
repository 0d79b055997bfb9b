"""What a self-supervised method trains on: the units of an epoch and the views of a step.

A method says which batches it needs (:meth:`~medcbir.train.base.SSLMethod.batches`); the
trainer only walks the units in a seeded order and hands each step's views to the method.

- :func:`image_batches`: single images, each seen as independently augmented views; optionally
  a view's partner is another image of the same anatomy (a neighbouring slice of the series,
  :func:`~medcbir.train.pairs.neighbour_table`, or a slice of another series at the same
  relative position, :class:`~medcbir.train.pairs.PositionPartners`), drawn from a generator
  seeded per step so resumed runs draw the same partners;
- :func:`run_batches`: runs of k consecutive slices of one series (sequence sorting), flattened
  run-major into one view.

Example:
    >>> import numpy as np
    >>> from medcbir.train.pairs import sequences
    >>> sequences(np.array(["a"] * 4), np.arange(4.0), 3).tolist()   # the runs of one series
    [[0, 1, 2], [1, 2, 3]]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from medcbir.errors import ConfigError
from medcbir.train.dataset import HUDataset
from medcbir.train.pairs import PositionPartners, draw_partners, neighbour_table, sequences
from medcbir.train.views import make_views

log = logging.getLogger(__name__)


@dataclass
class Partners:
    """How a view's partner is drawn: a neighbouring slice and/or a positional partner.

    Args:
        neighbours: :func:`~medcbir.train.pairs.neighbour_table`, or None.
        neighbour_p: probability of a neighbour-slice partner.
        positional: positional partners across series, or None.
        position_p: probability of a positional partner.
        seed: the run's seed (the generator of step ``s`` of epoch ``e`` is seeded from it).
    """

    neighbours: list | None
    neighbour_p: float
    positional: PositionPartners | None
    position_p: float
    seed: int

    def draw(self, idx: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(partner of each anchor, the 2B×2B same-anatomy mask over ``[anchors; partners]`` or None)."""
        rng = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_019 + step)
        partner = draw_partners(idx, self.neighbours, self.neighbour_p, rng) if self.neighbours is not None else idx
        if self.positional is None:
            return partner, None
        partner = self.positional.draw(idx, self.position_p, rng, current=partner)
        # Every pair of views at the same anatomy in the batch is a positive (for the losses
        # that take several positives per anchor).
        return partner, self.positional.positive_mask(torch.cat([idx, partner]))


class Batches:
    """The units one epoch permutes and how a step's units become views.

    Args:
        data: the HU dataset.
        units: N item indices, or N×k runs of item indices (one unit each).
        per_step: units per step.
        view_ranges: per view, the N×C×2 window ranges of every item (:meth:`HUDataset.ranges`).
        partners: how the second view's image is drawn; None = every view shows the same image.
    """

    def __init__(self, data: HUDataset, units: np.ndarray, per_step: int, view_ranges: list[torch.Tensor], partners: Partners | None = None) -> None:
        self.data = data
        self.units = np.asarray(units)
        self.per_step = int(per_step)
        self.view_ranges = view_ranges
        self.partners = partners
        self._units = torch.from_numpy(self.units)
        self._inverted = data.inverted

    def __len__(self) -> int:
        return len(self.units)

    def views(self, picked: torch.Tensor, epoch: int, step: int, augment, device: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """(the augmented views of the units at positions ``picked``, their same-anatomy mask or None)."""
        idx = self._units[picked].reshape(-1)  # runs flatten run-major
        hu = self.data.pixels(idx).to(device, non_blocking=True)
        inverted, ranges = self._inverted, self.view_ranges
        if self.partners is None:
            return make_views(hu, [r[idx] for r in ranges], augment, inverted[idx]), None
        partner, positives = self.partners.draw(idx, epoch, step)
        images = [hu, self.data.pixels(partner).to(device, non_blocking=True)]
        return make_views(images, [ranges[0][idx], ranges[-1][partner]], augment, [inverted[idx], inverted[partner]]), positives


def _in_train(n: int, train_idx: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[train_idx] = True
    return mask


def image_batches(
    data: HUDataset,
    train_idx: np.ndarray,
    view_ranges: list[torch.Tensor],
    batch_size: int,
    seed: int,
    neighbour_mm: float = 0.0,
    neighbour_p: float = 0.5,
    position_delta: float = 0.0,
    position_p: float = 0.5,
) -> Batches:
    """Batches of single training images, with neighbour-slice and/or positional partners when asked.

    Args:
        data: the HU dataset.
        train_idx: the items trained on.
        view_ranges: per view, every item's window ranges.
        batch_size: images per step (at most the training images).
        seed: the run's seed.
        neighbour_mm, neighbour_p: neighbour-slice partners within this many mm (0 = off), with this probability.
        position_delta, position_p: positional partners within this relative position (0 = off), with this probability.
    """
    batch = min(batch_size, len(train_idx))
    if batch < 2:
        raise ConfigError(f"only {len(train_idx)} training image(s); need at least 2")
    neighbours = neighbour_table(data.series, data.position, neighbour_mm) if neighbour_mm > 0 else None
    positional = None
    if position_delta > 0:
        plane = data.plane if data.plane is not None else np.full(len(data), "", dtype=object)
        positional = PositionPartners(data.series, data.position, plane, position_delta, allowed=_in_train(len(data), train_idx))
        if positional.coverage() == 0:
            # An archive of single images (radiographs, key images) has no series to match across:
            # train on the augmented views alone rather than refuse.
            log.warning(
                "positional positives are off: no training slice has a partner (they need at least two series "
                "in one plane with ImageOrientationPatient and three or more positioned slices each)"
            )
            positional = None
    partners = Partners(neighbours, neighbour_p, positional, position_p, seed) if neighbours is not None or positional is not None else None
    return Batches(data, train_idx, batch, view_ranges, partners)


def run_batches(data: HUDataset, train_idx: np.ndarray, view_ranges: list[torch.Tensor], batch_size: int, length: int) -> Batches:
    """Batches of runs of ``length`` consecutive slices of one training series (``batch_size // length`` runs a step).

    Args:
        data: the HU dataset.
        train_idx: the items trained on (a run lies wholly among them).
        view_ranges: the one view's window ranges of every item.
        batch_size: images per step.
        length: slices per run.
    """
    runs = sequences(data.series, data.position, length)
    runs = runs[_in_train(len(data), train_idx)[runs].all(axis=1)] if len(runs) else runs
    if len(runs) < 1 or len(runs) * length < 2:
        raise ConfigError(f"seqsort needs series with ≥ {length} slices that have positions; found {len(runs)} run(s)")
    return Batches(data, runs, min(max(1, batch_size // length), len(runs)), view_ranges)
