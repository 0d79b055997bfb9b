"""Encoder specs: how a user's own model (Hugging Face, torch, ONNX, TorchScript, timm) becomes an encoder.

A spec is a small JSON file the user writes once (``medcbir encoder-spec`` writes one)::

    {"kind": "huggingface", "model": "rad-dino",
     "input": {"size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
     "windows": "CT=ct-liver-wide,*=robust", "crop": "body", "output": "cls"}

Relative paths in it are relative to the spec file's folder. Two shortcuts need no file:
``hf:DIR`` (a local Hugging Face model folder: config, weights, preprocessor config) and a model
file with a sidecar beside it (``model.onnx`` + ``model.onnx.json``, the sidecar holding the
spec's other fields). Everything is read from local files: a hub name without a local folder is
refused. No torch here: this module reads and checks specs; building the model is
:mod:`medcbir.encoders.external`.

Example:
    >>> spec = spec_from_dict({"kind": "torch", "model": "monai.networks.nets.DenseNet121",
    ...                        "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 8}})
    >>> spec.kind, spec.output, spec.input_channels, spec.preprocessing().describe()
    ('torch', 'pooled', 1, 'CT=ct-liver-wide,*=robust, 224 px, body crop at 1 mm/px')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcbir.encoders.names import is_builtin
from medcbir.encoders.preprocessing import DEFAULT_CROP, DEFAULT_FOV_MM, DEFAULT_SIZE, DEFAULT_WINDOWS, default_preprocessing
from medcbir.errors import ConfigError
from medcbir.imaging.preprocess import CROPS

KINDS = ("huggingface", "torch", "onnx", "torchscript", "timm")
#: Output modes; any other string names a layer (a module, or an ONNX graph output).
OUTPUTS = ("pooled", "cls", "mean-tokens")
HF_PREFIX = "hf:"
SIDECAR_SUFFIX = ".json"
#: Every field of a spec file → what it means (``medcbir encoder-spec --help`` and the README).
FIELDS: dict[str, str] = {
    "kind": "huggingface | torch | onnx | torchscript | timm.",
    "model": "huggingface: a local model folder (config.json + weights); torch: a class path "
    "(monai.networks.nets.DenseNet121); onnx / torchscript: the model file; timm: a timm model name.",
    "class": "huggingface only: the transformers class to load (CLIPVisionModel, ...); default AutoModel.",
    "kwargs": "torch / timm: keyword arguments of the class or of timm.create_model (JSON object).",
    "weights": "torch / timm: a local weights file (.safetensors, or a torch state dict .pt/.pth/.bin); "
    "none = the class's own initialisation.",
    "input.size": "the square input side in pixels the model takes (default: the model folder's "
    "preprocessor config, else 224).",
    "input.channels": "input channels of the model; one window is repeated to fill them.",
    "input.mean": "per-channel mean subtracted from the [0, 1] windowed image (default 0).",
    "input.std": "per-channel divisor after the mean (default 1).",
    "windows": "window policy per window channel: one string, or a list with one per model channel "
    "(default 'CT=ct-liver-wide,*=robust').",
    "crop": "body (cut the body out of the field of view, default) or none (the whole image).",
    "fov_mm": "with crop body: the body region spans this many mm (default 224; null = fit the body box).",
    "output": "pooled (the model's pooled output, or the global average of a feature map; default), "
    "cls (token 0 of a token output), mean-tokens (mean of the patch tokens), or a layer name "
    "(a module of the model, or an ONNX output name).",
    "feature_layer": "module whose activations Grad-CAM and WILDCAT read (default: the last "
    "spatial feature map; for ViTs the input of the last block, reshaped to a grid).",
    "prefix_tokens": "tokens before the patch tokens (CLS + registers) of a token output "
    "(default: 1, or 1 + num_register_tokens from a Hugging Face config).",
}
#: The files of a Hugging Face model folder medcbir reads besides the weights.
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"


@dataclass(frozen=True)
class EncoderSpec:
    """One user encoder, with every path absolute.

    Attributes:
        kind: one of :data:`KINDS`.
        model: absolute path (folder or file), a class path, or a timm name.
        hf_class: the transformers class (``kind="huggingface"``), or None for ``AutoModel``.
        kwargs: constructor keyword arguments (torch, timm).
        weights: absolute path of a weights file, or None.
        input_size, input_channels, mean, std: what the model takes (``mean``/``std`` one per channel).
        windows: one window policy per window channel (1 or ``input_channels`` of them).
        crop, fov_mm: the geometry (:func:`~medcbir.encoders.preprocessing.default_preprocessing`).
        output: one of :data:`OUTPUTS` or a layer name.
        feature_layer: a module name, or None (found by the model's first forward).
        prefix_tokens: tokens before the patch tokens, or None (the default of the kind).
        source: what an index records to open it again (the spec file, ``hf:DIR`` or the model file).
    """

    kind: str
    model: str
    hf_class: str | None = None
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    input_size: int = DEFAULT_SIZE
    input_channels: int = 1
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    windows: tuple = DEFAULT_WINDOWS
    crop: str = DEFAULT_CROP
    fov_mm: float | None = DEFAULT_FOV_MM
    output: str = "pooled"
    feature_layer: str | None = None
    prefix_tokens: int | None = None
    source: str = "<spec>"

    def preprocessing(self):
        """The :class:`~medcbir.imaging.Preprocessing` of the spec (windows, size, geometry)."""
        return default_preprocessing(self.input_size, self.windows, crop=self.crop, fov_mm=self.fov_mm)

    def to_dict(self) -> dict:
        """The spec as JSON (absolute paths): what a manifest and a checkpoint record."""
        out = {
            "kind": self.kind,
            "model": self.model,
            "class": self.hf_class,
            "kwargs": dict(self.kwargs),
            "weights": self.weights,
            "input": {"size": self.input_size, "channels": self.input_channels, "mean": list(self.mean), "std": list(self.std)},
            "windows": list(self.windows),
            "crop": self.crop,
            "fov_mm": self.fov_mm,
            "output": self.output,
            "feature_layer": self.feature_layer,
            "prefix_tokens": self.prefix_tokens,
        }
        return {k: v for k, v in out.items() if v is not None or k == "fov_mm"}

    def identity(self) -> dict:
        """The fields that decide an embedding (no paths: the weights' content is fingerprinted instead)."""
        named = self.model if self.kind in ("torch", "timm") else None
        out = {
            "kind": self.kind,
            "model": named,
            "class": self.hf_class,
            "kwargs": dict(self.kwargs),
            "input": {"channels": self.input_channels, "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "output": self.output,
            "prefix_tokens": self.prefix_tokens,
        }
        return {k: v for k, v in out.items() if v is not None}

    def describe(self) -> str:
        """``huggingface /models/rad-dino (cls)``: for messages."""
        return f"{self.kind} {self.model} ({self.output})"


# ---------------------------------------------------------------------------- reading
def _number_list(value: Any, n: int, name: str, default: float) -> tuple:
    if value is None:
        return tuple([float(default)] * n)
    values = [value] if isinstance(value, (int, float)) else value
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"encoder spec: {name} must be a number or a list of numbers, not {value!r}") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ConfigError(f"encoder spec: {name} has {len(values)} values for {n} input channel(s)")
    if name == "input.std" and any(v <= 0 for v in values):
        raise ConfigError(f"encoder spec: input.std must be > 0, not {values}")
    return tuple(values)


def _windows(value: Any, channels: int) -> tuple:
    if value is None:
        return DEFAULT_WINDOWS
    windows = (value,) if isinstance(value, str) else tuple(value)
    if not windows or not all(isinstance(w, str) for w in windows):
        raise ConfigError(f"encoder spec: windows must be a policy string or a list of them, not {value!r}")
    if len(windows) not in (1, channels):
        raise ConfigError(f"encoder spec: {len(windows)} window policies for a model with {channels} input channel(s); give 1 (repeated) or {channels}")
    return windows


def _local_path(value: Any, base: Path, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"encoder spec: {what} must be a path, not {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise ConfigError(f"encoder spec: {what} {path} not found (medcbir reads local files only)")
    return str(path.resolve())


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"encoder spec: {name} must be an integer ≥ {low}, not {value!r}")
    return int(value)


def spec_from_dict(data: dict, base: str | Path = ".", source: str = "<spec>", defaults: dict | None = None) -> EncoderSpec:
    """Check a spec (a parsed JSON object) and resolve its paths against ``base``.

    Args:
        data: the spec's fields (:data:`FIELDS`).
        base: the folder relative paths are relative to (the spec file's).
        source: what an index records to open it again.
        defaults: input defaults from the model folder (``size``, ``channels``, ``mean``, ``std``,
            ``prefix_tokens``), below the spec's own values.

    Raises:
        ConfigError: an unknown kind or field, a missing file, inconsistent channels.
    """
    if not isinstance(data, dict):
        raise ConfigError("an encoder spec is a JSON object")
    unknown = sorted(set(data) - {name.split(".")[0] for name in FIELDS})
    if unknown:
        raise ConfigError(f"encoder spec: unknown field(s) {', '.join(unknown)} (known: {', '.join(dict.fromkeys(n.split('.')[0] for n in FIELDS))})")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"encoder spec: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    base = Path(base)
    model = data.get("model")
    if kind in ("huggingface", "onnx", "torchscript"):
        if kind == "huggingface" and isinstance(model, str) and not (base / model).expanduser().exists() and "/" in model and not model.startswith((".", "/", "~")):
            raise ConfigError(f"encoder spec: no local folder {base / model}, and {model!r} looks like a Hugging Face hub name; "
                              "medcbir loads local folders only (download it on a connected machine, copy the folder here, and give its path)")
        model = _local_path(model, base, "model")
        if kind == "huggingface" and not (Path(model) / HF_CONFIG).is_file():
            raise ConfigError(f"encoder spec: {model} has no {HF_CONFIG}; a Hugging Face model folder holds config.json and its weights")
    elif not isinstance(model, str) or not model:
        raise ConfigError(f"encoder spec: kind {kind} needs model (a {'class path' if kind == 'torch' else 'timm model name'})")
    elif kind == "torch" and "." not in model:
        raise ConfigError(f"encoder spec: model {model!r} is not a class path (package.module.Class)")
    kwargs = data.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"encoder spec: kwargs must be a JSON object, not {kwargs!r}")
    hf_class = data.get("class")
    if hf_class is not None and (kind != "huggingface" or not isinstance(hf_class, str)):
        raise ConfigError("encoder spec: class is a transformers class name, for kind huggingface only")
    weights = data.get("weights")
    if weights is not None:
        if kind not in ("torch", "timm"):
            raise ConfigError(f"encoder spec: weights are for kinds torch and timm; a {kind} model carries its own")
        weights = _local_path(weights, base, "weights")
    given = data.get("input") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"encoder spec: input must be a JSON object, not {given!r}")
    unknown = sorted(set(given) - {"size", "channels", "mean", "std"})
    if unknown:
        raise ConfigError(f"encoder spec: unknown input field(s) {', '.join(unknown)} (known: size, channels, mean, std)")
    # The model folder's own input settings, below the spec's values.
    merged = {**(defaults or {}), **{k: v for k, v in given.items() if v is not None}}
    windows_given = data.get("windows")
    n_windows = 1 if windows_given is None or isinstance(windows_given, str) else len(windows_given)
    channels = _int(merged.get("channels", n_windows), "input.channels", 1)
    size = _int(merged.get("size", DEFAULT_SIZE), "input.size", 8)
    crop = data.get("crop", DEFAULT_CROP)
    if crop not in CROPS:
        raise ConfigError(f"encoder spec: crop must be one of {', '.join(CROPS)}, not {crop!r}")
    fov_mm = data.get("fov_mm", DEFAULT_FOV_MM)
    if fov_mm is not None and (isinstance(fov_mm, bool) or not isinstance(fov_mm, (int, float)) or fov_mm <= 0):
        raise ConfigError(f"encoder spec: fov_mm must be a positive number of mm or null, not {fov_mm!r}")
    output = data.get("output", "pooled")
    if not isinstance(output, str) or not output:
        raise ConfigError(f"encoder spec: output must be one of {', '.join(OUTPUTS)} or a layer name, not {output!r}")
    layer = data.get("feature_layer")
    if layer is not None and (kind == "onnx" or not isinstance(layer, str)):
        raise ConfigError("encoder spec: feature_layer is a module name, and an ONNX model has none")
    prefix = data.get("prefix_tokens", merged.get("prefix_tokens"))
    spec = EncoderSpec(
        kind=kind,
        model=model,
        hf_class=hf_class,
        kwargs=dict(kwargs),
        weights=weights,
        input_size=size,
        input_channels=channels,
        mean=_number_list(merged.get("mean"), channels, "input.mean", 0.0),
        std=_number_list(merged.get("std"), channels, "input.std", 1.0),
        windows=_windows(windows_given, channels),
        crop=crop,
        fov_mm=None if fov_mm is None else float(fov_mm),
        output=output,
        feature_layer=layer,
        prefix_tokens=None if prefix is None else _int(prefix, "prefix_tokens", 0),
        source=source,
    )
    spec.preprocessing()  # windows and geometry checked here, with the same messages as everywhere
    return spec


