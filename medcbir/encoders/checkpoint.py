"""Encoder checkpoints: one ``torch.save``'d dict of plain values, read back without running code.

A checkpoint holds ``format``, ``version``, the architecture record, the preprocessing record,
the network's state dict, the fingerprint, the method that produced it, any attached head's
entry (:mod:`medcbir.encoders.heads`) and, from the trainer, training state. Only tensors,
numbers, strings, lists, tuples and dicts: it loads with ``weights_only=True``, and no class path
is pickled, so moving code never breaks a saved checkpoint.

Example:
    >>> save_checkpoint("enc.pt", new_encoder_module(seed=0))        # doctest: +SKIP
    >>> module_from_record(read_checkpoint("enc.pt")).fingerprint   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medcbir.encoders.architecture import STEM, WEIGHTLESS_BACKBONES
from medcbir.encoders.external import EXTERNAL, external_from_record
from medcbir.encoders.heads import attach_recorded_heads, head_records
from medcbir.encoders.module import EncoderModule, build_network
from medcbir.encoders.projection import innermost_arch
from medcbir.errors import ConfigError
from medcbir.fsutil import atomic_path

FORMAT = "medcbir-encoder"
VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`medcbir.fsutil.atomic_path` (temporary name, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def checkpoint_record(encoder: EncoderModule, *, method: str = "random", extra: dict | None = None) -> dict:
    """The checkpoint dict for an encoder module (plus any training state in ``extra``)."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(encoder.arch),
        "preprocessing": encoder.preprocessing.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in encoder.backbone.state_dict().items()},
        "fingerprint": encoder.refresh_fingerprint(),
        "method": method,
    }
    record.update(head_records(encoder))  # a fine-tuned head travels with its encoder
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra checkpoint key {key!r} would overwrite the encoder record")
        record[key] = value
    return record


def save_checkpoint(path: str | Path, encoder: EncoderModule, *, method: str = "random", extra: dict | None = None) -> Path:
    """Write an encoder checkpoint atomically.

    Args:
        path: destination file (conventionally ``*.pt``).
        encoder: the encoder module to save.
        method: the training method that produced it (``"random"`` for an untrained one).
        extra: additional top-level entries (training state: optimiser, scheduler, epoch,
            RNG states, ...). Values must be tensors, numbers, strings, lists, tuples or dicts,
            so that checkpoints load with ``weights_only=True``.
    """
    return atomic_torch_save(checkpoint_record(encoder, method=method, extra=extra), path)


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint dict (safe load; no code runs from the file).

    Raises:
        ConfigError: missing, unreadable or not a medcbir encoder checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder {path} not found")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "not a checkpoint"
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise ConfigError(f"{path} is not a readable encoder checkpoint ({first})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a medcbir encoder checkpoint")
    if int(record.get("version", 0)) > VERSION:
        raise ConfigError(f"{path} is a version {record.get('version')} checkpoint; this medcbir reads up to {VERSION}")
    for key in ("arch", "preprocessing", "state_dict", "fingerprint"):
        if key not in record:
            raise ConfigError(f"{path} is missing {key!r}; not a complete encoder checkpoint")
    return record


def module_from_record(record: dict, source: str = "") -> EncoderModule:
    """Rebuild the :class:`EncoderModule` of a checkpoint dict (with its heads) and check its fingerprint.

    A user encoder trained or fine-tuned by medcbir (architecture ``external``) is rebuilt from
    its recorded spec (:func:`~medcbir.encoders.external.external_from_record`).
    """
    arch = dict(record["arch"])
    if arch.get("backbone") == EXTERNAL:
        module = external_from_record(record, source)
    else:
        module = _network_from_record(record, arch, source)
    if module.fingerprint != record["fingerprint"]:
        raise ConfigError(
            f"{source or 'checkpoint'} is corrupt: its weights hash to {module.fingerprint[:12]}, "
            f"not the recorded {str(record['fingerprint'])[:12]}"
        )
    return attach_recorded_heads(module, record, source)


def _network_from_record(record: dict, arch: dict, source: str) -> EncoderModule:
    inner = innermost_arch(arch)  # an adapted encoder's stem is its base network's
    if inner.get("backbone") not in WEIGHTLESS_BACKBONES and inner.get("stem", STEM) != STEM:
        raise ConfigError(f"{source or 'checkpoint'} uses stem {inner.get('stem')!r}; this medcbir builds {STEM!r}")
    try:
        net = build_network(arch)
        net.load_state_dict(record["state_dict"], strict=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{source or 'checkpoint'} weights do not fit {arch.get('backbone')}: {first}") from None
    return EncoderModule(net, arch, record["preprocessing"]).eval()
