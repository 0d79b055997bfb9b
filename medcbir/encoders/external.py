"""A user's model as a medcbir encoder module: input adapter → model → one vector → L2 norm.

:class:`ExternalEncoderModule` is an :class:`~medcbir.encoders.module.EncoderModule` whose backbone
(:class:`ExternalBackbone`) takes medcbir's preprocessed image (window channels in [0, 1]) and
does inside the module what the model expects of its input: one window repeated to the model's
channels, then ``(x − mean) / std`` (:class:`InputAdapter`). So index, search, explanations,
training and ONNX exports all see the same function. The model's output becomes one vector per
image by the spec's ``output`` (:func:`select_vector`); anything that is not one vector is one
clear error when the encoder opens.

Identity: the architecture record holds the spec's identity (no paths) and the model's extra
identity (a Hugging Face config, TorchScript code); the fingerprint is
:func:`~medcbir.encoders.fingerprint.compute_fingerprint` of that record, the preprocessing and the
model's tensors, so changing one weight changes it. The record also keeps the whole spec (with
paths) under ``"spec"``, outside the fingerprint, to rebuild the module from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.encoders.external_models import load_model
from medcbir.encoders.fingerprint import compute_fingerprint
from medcbir.encoders.module import EncoderModule
from medcbir.encoders.spec import OUTPUTS, EncoderSpec, spec_from_record
from medcbir.encoders.token_grid import (
    NEEDS_FEATURE_LAYER,
    RUNS_WITHOUT,
    TokenGrid,
    find_feature_layer,
    layer_shape,
    record_shapes,
    tokens_of,
)
from medcbir.errors import ConfigError

EXTERNAL = "external"
PROBE_BATCH = 2


class InputAdapter(nn.Module):
    """Window channels in [0, 1] → the model's input: repeat one window to ``channels``, then ``(x − mean) / std``."""

    def __init__(self, channels: int, mean, std) -> None:
        super().__init__()
        self.channels = int(channels)
        # Not in the state dict: the spec holds them (and they are in the fingerprint through it).
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            images = images.expand(-1, self.channels, -1, -1)
        return (images - self.mean) / self.std


def select_vector(output: Any, mode: str, prefix: int, what: str = "the model") -> torch.Tensor:
    """One vector per image from a model output, by output mode.

    ``pooled``: a B×D output as it is, a B×D×h×w map averaged over h×w (a pooler's B×D×1×1
    included); ``cls``: token 0 of B×N×D tokens; ``mean-tokens``: the mean of the tokens after
    ``prefix``; a layer name: its output, as for ``pooled``.

    Raises:
        ConfigError: the output is not one vector per image in that mode.
    """
    if isinstance(output, dict):
        key = "pooler_output" if mode == "pooled" else "last_hidden_state"
        if output.get(key) is None:
            other = "cls or mean-tokens" if mode == "pooled" else "pooled"
            raise ConfigError(f"{what} gives no {key} for output {mode!r}; set output to {other}")
        output = output[key]
    tensor = tokens_of(output)
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"{what} returns {type(output).__name__}, not a tensor")
    shape = "×".join(str(s) for s in tensor.shape)
    if mode in ("cls", "mean-tokens"):
        if tensor.ndim != 3:
            raise ConfigError(f"output {mode!r} needs B×N×D tokens, but {what} gives {shape}; set output to pooled")
        return tensor[:, 0] if mode == "cls" else tensor[:, prefix:].mean(dim=1)
    if tensor.ndim == 2:
        return tensor
    if tensor.ndim == 4:
        return tensor.mean(dim=(2, 3))
    hint = "; set output to cls or mean-tokens" if tensor.ndim == 3 else ""
    raise ConfigError(f"{what} gives {shape} per batch, not one vector per image{hint}")


class LayerTap(nn.Module):
    """Keeps the last output of a hooked layer (output mode = a layer name)."""

    def __init__(self) -> None:
        super().__init__()
        self.output: Any = None

    def hook(self, _module, _inputs, output) -> None:
        self.output = output


