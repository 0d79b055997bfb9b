"""Shared machinery of the attribution methods: a similarity target, batching, heatmap shaping.

Every method explains a *representation*, not a class score: the scalar it attributes is
``s(x) = cosine(encoder(x), target)`` where ``target`` is each image's own embedding ("what makes
this representation") or the query's embedding ("why does this neighbour match the query").
This mirrors captum's ``attr/_utils``: the methods stay tiny and share one way to build their
forward function, their inputs and their output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a batch of images (B×C×H×W, float) and return it as float32."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"images must be a torch.Tensor B×C×H×W, not {type(images).__name__}")
    if images.ndim != 4:
        raise ConfigError(f"images must be B×C×H×W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ConfigError("images is an empty batch")
    return images.float()


@contextlib.contextmanager
def evaluating(encoder: nn.Module) -> Iterator[nn.Module]:
    """Run the encoder in eval mode (batch-norm statistics frozen), restoring its mode after."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield encoder
    finally:
        encoder.train(was_training)


def autocast(precision: str = "fp32", device_type: str = "cpu"):
    """Autocast context for ``precision`` ("fp32" is a no-op)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ConfigError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """L2-normalised embeddings of ``images`` (B×D float32), forwarded in batches."""
    out = []
    device_type = images.device.type
    for start in range(0, images.shape[0], batch_size):
        with autocast(precision, device_type):
            out.append(encoder(images[start : start + batch_size]).float())
    return F.normalize(torch.cat(out), dim=1)


def resolve_targets(encoder: nn.Module, images: torch.Tensor, targets: torch.Tensor | None, precision: str = "fp32") -> torch.Tensor:
    """The target embedding per image: ``targets`` (B×D or 1×D, broadcast) or each image's own."""
    if targets is None:
        return embed(encoder, images, precision=precision)
    targets = torch.as_tensor(targets, dtype=torch.float32, device=images.device)
    if targets.ndim == 1:
        targets = targets[None]
    if targets.ndim != 2 or targets.shape[0] not in (1, images.shape[0]):
        raise ConfigError(f"targets must be B×D (B={images.shape[0]}) or 1×D, got shape {tuple(targets.shape)}")
    return F.normalize(targets.expand(images.shape[0], -1).contiguous(), dim=1)


class SimilarityScore(nn.Module):
    """``x ↦ cosine(encoder(x), target)``: the scalar per image that every method attributes.

    Args:
        encoder: maps B×C×H×W to B×D embeddings.
        contrast: optional B×D embeddings subtracted as a second cosine term,
            ``s(x) = cos(f(x), t) − cos(f(x), c)``. Gradient methods need it for *own*-embedding
            targets: at ``t = f(x)`` the cosine is at its maximum and its gradient is zero, so
            they explain "what makes this representation differ from a blank image's" instead.

    ``forward(x, targets)`` takes the targets as a forward argument so captum expands them
    alongside the inputs (integration steps, noise samples, occlusion windows).
    """

    def __init__(self, encoder: nn.Module, contrast: torch.Tensor | None = None):
        super().__init__()
        self.encoder = encoder
        self.contrast = contrast

    def forward(self, x: torch.Tensor, targets: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
        e = self.encoder(x).float()
        s = F.cosine_similarity(e, targets, dim=1)
        if contrast is not None:
            s = s - F.cosine_similarity(e, contrast, dim=1)
        return s


def gradient_targets(
    encoder: nn.Module, images: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets and contrast for gradient-based methods (see :class:`SimilarityScore`)."""
    own = targets is None
    targets = resolve_targets(encoder, images, targets)
    contrast = None
    if own:
        contrast = embed(encoder, torch.zeros_like(images[:1])).expand_as(targets).contiguous()
    return targets, contrast


def to_heatmap(attributions: torch.Tensor, size: tuple[int, int], reduce: str = "sum") -> torch.Tensor:
    """B×C×h×w attributions → B×H×W float32 heatmaps at input resolution.

    Args:
        attributions: per-channel (or single-channel) attribution maps.
        size: (H, W) of the input images.
        reduce: how channels combine: ``"sum"`` (signed evidence) or ``"abs"`` (sum of |·|).
    """
    a = attributions.detach().float()
    if a.ndim == 3:
        a = a[:, None]
    a = a.abs().sum(1, keepdim=True) if reduce == "abs" else a.sum(1, keepdim=True)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return a[:, 0].contiguous()


def feature_layer(encoder: nn.Module) -> nn.Module:
    """The encoder's last conv block (``encoder.feature_layer``), for CAM-style methods."""
    layer = getattr(encoder, "feature_layer", None)
    if not isinstance(layer, nn.Module):
        # a user's model says why it has none, and which methods run without one
        raise ConfigError(getattr(encoder, "feature_layer_problem", "") or "this method needs an encoder with a .feature_layer (its last conv block)")
    return layer


@torch.no_grad()
def capture_features(encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward once; return (embeddings B×D, feature-layer activations B×K×h×w)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["features"] = output.detach()

    handle = feature_layer(encoder).register_forward_hook(hook)
    try:
        emb = F.normalize(encoder(images).float(), dim=1)
    finally:
        handle.remove()
    return emb, store["features"].float()


@torch.no_grad()
def ablated_scores(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    keep: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Similarity to ``targets`` with feature-layer channels ablated, batched over ablations.

    The encoder is forwarded once per image chunk up to its feature layer; a forward hook then
    replicates the activations once per ablation (``keep``: A×K, 1 keeps a channel, 0 zeroes
    it) so only the head after the feature layer runs A times. This needs the head to treat
    the batch dimension independently, which every pooling + projection head does.

    Returns:
        B×A similarity scores.
    """
    n_abl = keep.shape[0]
    keep = keep.to(images.device, images.dtype)
    out = torch.empty(images.shape[0], n_abl, device=images.device)
    per = max(1, batch_size)
    for b in range(images.shape[0]):
        for start in range(0, n_abl, per):
            chunk = keep[start : start + per]

            def hook(_module, _inputs, output, chunk=chunk):
                return (output[:, None] * chunk[None, :, :, None, None]).flatten(0, 1)

            handle = feature_layer(encoder).register_forward_hook(hook)
            try:
                emb = encoder(images[b : b + 1]).float()
            finally:
                handle.remove()
            if emb.shape[0] != chunk.shape[0]:
                raise ConfigError("the encoder's head does not keep the batch dimension after its feature layer")
            out[b, start : start + chunk.shape[0]] = F.cosine_similarity(emb, targets[b : b + 1], dim=1)
    return out


MethodFn = Callable[..., torch.Tensor]
