"""The common shape of a self-supervised method: a backbone, its heads, one loss per batch.

A method is an ``nn.Module`` holding the backbone it trains and whatever heads its loss needs.
``forward(views)`` takes the augmented views of one batch (a list of B×C×S×S tensors) and
returns the scalar loss; ``backbone`` is what is saved as the encoder. Methods that keep
state outside the optimiser (MoCo's key encoder and queue) keep it in buffers, so the module's
``state_dict`` is all a checkpoint needs to resume. A method also says which batches it trains on
(:meth:`SSLMethod.batches`): single images by default, runs of slices for sequence sorting.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from medcbir.train.batches import Batches, image_batches


def mlp(dims: list[int], last_bn: bool = True, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear → BN → ReLU blocks; the last block has no ReLU (and optionally no BN).

    Args:
        dims: layer widths, input first, e.g. ``[512, 2048, 2048]``.
        last_bn: batch-normalise the output.
        last_bn_affine: learnable scale/shift on the output BN (SimSiam's projector has none).
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        followed_by_bn = not last or last_bn
        layers.append(nn.Linear(d_in, d_out, bias=not followed_by_bn))  # BN's shift replaces the bias
        if not last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU()]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine))
    return nn.Sequential(*layers)


class SSLMethod(nn.Module):
    """Base class of the self-supervised methods.

    Args:
        backbone: the network being trained (B×C×S×S → B×dim).
        dim: the backbone's output dimension.
    """

    name: ClassVar[str] = ""
    #: how many augmented views of each image ``forward`` takes
    n_views: ClassVar[int] = 2
    #: set by the trainer before each step when its batches know which views show the same anatomy
    #: (positional positives): a 2B×2B bool matrix over ``[view 0; view 1]``. Contrastive losses
    #: that can use several positives per anchor read it; the others ignore it.
    batch_positives: torch.Tensor | None = None

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = int(dim)

    @classmethod
    def batches(cls, data, train_idx, view_ranges: list[torch.Tensor], config) -> Batches:
        """The batches this method trains on: single images, with the partners the run asks for.

        Args:
            data: the :class:`~medcbir.train.dataset.HUDataset`.
            train_idx: the items trained on.
            view_ranges: per view (the first :attr:`n_views`), every item's window ranges.
            config: the run's :class:`~medcbir.train.trainer.TrainConfig`.
        """
        return image_batches(
            data, train_idx, view_ranges, config.batch_size, config.seed,
            neighbour_mm=config.neighbour_mm, neighbour_p=config.neighbour_p,
            position_delta=config.position_delta, position_p=config.position_p,
        )

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (momentum encoders are excluded)."""
        return [p for p in self.parameters() if p.requires_grad]
