"""The WILDCAT head (Durand et al., CVPR 2017) on an encoder's last feature map.

WILDCAT turns the backbone's B×K×h×w feature map into class scores and class maps:

1. **multi-map transfer layer**: a 1×1 convolution to C·M maps (M "modalities" per class);
2. **class-wise pooling**: the average of each class's M maps → B×C×h×w *class maps*;
3. **spatial pooling**: per class, the mean of its k+ highest regions plus α times the mean of
   its k− lowest regions, ``s_c = mean(top k+ of z_c) + α · mean(bottom k− of z_c)``
   (:func:`wildcat_pool`). k+ and k− are counts (≥ 1) or fractions of the h·w regions (< 1),
   as in the reference implementation (``round(k·n)``, at most n); k− = 0 or α = 0 drops the
   negative evidence.

The head rides on an encoder without changing it: the encoder's embedding (the backbone's
pooled descriptor) is what index and search use, exactly as before; the head reads the same
forward's feature layer (``encoder.feature_layer``, layer4 of a ResNet) through
:func:`medcbir.encoders.module.features_and_embeddings`. A fine-tuned checkpoint
(:mod:`medcbir.train.finetune` trains the head) is a normal encoder checkpoint with one more
entry, ``"wildcat"`` (:meth:`WildcatHead.record`); loading it attaches the head as
``encoder.wildcat`` (:mod:`medcbir.encoders.heads`). The encoder's fingerprint covers the
backbone only, so a head trained on a frozen backbone opens every index built with that backbone.

The head also keeps one *prototype* per class: the L2-normalised mean embedding of the class's
training images. It names the class of a target that is only an embedding (``explain-eval``'s
query targets; see :func:`medcbir.explain.wildcat.wildcat`).

Public API (what other modules and ``medcbir reproduce`` call):

- :func:`wildcat_pool(maps, k_plus, k_minus, alpha) <wildcat_pool>` → B×C scores;
- :class:`WildcatHead` (``class_maps(features)``, ``forward(features) -> (scores, maps)``,
  ``classes``, ``record()`` / ``from_record()``);
- :func:`head_of(encoder)` → the attached head (ConfigError without one);
- :func:`predict(encoder, images)` → ``(scores B×C, class maps B×C×h×w)`` (no gradients);
- :class:`ExportGraph`: what the ONNX export of a fine-tuned encoder computes;
- the ``"wildcat"`` checkpoint entry: ``{"config": {...}, "state_dict": {...}}``.

Example:
    >>> import torch
    >>> maps = torch.tensor([[[[4.0, 1.0], [0.0, -2.0]]]])     # B=1, C=1, 2×2 regions
    >>> wildcat_pool(maps, k_plus=2, k_minus=1, alpha=0.5)      # (4+1)/2 + 0.5·(−2)
    tensor([[1.5000]])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medcbir.encoders.module import features_and_embeddings
from medcbir.errors import ConfigError

CHECKPOINT_KEY = "wildcat"
#: The reference implementation's demo settings (durandtibo/wildcat.pytorch: --k 0.2 --maps 8
#: --alpha 0.7, k− = k+).
DEFAULT_K_PLUS = 0.2
DEFAULT_K_MINUS = 0.2
DEFAULT_ALPHA = 0.7
DEFAULT_MAPS = 8


def region_count(k: float, n: int) -> int:
    """Regions a k selects among ``n``: 0 for k ≤ 0, ``round(k·n)`` for a fraction k < 1, else min(int k, n).

    Raises:
        ConfigError: a count ≥ 1 that is not a whole number.
    """
    k = float(k)
    if k <= 0:
        return 0
    if k < 1:
        return int(round(k * n))
    if k != int(k):
        raise ConfigError(f"k = {k:g}: give a fraction of the regions (< 1) or a whole count (≥ 1)")
    return min(int(k), int(n))


def wildcat_pool(maps: torch.Tensor, k_plus: float = DEFAULT_K_PLUS, k_minus: float = DEFAULT_K_MINUS, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """WILDCAT spatial pooling: B×C×h×w maps → B×C scores.

    ``score = mean of the k+ highest regions + α · mean of the k− lowest regions``. Ties do not
    matter: the top (bottom) k values of a map are the same multiset whichever tied regions
    are picked. Differentiable (the gradient flows to the selected regions).

    Args:
        maps: B×C×h×w class maps.
        k_plus: regions of positive evidence: a count ≥ 1, or a fraction < 1 of h·w (at least one region is kept).
        k_minus: regions of negative evidence, likewise; 0 = none.
        alpha: weight of the negative evidence.
    """
    if maps.ndim != 4:
        raise ConfigError(f"class maps must be B×C×h×w, got shape {tuple(maps.shape)}")
    n = int(maps.shape[-2]) * int(maps.shape[-1])  # a constant in traced graphs (the input size is fixed)
    k_pos = max(1, region_count(k_plus, n))
    k_neg = region_count(k_minus, n)
    flat = maps.flatten(2)
    score = flat.topk(k_pos, dim=2, largest=True, sorted=False).values.mean(dim=2)
    if k_neg > 0 and alpha != 0:
        score = score + float(alpha) * flat.topk(k_neg, dim=2, largest=False, sorted=False).values.mean(dim=2)
    return score


def check_options(k_plus: float, k_minus: float, alpha: float, maps_per_class: int) -> None:
    """Refuse options WILDCAT cannot run with (one clear line)."""
    for name, k in (("--k-plus", k_plus), ("--k-minus", k_minus)):
        if not math.isfinite(float(k)) or float(k) < 0:
            raise ConfigError(f"{name} must be a count ≥ 1 or a fraction in (0, 1), not {k}")
        if float(k) >= 1 and float(k) != int(k):
            raise ConfigError(f"{name} = {k:g}: give a fraction of the regions (< 1) or a whole count (≥ 1)")
    if float(k_plus) == 0:
        raise ConfigError("--k-plus must select at least one region")
    if not math.isfinite(float(alpha)):
        raise ConfigError(f"--alpha must be a number, not {alpha}")
    if int(maps_per_class) < 1:
        raise ConfigError(f"--maps-per-class must be ≥ 1, not {maps_per_class}")


class WildcatHead(nn.Module):
    """Transfer layer (1×1 conv to C·M maps) + class-wise average + k+/k− pooling.

    Args:
        in_channels: K, channels of the backbone's feature map.
        classes: the class names, in score order.
        maps_per_class: M.
        k_plus, k_minus, alpha: the spatial pooling (:func:`wildcat_pool`).
        dim: the encoder's embedding dimension (size of the class prototypes).
    """

    def __init__(
        self,
        in_channels: int,
        classes: list[str],
        maps_per_class: int = DEFAULT_MAPS,
        k_plus: float = DEFAULT_K_PLUS,
        k_minus: float = DEFAULT_K_MINUS,
        alpha: float = DEFAULT_ALPHA,
        dim: int = 0,
    ) -> None:
        super().__init__()
        check_options(k_plus, k_minus, alpha, maps_per_class)
        if len(classes) < 2:
            raise ConfigError(f"a WILDCAT head needs at least 2 classes, got {len(classes)} ({', '.join(map(str, classes)) or 'none'})")
        self.classes = [str(c) for c in classes]
        self.in_channels = int(in_channels)
        self.maps_per_class = int(maps_per_class)
        self.k_plus, self.k_minus, self.alpha = float(k_plus), float(k_minus), float(alpha)
        self.transfer = nn.Conv2d(self.in_channels, len(self.classes) * self.maps_per_class, kernel_size=1)
        self.register_buffer("prototypes", torch.zeros(len(self.classes), int(dim)))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """B×K×h×w features → B×C×h×w class maps (each class's M transfer maps averaged)."""
        z = self.transfer(features.float())
        b, _, h, w = z.shape
        return z.view(b, self.n_classes, self.maps_per_class, h, w).mean(dim=2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores B×C, class maps B×C×h×w)."""
        maps = self.class_maps(features)
        return wildcat_pool(maps, self.k_plus, self.k_minus, self.alpha), maps

    def class_index(self, cls: Any) -> int:
        """The index of a class given by name or index."""
        if isinstance(cls, str) and cls in self.classes:
            return self.classes.index(cls)
        if isinstance(cls, str) and cls.lstrip("-").isdigit():
            cls = int(cls)
        if isinstance(cls, (int,)) or (isinstance(cls, torch.Tensor) and cls.ndim == 0):
            i = int(cls)
            if 0 <= i < self.n_classes:
                return i
        raise ConfigError(f"unknown WILDCAT class {cls!r}; the head has {', '.join(self.classes)}")

    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "classes": list(self.classes),
            "maps_per_class": self.maps_per_class,
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "alpha": self.alpha,
            "dim": int(self.prototypes.shape[1]),
        }

    def record(self) -> dict:
        """The checkpoint entry: ``{"config", "state_dict"}`` (loads with ``weights_only=True``)."""
        return {"config": self.config(), "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_record(cls, record: dict, source: str = "") -> "WildcatHead":
        try:
            head = cls(**record["config"])
            head.load_state_dict(record["state_dict"], strict=True)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged entry is one line, not a traceback
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
            raise ConfigError(f"{source or 'checkpoint'} has a damaged WILDCAT head ({first})") from None
        return head


# --------------------------------------------------------------------------- on an encoder
def head_of(encoder: nn.Module) -> WildcatHead:
    """The WILDCAT head an encoder carries.

    Raises:
        ConfigError: the encoder has none.
    """
    head = getattr(encoder, "wildcat", None)
    if not isinstance(head, WildcatHead):
        raise ConfigError(
            "this encoder has no WILDCAT head; fine-tune one with `medcbir finetune ENCODER ARCHIVE --labels L --head wildcat "
            "--out M` and pass M as the encoder (--encoder M)"
        )
    return head


@torch.no_grad()
def predict(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores B×C and class maps B×C×h×w of images (eval mode, no gradients)."""
    head = head_of(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        scores, maps = [], []
        for start in range(0, images.shape[0], batch_size):
            features, _ = features_and_embeddings(encoder, images[start : start + batch_size])
            s, m = head(features)
            scores.append(s)
            maps.append(m)
    finally:
        encoder.train(was_training)
    return torch.cat(scores), torch.cat(maps)


class ExportGraph(nn.Module):
    """What the ONNX export of a fine-tuned encoder computes: embeddings, class scores, class maps.

    The embeddings stay the first output, so every ONNX consumer of plain encoders (index,
    search, RELAX forwards) reads a fine-tuned export unchanged.
    """

    OUTPUTS = ("embeddings", "class_scores", "class_maps")

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head_of(encoder)

    def forward(self, images: torch.Tensor):
        features, embeddings = features_and_embeddings(self.encoder, images)
        scores, maps = self.head(features)
        return embeddings, scores, maps


__all__ = [
    "CHECKPOINT_KEY",
    "ExportGraph",
    "WildcatHead",
    "head_of",
    "predict",
    "region_count",
    "wildcat_pool",
]
