"""The registry of self-supervised methods: name → class, and a builder.

Example:
    >>> from medcbir.encoders.backbones import build_backbone
    >>> method = build_method("simsiam", build_backbone("resnet18"), dim=512)
    >>> sorted(METHODS)
    ['moco', 'rotation', 'seqsort', 'simclr', 'simsiam']
"""

from __future__ import annotations

from torch import nn

from medcbir.errors import ConfigError
from medcbir.train.base import SSLMethod
from medcbir.train.moco import MoCo
from medcbir.train.rotation import RotationPrediction
from medcbir.train.seqsort import SequenceSorting
from medcbir.train.simclr import SimCLR
from medcbir.train.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {cls.name: cls for cls in (SimSiam, SimCLR, MoCo, RotationPrediction, SequenceSorting)}


def build_method(name: str, backbone: nn.Module, dim: int, **options) -> SSLMethod:
    """Wrap a backbone in a method's heads and loss.

    Args:
        name: a key of :data:`METHODS`.
        backbone: network to train.
        dim: its output dimension.
        **options: the method's own keyword arguments (e.g. ``temperature``, ``queue_size``).
    """
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None
    try:
        return cls(backbone, dim, **options)
    except TypeError as exc:
        raise ConfigError(f"bad option for method {name}: {exc}") from None
