"""The hook heads attach through: task layers that ride on an encoder module and travel in its checkpoint.

A head reads the encoder's feature layer (:func:`medcbir.encoders.module.features_and_embeddings`)
and hangs on the :class:`~medcbir.encoders.module.EncoderModule` as the attribute named by its
checkpoint entry (``encoder.wildcat``). The encoder's fingerprint covers the backbone only, so
attaching a head changes no index's encoder. A head type has ``record()`` (its checkpoint entry:
tensors, numbers, strings, lists and dicts only, so checkpoints load with ``weights_only=True``)
and ``from_record(entry, source)``; :data:`HEAD_TYPES` maps checkpoint entries to head types.
Training a head is :mod:`medcbir.train.finetune`; the WILDCAT head is :mod:`medcbir.encoders.wildcat`.
"""

from __future__ import annotations

from torch import nn

from medcbir.encoders import wildcat
from medcbir.errors import ConfigError

#: checkpoint entry (= attribute of the encoder module) → head type
HEAD_TYPES: dict[str, type[nn.Module]] = {wildcat.CHECKPOINT_KEY: wildcat.WildcatHead}


def _entry_of(head: nn.Module) -> str:
    for key, kind in HEAD_TYPES.items():
        if isinstance(head, kind):
            return key
    raise ConfigError(f"{type(head).__name__} is not a known head ({', '.join(HEAD_TYPES)})")


def attach_head(encoder: nn.Module, head: nn.Module) -> nn.Module:
    """Attach a head to an encoder module (on the encoder's device); returns the encoder."""
    layer = getattr(encoder, "feature_layer", None)
    if not isinstance(layer, nn.Module):
        raise ConfigError(f"a {type(head).__name__} needs an encoder with a feature layer")
    where = next(iter(encoder.parameters()), None)
    if where is None:  # weightless descriptors: the head's own buffers say where it lives
        where = next(iter(head.buffers()), None)
    setattr(encoder, _entry_of(head), head if where is None else head.to(where.device))
    return encoder


def head_records(encoder: nn.Module) -> dict[str, dict]:
    """The checkpoint entries of the heads an encoder module carries."""
    return {key: head.record() for key in HEAD_TYPES if (head := getattr(encoder, key, None)) is not None}


def attach_recorded_heads(encoder: nn.Module, record: dict, source: str = "") -> nn.Module:
    """Attach every head a checkpoint record carries (``record[entry]``); returns the encoder."""
    for key, kind in HEAD_TYPES.items():
        if record.get(key) is not None:
            attach_head(encoder, kind.from_record(record[key], source))
    return encoder