def spec_from_record(record: dict, source: str = "") -> EncoderSpec:
    """The spec a checkpoint or manifest recorded (:meth:`EncoderSpec.to_dict`), without checking
    that its files still exist (a checkpoint carries its own weights)."""
    try:
        given = record.get("input", {})
        return EncoderSpec(
            kind=record["kind"],
            model=record["model"],
            hf_class=record.get("class"),
            kwargs=dict(record.get("kwargs", {})),
            weights=record.get("weights"),
            input_size=int(given["size"]),
            input_channels=int(given["channels"]),
            mean=tuple(given["mean"]),
            std=tuple(given["std"]),
            windows=tuple(record["windows"]),
            crop=record.get("crop", DEFAULT_CROP),
            fov_mm=record.get("fov_mm"),
            output=record.get("output", "pooled"),
            feature_layer=record.get("feature_layer"),
            prefix_tokens=record.get("prefix_tokens"),
            source=source or "<spec>",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source or 'checkpoint'}: damaged encoder spec record ({exc})") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not readable JSON ({exc})") from None


def hf_defaults(folder: str | Path) -> dict:
    """Input defaults of a Hugging Face model folder: size, channels, mean/std, prefix tokens.

    Read from ``config.json`` (``num_channels``, ``image_size``, ``num_register_tokens``) and
    ``preprocessor_config.json`` (``crop_size``/``size``, ``image_mean``/``image_std`` when
    ``do_normalize``), so ``hf:DIR`` feeds the model as its own image processor would.
    """
    folder = Path(folder)
    config = _read_json(folder / HF_CONFIG, "Hugging Face config")
    config = config.get("vision_config", config) if isinstance(config.get("vision_config"), dict) else config
    out: dict = {}
    if isinstance(config.get("num_channels"), int):
        out["channels"] = config["num_channels"]
    if isinstance(config.get("image_size"), int):
        out["size"] = config["image_size"]
    if config.get("model_type", "").startswith(("vit", "dinov2", "deit", "beit", "clip", "siglip")) or "patch_size" in config:
        registers = config.get("num_register_tokens") or 0
        out["prefix_tokens"] = (0 if config.get("model_type", "").startswith("siglip") else 1) + int(registers)
    path = folder / HF_PREPROCESSOR
    if path.is_file():
        proc = _read_json(path, "Hugging Face preprocessor config")
        size = proc.get("crop_size") if proc.get("do_center_crop") else proc.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if isinstance(size, int):
            out["size"] = size
        if proc.get("do_normalize", True) and proc.get("image_mean") is not None:
            out["mean"], out["std"] = proc["image_mean"], proc.get("image_std", 1.0)
    return out


