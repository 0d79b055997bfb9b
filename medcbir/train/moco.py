"""MoCo v2: momentum contrast with a queue of negatives and an MLP head.

He, K., Fan, H., Wu, Y., Xie, S. & Girshick, R. (2020). "Momentum Contrast for Unsupervised
Visual Representation Learning." CVPR, arXiv:1911.05722; and Chen, X., Fan, H., Girshick, R.
& He, K. (2020). "Improved Baselines with Momentum Contrastive Learning." arXiv:2003.04297
(v2: MLP projection head, stronger augmentation, cosine schedule).

A query encoder (backbone + MLP head) is trained by InfoNCE: its query q of one view must
match the key k of the other view, computed by a *momentum* copy of the encoder
(θ_k ← m θ_k + (1 − m) θ_q, no gradients), against the negatives held in a FIFO queue of
past keys:

    ℓ = −log exp(q·k⁺ / τ) / (exp(q·k⁺ / τ) + Σ_{k⁻ ∈ queue} exp(q·k⁻ / τ)).

The key encoder and the queue are buffers/frozen parameters of the module, so they are saved
with it and a resumed run continues exactly. (The paper's shuffling BN needs several GPUs;
on one device it is not used.)

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = MoCo(build_backbone("resnet18"), dim=512, proj_dim=32, queue_size=64)
    >>> loss = method([torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)])
    >>> loss.backward()
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.train.base import SSLMethod, mlp


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive key per query and the queue as negatives (all normalised).

    Args:
        q: B×d queries; k: B×d positive keys; queue: K×d negative keys.
        temperature: τ.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.t()
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCo(SSLMethod):
    """MoCo v2 heads, momentum key encoder and queue.

    Args:
        backbone: network to train (the query encoder's trunk).
        dim: backbone output dimension.
        proj_dim: projection dimension (128 in the paper).
        queue_size: number of negative keys (65536 in the paper; keep it a few times the
            batch size on small archives, where a large queue is mostly stale keys).
        momentum: key-encoder momentum m (0.999 in the paper; 0.99 suits short runs).
        temperature: τ (0.2 in v2).
    """

    name = "moco"

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        proj_dim: int = 128,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
    ) -> None:
        super().__init__(backbone, dim)
        self.projector = mlp([dim, dim, proj_dim], last_bn=False)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_backbone.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        # A random start: the first queue_size/B steps contrast against noise, as in the paper.
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        pairs = [(self.key_backbone, self.backbone), (self.key_projector, self.projector)]
        for key_net, query_net in pairs:
            for pk, pq in zip(key_net.parameters(), query_net.parameters()):
                pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)
            for bk, bq in zip(key_net.buffers(), query_net.buffers()):
                bk.copy_(bq)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        q = F.normalize(self.projector(self.backbone(views[0])).float(), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.key_projector(self.key_backbone(views[1])).float(), dim=1)
        loss = info_nce(q, k, self.queue.clone().detach(), self.temperature)
        self._enqueue(k)
        return loss
