"""The encoder as a torch module: a network plus the preprocessing it expects, L2-normalised output.

:class:`EncoderModule` maps a preprocessed batch B×C×S×S in [0, 1] to L2-normalised B×D
embeddings, with gradients: what training, explanations and anything differentiable use.
Inference for indexing and search goes through :class:`medcbir.encoders.runtime.Encoder`.
The functions here build modules from an architecture; loading one from a name or a file is
:func:`medcbir.encoders.runtime.load_encoder_module`.

Example:
    >>> import torch
    >>> module = thumbnail_encoder_module(8)
    >>> module(torch.rand(2, 1, 224, 224)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.encoders.architecture import (
    CLASSIC_BACKBONES,
    DEFAULT_BACKBONE,
    DEFAULT_THUMBNAIL,
    POOLINGS,
    STEM,
    make_arch,
)
from medcbir.encoders.backbones import PooledResNet, Thumbnail, build_backbone, feature_layer
from medcbir.encoders.classic import ClassicDescriptor, GradientHistogram
from medcbir.encoders.fingerprint import compute_fingerprint
from medcbir.encoders.preprocessing import as_preprocessing
from medcbir.encoders.projection import PROJECTED, ProjectedBackbone
from medcbir.errors import ConfigError

DEFAULT_SEED = 0


def build_network(arch: dict) -> nn.Module:
    """A network for an architecture record (random weights from the caller's torch RNG)."""
    if arch["backbone"] == "thumbnail":
        return Thumbnail(int(arch["grid"]))
    if arch["backbone"] == PROJECTED:  # an adapted encoder: its base, then a linear map
        return ProjectedBackbone(build_network(arch["base"]), int(arch["base"]["dim"]), int(arch["dim"]))
    if arch["backbone"] in CLASSIC_BACKBONES:
        hog = (int(arch["hog_size"]), int(arch["hog_cell"]), int(arch["hog_bins"]))
        return ClassicDescriptor(int(arch["grid"]), *hog) if arch["backbone"] == "classic" else GradientHistogram(*hog)
    if arch.get("stem", STEM) != STEM:
        raise ConfigError(f"this medcbir builds stem {STEM!r}, not {arch.get('stem')!r}")
    net = build_backbone(arch["backbone"], int(arch["in_channels"]))
    pooling = arch.get("pooling", "avg")
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r} in the architecture record")
    return net if pooling == "avg" else PooledResNet(net, pooling)


class EncoderModule(nn.Module):
    """Backbone + L2 normalisation, carrying its preprocessing record and fingerprint.

    Args:
        backbone: a network from :func:`build_network`.
        arch: its architecture record (:func:`~medcbir.encoders.architecture.make_arch`).
        preprocessing: the :class:`~medcbir.imaging.Preprocessing` it expects.
    """

    def __init__(self, backbone: nn.Module, arch: dict, preprocessing: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = dict(arch)
        self.preprocessing = as_preprocessing(preprocessing)
        if self.preprocessing.channels != self.arch["in_channels"]:
            raise ConfigError(
                f"preprocessing has {self.preprocessing.channels} window(s) but the backbone takes "
                f"{self.arch['in_channels']} channel(s)"
            )
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self.arch["dim"])

    @property
    def feature_layer(self) -> nn.Module:
        """The last conv block (B×D'×h×w activations), for Grad-CAM-style explanations."""
        return feature_layer(self.backbone)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the current weights (recomputed after :meth:`refresh_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = compute_fingerprint(self.arch, self.preprocessing.to_dict(), self.backbone.state_dict())
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        """Forget the cached fingerprint (call after changing the weights)."""
        self._fingerprint = None
        return self.fingerprint

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        # Normalise in fp32 so reduced-precision forwards still give unit vectors.
        return F.normalize(features.float(), dim=1)


def new_encoder_module(
    backbone: str = DEFAULT_BACKBONE, preprocessing: Any = None, seed: int | None = DEFAULT_SEED, pooling: str = "avg"
) -> EncoderModule:
    """A randomly initialised encoder module; deterministic for a given seed (global RNG untouched).

    Args:
        backbone: backbone name (:data:`~medcbir.encoders.architecture.BACKBONES`).
        preprocessing: a ``Preprocessing`` or its dict; None = the default preprocessing.
        seed: torch seed for the initialisation; None uses the caller's RNG state.
        pooling: ``"avg"`` (the plain ResNet), ``"gem"`` or ``"multi"``
            (:data:`~medcbir.encoders.architecture.POOLINGS`); the built-in ``default-v2`` and
            ``random`` encoders use :data:`~medcbir.encoders.architecture.DEFAULT_POOLING`.
    """
    prep = as_preprocessing(preprocessing)
    arch = make_arch(backbone, prep.channels, pooling)
    if seed is None:
        net = build_network(arch)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(arch)
    return EncoderModule(net, arch, prep).eval()


def thumbnail_encoder_module(grid: int = DEFAULT_THUMBNAIL, preprocessing: Any = None) -> EncoderModule:
    """The ``thumbnail:N`` baseline: the preprocessed image area-downsampled to N×N, L2-normalised."""
    prep = as_preprocessing(preprocessing)
    return EncoderModule(Thumbnail(grid), make_arch("thumbnail", prep.channels, grid=grid), prep).eval()


def classic_encoder_module(name: str = "classic", preprocessing: Any = None, grid: int = DEFAULT_THUMBNAIL) -> EncoderModule:
    """A weightless classical descriptor (:mod:`medcbir.encoders.classic`): ``hog``, or ``classic``
    (the ``thumbnail:grid`` and the HOG side by side)."""
    if name not in CLASSIC_BACKBONES:
        raise ConfigError(f"unknown classical descriptor {name!r} (known: {', '.join(CLASSIC_BACKBONES)})")
    prep = as_preprocessing(preprocessing)
    arch = make_arch(name, prep.channels, grid=grid)
    return EncoderModule(build_network(arch), arch, prep).eval()


def features_and_embeddings(encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: (feature-layer activations B×K×h×w, L2-normalised embeddings B×D).

    What a head (:mod:`medcbir.encoders.heads`) reads: the features the embedding is pooled from,
    so the head and the index see the same forward. Gradients flow when the caller allows them
    (training).
    """
    layer = getattr(encoder, "feature_layer", None)
    if not isinstance(layer, nn.Module):
        layer = feature_layer(encoder)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["features"] = output

    handle = layer.register_forward_hook(hook)
    try:
        embeddings = F.normalize(encoder(images).float(), dim=1)
    finally:
        handle.remove()
    return store["features"].float(), embeddings