def hf_spec(folder: str | Path) -> EncoderSpec:
    """The spec of ``hf:DIR``: the folder's model with its own input size and normalisation."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        hub = "/" in str(folder) and not str(folder).startswith((".", "/", "~"))
        why = " (it looks like a hub name: medcbir loads local folders only; download it on a connected machine and copy the folder here)" if hub else ""
        raise ConfigError(f"hf:{folder}: no local model folder {path}{why}")
    path = path.resolve()
    return spec_from_dict({"kind": "huggingface", "model": str(path)}, path, source=HF_PREFIX + str(path), defaults=hf_defaults(path))


def read_spec(path: str | Path) -> EncoderSpec:
    """Read a spec file (JSON); relative paths in it are relative to its folder."""
    path = Path(path).expanduser().resolve()
    data = _read_json(path, "encoder spec")
    return with_model_defaults(data, path.parent, str(path))


def with_model_defaults(data: dict, base: Path, source: str) -> EncoderSpec:
    """:func:`spec_from_dict` with a Hugging Face folder's input defaults below the spec's values."""
    defaults = None
    if isinstance(data, dict) and data.get("kind") == "huggingface" and isinstance(data.get("model"), str):
        folder = Path(data["model"]).expanduser()
        folder = folder if folder.is_absolute() else base / folder
        if (folder / HF_CONFIG).is_file():
            defaults = hf_defaults(folder)
    return spec_from_dict(data, base, source=source, defaults=defaults)


def read_sidecar(model_file: str | Path) -> EncoderSpec:
    """The spec of a model file with ``FILE.json`` beside it (kind from the suffix unless given)."""
    model_file = Path(model_file).expanduser().resolve()
    data = _read_json(sidecar_of(model_file), "encoder spec")
    if not isinstance(data, dict):
        raise ConfigError(f"{sidecar_of(model_file)}: an encoder spec is a JSON object")
    data = {"kind": "onnx" if model_file.suffix.lower() == ".onnx" else "torchscript", "model": model_file.name, **data}
    return spec_from_dict(data, model_file.parent, source=str(model_file))


def sidecar_of(model_file: str | Path) -> Path:
    return Path(str(model_file) + SIDECAR_SUFFIX)


def spec_argument(arg: Any) -> EncoderSpec | None:
    """The spec an encoder argument stands for, or None when it is not a user encoder.

    User encoders: an :class:`EncoderSpec`, a spec dict, ``hf:DIR``, a ``.json`` spec file, or a
    model file with a ``FILE.json`` sidecar. Everything else (built-in names, medcbir
    checkpoints and exports, modules) is None.
    """
    if isinstance(arg, EncoderSpec):
        return arg
    if isinstance(arg, dict):
        return with_model_defaults(arg, Path.cwd(), "<spec>")
    if not isinstance(arg, (str, Path)):
        return None
    text = str(arg)
    if text.startswith(HF_PREFIX):
        return hf_spec(text[len(HF_PREFIX):])
    if text.lower().endswith(".json"):
        return read_spec(text)
    if sidecar_of(text).is_file() and Path(text).is_file():
        return read_sidecar(text)
    return None


def source_available(source: str) -> bool:
    """True when an encoder source an index records can be opened again here (a file, or ``hf:DIR``)."""
    if is_builtin(source):
        return True
    if str(source).startswith(HF_PREFIX):
        return Path(str(source)[len(HF_PREFIX):]).is_dir()
    return bool(source) and Path(source).exists()


def canonical_source(arg: str) -> str:
    """The encoder argument as it should be recorded for another process: built-in names as they
    are, ``hf:DIR`` with DIR absolute, files absolute.

    Raises:
        ConfigError: the file or folder does not exist.
    """
    if is_builtin(arg):
        return arg
    if str(arg).startswith(HF_PREFIX):
        return hf_spec(str(arg)[len(HF_PREFIX):]).source
    path = Path(arg).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"encoder {arg} not found")
    return str(path)


def relative_to(path: str | None, folder: Path) -> str | None:
    """``path`` relative to ``folder`` when it lies under it (what a spec file stores), else as it is."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def spec_file_record(spec: EncoderSpec, folder: Path) -> dict:
    """The spec as a file in ``folder`` stores it: paths relative to the folder where they can be."""
    record = spec.to_dict()
    if spec.kind in ("huggingface", "onnx", "torchscript"):
        record["model"] = relative_to(spec.model, folder)
    if spec.weights:
        record["weights"] = relative_to(spec.weights, folder)
    return record


__all__ = [
    "EncoderSpec", "FIELDS", "HF_PREFIX", "KINDS", "OUTPUTS", "canonical_source", "hf_defaults", "hf_spec", "read_sidecar",
    "read_spec", "sidecar_of", "source_available", "spec_argument", "spec_file_record", "spec_from_dict", "spec_from_record",
]
