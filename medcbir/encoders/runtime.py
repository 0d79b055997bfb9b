"""Turning an argument into an encoder: the runtime :class:`Encoder`, or the torch module behind it.

Two faces, named after what they return:

- :func:`open_encoder` returns an :class:`Encoder` for indexing and search: numpy in, numpy
  out, batched, no gradients, on the :class:`~medcbir.device.Device` given; torch checkpoints,
  built-in names and in-memory modules run through torch, ``.onnx`` exports through ONNX Runtime.
  It is the one place an argument (a name, a path, a module, an Encoder) becomes an encoder:
  the indexer, the engine and the API all call it.
- :func:`load_encoder_module` returns the :class:`~medcbir.encoders.module.EncoderModule`
  (a ``torch.nn.Module``) for training, explanations and anything that needs gradients.

Both take the user's own models too: an encoder spec (:mod:`medcbir.encoders.spec`: a ``.json``
file, ``hf:DIR``, a model file with a ``FILE.json`` sidecar) opens as
:class:`~medcbir.encoders.external.ExternalEncoderModule` (Hugging Face, torch, TorchScript, timm)
or, for ONNX, as an ONNX Runtime encoder with the spec's input adapter
(:mod:`medcbir.encoders.external_onnx`).

Example:
    >>> import numpy as np
    >>> enc = open_encoder("default")
    >>> x = np.random.rand(2, *enc.input_shape).astype(np.float32)
    >>> enc.embed(x).shape
    (2, 2020)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcbir.device import Device
from medcbir.encoders.builtin import builtin_encoder_module
from medcbir.encoders.checkpoint import module_from_record, read_checkpoint
from medcbir.encoders.compat import describe
from medcbir.encoders.module import EncoderModule
from medcbir.encoders.names import DEFAULT_ENCODER, LEGACY_DEFAULT, PREVIOUS_DEFAULT, is_builtin
from medcbir.encoders.onnx_format import is_onnx, onnx_session, read_metadata
from medcbir.encoders.spec import EncoderSpec, spec_argument
from medcbir.errors import ConfigError, EncoderMismatch


def load_encoder_module(path: Any = DEFAULT_ENCODER) -> EncoderModule:
    """The encoder as a torch module (eval mode, CPU).

    Args:
        path: a built-in name (:mod:`medcbir.encoders.names`: ``"default"`` = the ``classic``
            descriptor with the default preprocessing; ``"random:SEED"``; ``"thumbnail:N"``), a
            checkpoint written by :func:`~medcbir.encoders.checkpoint.save_checkpoint` or by the
            trainer (its training state is ignored here), a user encoder (an encoder spec file,
            ``hf:DIR``, a model file with a ``FILE.json`` sidecar, an
            :class:`~medcbir.encoders.spec.EncoderSpec` or its dict), or a module (returned as it is).

    Returns:
        An :class:`EncoderModule` with ``.preprocessing``, ``.fingerprint``, ``.dim``,
        ``.arch`` and ``.feature_layer``.
    """
    if isinstance(path, nn.Module):
        return path
    builtin = builtin_encoder_module(path) if is_builtin(path) else None
    if builtin is not None:
        return builtin
    spec = spec_argument(path)
    if spec is not None:
        return _external_module(spec)
    if is_onnx(path):
        raise ConfigError(f"{path} is an ONNX export; use open_encoder() for inference (no torch module to return)")
    return module_from_record(read_checkpoint(path), str(path))


def _external_module(spec: EncoderSpec) -> EncoderModule:
    if spec.kind == "onnx":
        raise ConfigError(f"{spec.model} is an ONNX model: it runs for indexing, search and RELAX, but has no torch "
                          "module for training or gradients (describe the model's torch, Hugging Face or TorchScript form instead)")
    from medcbir.encoders.external import external_module

    return external_module(spec)


class Encoder:
    """Batched inference: numpy B×C×S×S float32 in [0,1] → L2-normalised B×D float32.

    Built by :func:`open_encoder`; ``kind`` is ``"torch"`` or ``"onnx"``; ``spec`` is the encoder
    spec of a user encoder (:meth:`~medcbir.encoders.spec.EncoderSpec.to_dict`), else None.
    """

    def __init__(
        self,
        *,
        kind: str,
        source: str,
        preprocessing: Any,
        fingerprint: str,
        dim: int,
        arch: dict,
        device: Any,
        module: EncoderModule | None = None,
        session: Any = None,
        batch_size: int = 32,
        spec: dict | None = None,
    ) -> None:
        self.kind = kind
        self.source = source
        self.preprocessing = preprocessing
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.arch = dict(arch)
        self.device = device
        self.module = module
        self.session = session
        self.batch_size = int(batch_size)
        self.spec = dict(spec) if spec else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S) the encoder expects."""
        return (self.preprocessing.channels, self.preprocessing.size, self.preprocessing.size)

    def __repr__(self) -> str:
        return f"Encoder({self.kind}, {describe(self.fingerprint, self.preprocessing)}, dim={self.dim}, source={self.source!r})"

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            want = "×".join(map(str, self.input_shape))
            raise EncoderMismatch(
                f"images of shape {tuple(images.shape)} do not fit encoder {describe(self.fingerprint, self.preprocessing)}, "
                f"which expects B×{want}"
            )
        return images

    def embed(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Embed a batch (or one C×S×S image).

        Args:
            images: float32 B×C×S×S in [0,1], as ``Preprocessing.apply`` produces.
            batch_size: forward batch size (default: the encoder's ``batch_size``).

        Returns:
            float32 B×D, each row of unit norm.
        """
        images = self._check(images)
        step = int(batch_size or self.batch_size)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        if self.kind == "onnx":
            name = self.session.get_inputs()[0].name
            for start in range(0, len(images), step):
                chunk = np.ascontiguousarray(images[start : start + step])
                out[start : start + len(chunk)] = self.session.run(None, {name: chunk})[0]
            return out
        with torch.inference_mode(), self.device.autocast():
            for start in range(0, len(images), step):
                chunk = torch.from_numpy(images[start : start + step]).to(self.device.torch)
                chunk = chunk.contiguous(memory_format=torch.channels_last)
                out[start : start + len(chunk)] = self.module(chunk).float().cpu().numpy()
        return out


def _open_onnx(path: Path, device: Any) -> Encoder:
    session = onnx_session(path, device.ort_providers)
    return Encoder(
        kind="onnx",
        source=str(Path(path).resolve()),  # recorded in index manifests: must not depend on the cwd
        device=device,
        session=session,
        **read_metadata(session, path),
    )


def open_encoder(path: Any = DEFAULT_ENCODER, device: Any = None, batch_size: int = 32) -> Encoder:
    """Open an encoder for batched inference: the one function that turns an argument into an encoder.

    Args:
        path: a built-in name (``"default"``, ...), a checkpoint (``.pt``), an ONNX export
            (``.onnx``), a user encoder (a spec ``.json``, ``hf:DIR``, a model file with a
            ``FILE.json`` sidecar, an :class:`~medcbir.encoders.spec.EncoderSpec` or its dict), as
            ``str`` or ``Path``; an :class:`EncoderModule` (or any torch module with the same
            attributes) in memory; or an encoder object already open (anything with ``embed``,
            e.g. an :class:`Encoder`), returned as it is.
        device: a :class:`~medcbir.device.Device`; None = ``Device.auto()``.
        batch_size: default forward batch size of :meth:`Encoder.embed`.

    Raises:
        ConfigError: missing, unreadable or foreign file; a user model whose output is not one
            vector per image.
    """
    if hasattr(path, "embed"):
        return path
    device = device or Device.auto()
    if isinstance(path, Path):
        path = str(path)
    spec = spec_argument(path)
    if spec is not None and spec.kind == "onnx":
        from medcbir.encoders.external_onnx import open_onnx_spec

        return Encoder(kind="onnx", source=spec.source, device=device, batch_size=batch_size, spec=spec.to_dict(),
                       **open_onnx_spec(spec, device.ort_providers))
    if spec is None and is_onnx(path):
        return _open_onnx(Path(path), device)
    module = _external_module(spec) if spec is not None else load_encoder_module(path)
    if spec is not None:
        source = spec.source
    else:
        source = path if is_builtin(path) else ("<module>" if isinstance(path, nn.Module) else str(Path(path).resolve()))
    module = module.eval().to(device.torch).to(memory_format=torch.channels_last)
    return Encoder(
        kind="torch",
        source=source,
        preprocessing=module.preprocessing,
        fingerprint=module.fingerprint,
        dim=module.dim,
        arch=module.arch,
        device=device,
        module=module,
        batch_size=batch_size,
        spec=module.arch.get("spec"),
    )


def open_for_index(source: str, fingerprint: str, device: Any = None) -> Encoder:
    """Open the encoder an index records, including earlier meanings of ``default``.

    An index built with an earlier default records the source ``default`` and that encoder's
    fingerprint; it keeps opening with that encoder (``default-v2``, the random ResNet-18 of
    medcbir 0.2, or ``default-v1``, the CT-windowed one of 0.1) rather than with today's default,
    which has another fingerprint.
    """
    encoder = open_encoder(source, device=device)
    if source == DEFAULT_ENCODER and encoder.fingerprint != fingerprint:
        for earlier in (PREVIOUS_DEFAULT, LEGACY_DEFAULT):
            candidate = open_encoder(earlier, device=device)
            if candidate.fingerprint == fingerprint:
                return candidate
    return encoder
