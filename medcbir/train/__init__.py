"""medcbir.train: backbones, encoders, self-supervised methods, the trainer and ONNX export.

See docs/contracts.md (train section). The encoder API (``load_encoder``, ``open_encoder``,
``Encoder``, ``check_compatible``) is imported eagerly; the training machinery (methods,
kornia views, trainer, ONNX export, the supervised WILDCAT fine-tuning) is imported on first use so indexing and search do not
pay for kornia or onnx.
"""

from __future__ import annotations

import importlib

from medcbir.train.backbones import BACKBONES, backbone_dim, build_backbone
from medcbir.train.encoder import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderModule,
    builtin_encoder,
    check_compatible,
    compute_fingerprint,
    default_preprocessing,
    is_builtin,
    load_encoder,
    new_encoder,
    open_encoder,
    open_for_index,
    read_checkpoint,
    save_checkpoint,
    thumbnail_encoder,
)

_LAZY = {
    "METHODS": "medcbir.train.methods",
    "build_method": "medcbir.train.methods",
    "VIEWS": "medcbir.train.views",
    "TrainConfig": "medcbir.train.trainer",
    "TrainSummary": "medcbir.train.trainer",
    "train": "medcbir.train.trainer",
    "export_onnx": "medcbir.train.onnx_export",
    "FinetuneConfig": "medcbir.train.finetune",
    "FinetuneSummary": "medcbir.train.finetune",
    "finetune": "medcbir.train.finetune",
    "WildcatHead": "medcbir.train.wildcat",
    "wildcat_pool": "medcbir.train.wildcat",
    "load_wildcat": "medcbir.train.wildcat",
}

__all__ = [
    "BACKBONES",
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderModule",
    "backbone_dim",
    "build_backbone",
    "builtin_encoder",
    "check_compatible",
    "compute_fingerprint",
    "default_preprocessing",
    "is_builtin",
    "load_encoder",
    "new_encoder",
    "open_encoder",
    "open_for_index",
    "thumbnail_encoder",
    "read_checkpoint",
    "save_checkpoint",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medcbir.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
