"""SimCLR: contrastive learning with the NT-Xent loss over the other images of the batch.

Chen, T., Kornblith, S., Norouzi, M. & Hinton, G. (2020). "A Simple Framework for Contrastive
Learning of Visual Representations." ICML, arXiv:2002.05709. Each image's two views are
positives; the other 2(B−1) views of the batch are negatives. With projections u (L2-normalised)
and temperature τ, for the positive pair (i, j):

    ℓ(i, j) = −log exp(u_i·u_j / τ) / Σ_{k≠i} exp(u_i·u_k / τ),

averaged over all 2B anchors.

With ``nn_queue=N`` it is NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV, arXiv:2104.14548): each
view's anchor is replaced by its nearest neighbour in a support queue of the last N projections
(stop-gradient), so positives reach across images and patients at the same anatomy.

Example:
    >>> import torch
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = SimCLR(build_backbone("resnet18"), dim=512, proj_dim=64)
    >>> loss = method([torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)])
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.train.base import SSLMethod, mlp


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised-temperature cross entropy of the pairs (a_i, b_i) against the whole batch.

    With ``positives`` it is the supervised-contrastive form (Khosla et al. 2020) that positional
    contrastive learning uses: every view marked positive for an anchor is pulled towards it
    (the loss averages −log p over an anchor's positives), so two slices of the same anatomy in
    one batch are never pushed apart as negatives. Each anchor's own pair is always positive.

    Args:
        a, b: B×d projections of the two views (normalised here).
        temperature: τ.
        positives: optional 2B×2B bool matrix over the views ``[a; b]`` (diagonal ignored).
    """
    u = F.normalize(torch.cat([a, b], dim=0).float(), dim=1)
    n = a.shape[0]
    logits = u @ u.t() / temperature
    # An anchor is never its own negative.
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    if positives is None:
        return F.cross_entropy(logits, targets)
    mask = positives.to(device=logits.device, dtype=torch.bool).clone()
    mask[torch.arange(2 * n, device=logits.device), targets] = True
    mask.fill_diagonal_(False)
    log_p = torch.log_softmax(logits, dim=1).masked_fill(~mask, 0.0)
    return -(log_p.sum(1) / mask.sum(1)).mean()


class SimCLR(SSLMethod):
    """SimCLR projection head and NT-Xent loss.

    Args:
        backbone: network to train.
        dim: backbone output dimension.
        proj_dim: projection output dimension (128 in the paper).
        temperature: NT-Xent temperature.
    """

    name = "simclr"

    def __init__(self, backbone: nn.Module, dim: int, proj_dim: int = 128, temperature: float = 0.2, nn_queue: int = 0) -> None:
        super().__init__(backbone, dim)
        self.projector = mlp([dim, dim, proj_dim], last_bn=False)
        self.temperature = float(temperature)
        self.nn_queue = int(nn_queue)
        if self.nn_queue < 0:
            raise ValueError(f"nn_queue must be ≥ 0, not {nn_queue}")
        if self.nn_queue:
            # Buffers: the support queue resumes with the checkpoint (a random start, as NNCLR's).
            self.register_buffer("queue", F.normalize(torch.randn(self.nn_queue, proj_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Each row's nearest neighbour (cosine) in the support queue."""
        return self.queue[(F.normalize(z.float(), dim=1) @ self.queue.t()).argmax(dim=1)]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        z = F.normalize(z.detach().float(), dim=1)[: self.nn_queue]
        start = int(self.queue_ptr)
        rows = (start + torch.arange(len(z), device=z.device)) % self.nn_queue
        self.queue[rows] = z
        self.queue_ptr.fill_((start + len(z)) % self.nn_queue)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        a = self.projector(self.backbone(views[0]))
        b = self.projector(self.backbone(views[1]))
        if not self.nn_queue:
            return nt_xent(a, b, self.temperature, self.batch_positives)
        loss = 0.5 * (nt_xent(self.nearest(a), b, self.temperature) + nt_xent(self.nearest(b), a, self.temperature))
        self.enqueue(a)
        return loss
