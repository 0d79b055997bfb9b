"""The architecture record: what network an encoder is, as stored in checkpoints and ONNX metadata.

A record is a small dict (``backbone``, ``in_channels``, ``dim``, ``stem``, and per backbone
``pooling``, ``grid`` or the HOG parameters). It is fingerprinted with the weights, so its exact
content is part of every index's identity: a key added to the records of existing encoders would
change their fingerprints. No torch here: names and dimensions only
(:func:`medcbir.encoders.module.build_network` builds the network of a record).

Example:
    >>> make_arch("resnet18", in_channels=1, pooling="gem")
    {'backbone': 'resnet18', 'in_channels': 1, 'dim': 512, 'stem': 'conv7s2+maxpool', 'pooling': 'gem'}
    >>> make_arch("thumbnail", grid=8)["dim"]
    64
"""

from __future__ import annotations

from medcbir.errors import ConfigError

DEFAULT_BACKBONE = "resnet18"
#: GeM beat the global average for random-init ResNet-18 features on real MR across sources
#: (README, "Preprocessing and descriptors").
DEFAULT_POOLING = "gem"
DEFAULT_THUMBNAIL = 16
#: Weightless classical descriptors (:mod:`medcbir.encoders.classic`): ``hog`` and ``classic``
#: (thumbnail + HOG).
CLASSIC_BACKBONES = ("classic", "hog")
WEIGHTLESS_BACKBONES = ("thumbnail", *CLASSIC_BACKBONES)
# The stem is part of the architecture record: a stride-1 MONAI stem is a different network.
STEM = "conv7s2+maxpool"

#: backbone name -> pooled feature dimension
BACKBONES: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
#: backbone name -> channels of its third stage (the extra half of the multi-layer descriptor)
STAGE3: dict[str, int] = {"resnet18": 256, "resnet34": 256, "resnet50": 1024}
#: How the last feature maps become one vector: global average (the ResNet default),
#: generalized mean (GeM, p = 3: Radenović et al. 2018) or the multi-layer descriptor
#: (GeM of the last two stages, each L2-normalised, concatenated).
POOLINGS = ("avg", "gem", "multi")

#: HOG parameters of the built-in descriptor (128 px, 16-px cells, 9 orientations, 2×2 blocks)
HOG_SIZE, HOG_CELL, HOG_BINS = 128, 16, 9


def backbone_dim(name: str, pooling: str = "avg") -> int:
    """Embedding dimension of a named backbone with a pooling.

    Args:
        name: one of :data:`BACKBONES`.
        pooling: one of :data:`POOLINGS`.
    """
    try:
        dim = BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return dim + STAGE3[name] if pooling == "multi" else dim


def hog_dim(size: int = HOG_SIZE, cell: int = HOG_CELL, bins: int = HOG_BINS, channels: int = 1) -> int:
    """Length of the HOG descriptor: 2×2-cell blocks of ``bins`` orientations, per channel."""
    cells = size // cell
    return channels * (cells - 1) ** 2 * 4 * bins


def make_arch(backbone: str = DEFAULT_BACKBONE, in_channels: int = 1, pooling: str = DEFAULT_POOLING, grid: int | None = None) -> dict:
    """The architecture record stored in checkpoints and ONNX metadata.

    Args:
        backbone: a name of :data:`BACKBONES`, ``"thumbnail"``, or one of :data:`CLASSIC_BACKBONES`.
        in_channels: input channels (one per window policy).
        pooling: one of :data:`POOLINGS` (recorded only when not ``"avg"``, so records of
            encoders from before poolings existed are unchanged).
        grid: the side N of a thumbnail.
    """
    if backbone == "thumbnail":
        grid = int(grid or DEFAULT_THUMBNAIL)
        if grid < 1:
            raise ConfigError(f"a thumbnail needs a side ≥ 1, not {grid}")
        return {"backbone": "thumbnail", "grid": grid, "in_channels": int(in_channels), "dim": int(in_channels) * grid * grid, "stem": "none"}
    if backbone in CLASSIC_BACKBONES:
        hog = {"hog_size": HOG_SIZE, "hog_cell": HOG_CELL, "hog_bins": HOG_BINS}
        dim = hog_dim(HOG_SIZE, HOG_CELL, HOG_BINS, int(in_channels))
        if backbone == "classic":
            grid = int(grid or DEFAULT_THUMBNAIL)
            return {"backbone": "classic", "grid": grid, **hog, "in_channels": int(in_channels), "dim": int(in_channels) * grid * grid + dim, "stem": "none"}
        return {"backbone": "hog", **hog, "in_channels": int(in_channels), "dim": dim, "stem": "none"}
    arch = {"backbone": backbone, "in_channels": int(in_channels), "dim": backbone_dim(backbone, pooling), "stem": STEM}
    if pooling != "avg":
        arch["pooling"] = pooling
    return arch
