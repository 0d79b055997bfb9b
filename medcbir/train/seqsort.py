"""Sequence sorting: shuffle k consecutive slices of a series, predict the order.

Zhang et al. compare pretext tasks for anatomical landmark retrieval in CT and find that
ordering slices gives the most anatomically meaningful features: to know which of three slices
comes first the network has to recognise *where in the body* each one lies. (The task follows
Lee et al. 2017, "Unsupervised Representation Learning by Sorting Sequences", ICCV.)

Each training sample is a run of k consecutive slices of one series (``medcbir.train.pairs.
sequences``), each augmented on its own; the run is shuffled by one of the k! permutations, the
backbone embeds every slice, the embeddings are concatenated in shuffled order, and an MLP
classifies which permutation was applied. A permutation and its reverse are one class (the
direction of a series is arbitrary: head-first or feet-first), so there are k!/2 classes.

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = SequenceSorting(build_backbone("resnet18"), dim=512, length=3)
    >>> runs = torch.rand(4 * 3, 1, 64, 64)        # 4 runs of 3 slices, in anatomical order
    >>> loss = method([runs])
    >>> loss.backward()
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError
from medcbir.train.base import SSLMethod, mlp
from medcbir.train.batches import Batches, run_batches


def permutation_classes(length: int) -> torch.Tensor:
    """The k!/2 permutations that are distinct up to reversal (the lexicographically smaller of each pair)."""
    kept = []
    for perm in itertools.permutations(range(length)):
        if perm <= tuple(reversed(perm)):
            kept.append(perm)
    return torch.tensor(kept, dtype=torch.long)


class SequenceSorting(SSLMethod):
    """The sequence-sorting pretext as a method.

    Args:
        backbone: network to train.
        dim: backbone output dimension.
        length: slices per run (k, 3 or 4).
        hidden: width of the order classifier.
    """

    name = "seqsort"
    n_views = 1
    #: runs of this many consecutive slices (B·k images, run-major), unless the ``length`` option says otherwise
    sequence_length = 3

    @classmethod
    def batches(cls, data, train_idx, view_ranges: list[torch.Tensor], config) -> Batches:
        """Runs of ``length`` consecutive slices of one training series; neighbour and positional partners do not apply."""
        length = int(config.method_options.get("length", cls.sequence_length))
        return run_batches(data, train_idx, view_ranges, config.batch_size, length)

    def __init__(self, backbone: nn.Module, dim: int, length: int = 3, hidden: int = 512) -> None:
        super().__init__(backbone, dim)
        if not 2 < int(length) < 6:
            raise ConfigError(f"seqsort length must be 3, 4 or 5, not {length}")
        self.sequence_length = int(length)
        self.register_buffer("classes", permutation_classes(self.sequence_length), persistent=False)
        self.classifier = mlp([dim * self.sequence_length, hidden, len(self.classes)], last_bn=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        x = views[0]
        k = self.sequence_length
        if len(x) % k:
            raise ValueError(f"seqsort expects runs of {k} slices; got a batch of {len(x)}")
        runs = len(x) // k
        labels = torch.randint(len(self.classes), (runs,), device=x.device)
        # Shuffle every run by its class's permutation (or the reverse, same class).
        flip = torch.rand(runs, device=x.device) < 0.5
        perms = self.classes[labels]
        perms = torch.where(flip[:, None], perms.flip(1), perms)
        order = (perms + torch.arange(runs, device=x.device)[:, None] * k).reshape(-1)
        features = self.backbone(x[order]).float().reshape(runs, k * self.dim)
        return F.cross_entropy(self.classifier(features).float(), labels)
