"""The encoder modules the built-in names stand for (:mod:`medcbir.encoders.names`).

The weightless ones (``default`` = ``classic``, ``hog``, ``thumbnail:N``) are built on the spot;
the random ResNets are built from their seed, and the two earlier defaults (``default-v2``,
``default-v1``) are cached as checkpoints (:func:`medcbir.cache.cache_dir`) because indexes
built with them must keep finding the same weights.

Example:
    >>> builtin_encoder_module("thumbnail:8").dim
    64
    >>> builtin_encoder_module("enc.pt") is None
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medcbir.cache import cache_dir
from medcbir.encoders.architecture import CLASSIC_BACKBONES, DEFAULT_BACKBONE, DEFAULT_POOLING, DEFAULT_THUMBNAIL, make_arch
from medcbir.encoders.checkpoint import module_from_record, read_checkpoint, save_checkpoint
from medcbir.encoders.module import DEFAULT_SEED, EncoderModule, classic_encoder_module, new_encoder_module, thumbnail_encoder_module
from medcbir.encoders.names import DEFAULT_DESCRIPTOR, DEFAULT_ENCODER, LEGACY_DEFAULT, PARAMETRISED, PREVIOUS_DEFAULT
from medcbir.encoders.preprocessing import default_preprocessing, legacy_preprocessing
from medcbir.errors import ConfigError


def default_encoder_path() -> Path:
    """The cached checkpoint of ``default-v2``."""
    return cache_dir() / "default-encoder-v2.pt"


def _load_default(legacy: bool = False) -> EncoderModule:
    """``default-v2`` (cached), or with ``legacy`` ``default-v1``, the default of medcbir 0.1."""
    if legacy:
        prep, pooling = legacy_preprocessing(), "avg"
        path = cache_dir() / "default-encoder.pt"
    else:
        prep, pooling = default_preprocessing(), DEFAULT_POOLING
        path = default_encoder_path()
    if path.is_file():
        try:
            module = module_from_record(read_checkpoint(path), str(path))
            if module.preprocessing == prep and module.arch == make_arch(DEFAULT_BACKBONE, prep.channels, pooling):
                return module
        except ConfigError:
            pass  # a damaged or outdated cache is rebuilt below; it holds nothing that cannot be recreated
    module = new_encoder_module(DEFAULT_BACKBONE, prep, seed=DEFAULT_SEED, pooling=pooling)
    save_checkpoint(path, module, method="random")
    return module


def builtin_encoder_module(name: Any) -> EncoderModule | None:
    """The encoder module a built-in name stands for, or None when ``name`` is not one.

    Names: ``default`` (the ``classic`` descriptor with the default preprocessing);
    ``default-v2`` (the seed-0 random ResNet-18, GeM, default preprocessing: the default before
    ``classic``); ``default-v1`` (medcbir 0.1's default, for indexes built with it);
    ``random`` / ``random:SEED`` (the default backbone at random initialisation, default
    preprocessing); ``thumbnail`` / ``thumbnail:N`` (the preprocessed image downsampled to N×N);
    ``hog`` and ``classic`` (a histogram of oriented gradients; thumbnail:16 + HOG), weightless
    classical descriptors with the default preprocessing (:mod:`medcbir.encoders.classic`).

    Raises:
        ConfigError: a built-in name with a bad parameter (``thumbnail:x``).
    """
    if not isinstance(name, str):
        return None
    base, _, arg = name.partition(":")
    if name == DEFAULT_ENCODER:
        return classic_encoder_module(DEFAULT_DESCRIPTOR)
    if name == PREVIOUS_DEFAULT:
        return _load_default()
    if name == LEGACY_DEFAULT:
        return _load_default(legacy=True)
    if name in CLASSIC_BACKBONES:
        return classic_encoder_module(name)
    if base not in PARAMETRISED or (arg == "" and ":" in name):
        return None
    try:
        value = int(arg) if arg else None
    except ValueError:
        raise ConfigError(f"{name!r}: write {base}:{'N (the side)' if base == 'thumbnail' else 'SEED'} with an integer") from None
    if base == "thumbnail":
        return thumbnail_encoder_module(value or DEFAULT_THUMBNAIL)
    return new_encoder_module(DEFAULT_BACKBONE, None, seed=DEFAULT_SEED if value is None else value, pooling=DEFAULT_POOLING)