class ExternalBackbone(nn.Module):
    """The user's model between medcbir's input (window channels in [0, 1]) and one vector per image.

    Args:
        model: the bare model (:func:`~medcbir.encoders.external_models.load_model`).
        spec: its spec.
    """

    def __init__(self, model: nn.Module, spec: EncoderSpec) -> None:
        super().__init__()
        self.model = model
        self.adapter = InputAdapter(spec.input_channels, spec.mean, spec.std)
        self.output_mode = spec.output
        self.huggingface = spec.kind == "huggingface"
        self.hookable = spec.kind != "torchscript"  # forward hooks do not fire inside TorchScript
        self.prefix = int(spec.prefix_tokens if spec.prefix_tokens is not None else 1)
        self.tap: LayerTap | None = None
        self.grid: TokenGrid | None = None
        self.layer_problem = ""
        # A name, not a module attribute: the layer is in the model already (an attribute would
        # register it twice, in the state dict too).
        self.layer_name: str | None = None
        if spec.output not in OUTPUTS:
            self.tap = LayerTap()
            self._submodule(spec.output, "output").register_forward_hook(self.tap.hook)

    def _submodule(self, name: str, what: str) -> nn.Module:
        if not self.hookable:
            raise ConfigError(f"{what} {name!r} is a layer, and a TorchScript model's layers cannot be hooked; "
                              f"use {'pooled, cls or mean-tokens' if what == 'output' else 'the torch or huggingface kind'}")
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the model has no layer {name!r} (its layers: {', '.join(n for n, _ in list(self.model.named_children())[:8])} ...)") from None

    @property
    def layer(self) -> nn.Module | None:
        """The feature layer: the token grid's map, the named module, or None."""
        if self.grid is not None:
            return self.grid.feature_map
        return self.model.get_submodule(self.layer_name) if self.layer_name else None

    def run_model(self, images: torch.Tensor) -> Any:
        x = self.adapter(images)
        return self.model(pixel_values=x) if self.huggingface else self.model(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.run_model(images)
        if self.tap is not None:
            output, self.tap.output = self.tap.output, None
        return select_vector(output, self.output_mode, self.prefix)

    # -- set-up ------------------------------------------------------------------------------
    @torch.no_grad()
    def probe(self, channels: int, size: int) -> tuple[int, list]:
        """One forward of a small batch: the embedding dimension, and each layer's output shape."""
        images = torch.rand(PROBE_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))
        out: dict = {}

        def run():
            out["vector"] = self(images)

        try:
            shapes = record_shapes(self.model, run) if self.hookable else (run() or [])
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the user's model raises on our input
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            raise ConfigError(f"the model fails on a {PROBE_BATCH}×{channels}×{size}×{size} input ({first}); check input.size and input.channels") from None
        vector = out["vector"]
        if vector.ndim != 2 or vector.shape[0] != PROBE_BATCH or vector.shape[1] < 1:
            raise ConfigError(f"the model's output selected by {self.output_mode!r} is {tuple(vector.shape)}, not one vector per image")
        return int(vector.shape[1]), shapes

    def attach_feature_layer(self, name: str | None, shapes: list) -> None:
        """Set :attr:`layer` (B×K×h×w activations) from a module name, or the default one."""
        if not self.hookable:
            self.layer_problem = (f"a TorchScript model has no hookable feature layer: {NEEDS_FEATURE_LAYER} cannot run on it; "
                                  f"{RUNS_WITHOUT} can (or use the torch or huggingface kind)")
            return
        name = name or find_feature_layer(self.model, shapes, self.prefix)
        if name is None:
            self.layer_problem = (f"the model has no spatial feature map or token grid: {NEEDS_FEATURE_LAYER} cannot run on it; "
                                  f"{RUNS_WITHOUT} can (or set feature_layer in the spec)")
            return
        module = self._submodule(name, "feature_layer")
        shape = layer_shape(shapes, name)
        if shape is not None and len(shape) not in (3, 4):
            self.layer_problem = (f"feature_layer {name!r} gives {'×'.join(map(str, shape))}, neither B×K×h×w nor tokens: "
                                  f"{NEEDS_FEATURE_LAYER} cannot run; {RUNS_WITHOUT} can")
            return
        if shape is not None and len(shape) == 3:
            self.grid = TokenGrid(self.prefix)
            module.register_forward_hook(self.grid.hook)
        self.layer_name = name


class ExternalEncoderModule(EncoderModule):
    """A user's model as an :class:`~medcbir.encoders.module.EncoderModule` (see the module docstring)."""

    @property
    def feature_layer(self) -> nn.Module | None:
        """The B×K×h×w activations CAM-style methods and heads read (None: see :attr:`feature_layer_problem`)."""
        return self.backbone.layer

    @property
    def feature_layer_problem(self) -> str:
        """Why there is no feature layer, naming the methods that run without one."""
        return self.backbone.layer_problem

    @property
    def spec(self) -> dict:
        return dict(self.arch.get("spec", {}))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            identity = {k: v for k, v in self.arch.items() if k != "spec"}  # paths are not identity
            self._fingerprint = compute_fingerprint(identity, self.preprocessing.to_dict(), self.backbone.state_dict())
        return self._fingerprint

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)


def build_external(spec: EncoderSpec, model: nn.Module, extra: dict, state_dict: dict | None = None) -> ExternalEncoderModule:
    """Wrap a loaded model: probe its output, pick its feature layer, record its identity."""
    backbone = ExternalBackbone(model, spec).eval()
    if state_dict is not None:
        try:
            backbone.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"the checkpoint's weights do not fit {spec.describe()} ({str(exc).splitlines()[0][:160]})") from None
    preprocessing = spec.preprocessing()
    dim, shapes = backbone.probe(preprocessing.channels, preprocessing.size)
    backbone.attach_feature_layer(spec.feature_layer, shapes)
    arch = {
        "backbone": EXTERNAL,
        "in_channels": preprocessing.channels,
        "dim": dim,
        "stem": "none",
        "identity": {**spec.identity(), **extra},
        "spec": spec.to_dict(),
    }
    return ExternalEncoderModule(backbone, arch, preprocessing).eval()


def external_module(spec: EncoderSpec) -> ExternalEncoderModule:
    """The encoder module of a spec, its weights read from the spec's files."""
    model, extra = load_model(spec)
    return build_external(spec, model, extra)


def external_from_record(record: dict, source: str = "") -> ExternalEncoderModule:
    """Rebuild a user encoder saved in a medcbir checkpoint (trained or fine-tuned): the structure
    from the recorded spec, the weights from the checkpoint."""
    arch = record["arch"]
    spec = spec_from_record(arch.get("spec") or {}, source)
    model, extra = load_model(spec, weights=False, identity=arch.get("identity"))
    return build_external(spec, model, extra, state_dict=record["state_dict"])
