"""Encoders: checkpoints, fingerprints, the default random encoder, and the inference wrapper.

An encoder is a backbone plus the preprocessing it was trained with (the window(s) and size
of :class:`medcbir.imaging.Preprocessing`); the two together are fingerprinted, and an index
built with one fingerprint refuses any other (:func:`check_compatible`).

Two faces:

- :func:`load_encoder` returns a ``torch.nn.Module`` (:class:`EncoderModule`) mapping a
  preprocessed batch B×C×S×S in [0, 1] to L2-normalised B×D embeddings, for training,
  explanations and anything that needs gradients.
- :func:`open_encoder` returns an :class:`Encoder` for indexing and search: numpy in, numpy
  out, batched, no gradients, on the :class:`~medcbir.device.Device` given; it also opens ONNX
  exports through ONNX Runtime.

Example:
    >>> import numpy as np
    >>> enc = open_encoder("default")
    >>> x = np.random.rand(2, *enc.input_shape).astype(np.float32)
    >>> enc.embed(x).shape
    (2, 512)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError, EncoderMismatch
from medcbir.fsutil import atomic_path
from medcbir.train.backbones import POOLINGS, PooledResNet, Thumbnail, backbone_dim, build_backbone, feature_layer

FORMAT = "medcbir-encoder"
VERSION = 1
DEFAULT_ENCODER = "default"
DEFAULT_BACKBONE = "resnet18"
#: New encoders: CT through the liver window, every other modality normalised (never a CT
#: window on MR), the body cropped out of its field of view (README: "Preprocessing").
DEFAULT_WINDOWS = ("CT=ct-liver-wide,*=robust",)
DEFAULT_SIZE = 224
DEFAULT_CROP = "body"
#: The body region spans this many mm (at any input size) when the body fits in it: a brain keeps
#: its real size across fields of view; a larger body is fitted to the input instead.
DEFAULT_FOV_MM = 224.0
DEFAULT_SEED = 0
#: GeM beat the global average for random-init ResNet-18 features on real MR across sources
#: (README, "Preprocessing and descriptors").
DEFAULT_POOLING = "gem"
#: The default encoder of medcbir 0.1 (CT liver window on every modality, whole image); indexes
#: built with it keep opening (:func:`open_for_index`).
LEGACY_DEFAULT = "default-v1"
#: The default of medcbir 0.2 before the classical descriptor replaced it: the seed-0 random
#: ResNet-18 with GeM pooling and the default preprocessing (scored below thumbnail:16 on real MR).
PREVIOUS_DEFAULT = "default-v2"
#: What ``default`` is: the weightless thumbnail + HOG descriptor (README, "The default encoder":
#: it beat thumbnail:16 and the random ResNet on real MR across subjects and on the phantom).
DEFAULT_DESCRIPTOR = "classic"
LEGACY_WINDOWS = ("ct-liver-wide",)
DEFAULT_THUMBNAIL = 16
#: Weightless classical descriptors (:mod:`medcbir.train.classic`): ``hog`` and ``classic``
#: (thumbnail + HOG).
CLASSIC_BACKBONES = ("classic", "hog")
WEIGHTLESS_BACKBONES = ("thumbnail", *CLASSIC_BACKBONES)
# The stem is part of the architecture record: a stride-1 MONAI stem is a different network.
STEM = "conv7s2+maxpool"

# ONNX metadata keys (custom_metadata_map).
ONNX_KEYS = ("medcbir.format", "medcbir.fingerprint", "medcbir.preprocessing", "medcbir.arch", "medcbir.dim")


# --------------------------------------------------------------------------- preprocessing
def _preprocessing_cls():
    try:
        from medcbir.imaging import Preprocessing
    except ImportError:  # the package re-export is the contract; the module is where it lives
        from medcbir.imaging.preprocess import Preprocessing
    return Preprocessing


def as_preprocessing(value: Any):
    """A :class:`medcbir.imaging.Preprocessing` from itself, its dict record, or None (default)."""
    Preprocessing = _preprocessing_cls()
    if value is None:
        return default_preprocessing()
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        return Preprocessing.from_dict(value)
    raise ConfigError(f"not a preprocessing record: {value!r}")


def default_preprocessing(size: int = DEFAULT_SIZE, windows: Any = DEFAULT_WINDOWS, crop: str = DEFAULT_CROP, fov_mm: float | None = DEFAULT_FOV_MM):
    """The preprocessing of new encoders: window policy by modality, body crop, fixed physical scale.

    Args:
        size: input side in pixels.
        windows: one window policy per channel.
        crop: ``"body"`` or ``"none"``.
        fov_mm: the body region's extent in mm (spacing = fov_mm / size); None = fit the body box.
    """
    spacing = float(fov_mm) / int(size) if (fov_mm and crop == "body") else None
    return _preprocessing_cls()(windows=tuple(windows), size=size, crop=crop, spacing=spacing)


def describe(fingerprint: str, preprocessing: Any) -> str:
    """``"abc123def456 (ct-liver-wide, 224 px)"``: how an encoder is named in messages."""
    record = preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else dict(preprocessing or {})
    windows = record.get("windows")
    size = record.get("size")
    if windows is None or size is None:
        what = json.dumps(record, sort_keys=True)
    else:
        names = [w if isinstance(w, str) else ":".join(f"{v:g}" for v in w) for w in ([windows] if isinstance(windows, str) else windows)]
        what = f"{'+'.join(names)}, {size} px"
        if record.get("crop", "none") != "none":
            what += ", body crop" + (f" at {record['spacing']:g} mm/px" if record.get("spacing") else "")
    return f"{str(fingerprint)[:12]} ({what})"


# --------------------------------------------------------------------------- fingerprint
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list).encode()


def compute_fingerprint(arch: dict, preprocessing: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex of canonical JSON (arch, preprocessing) + tensor bytes in sorted key order.

    Each tensor contributes its key, dtype and shape before its bytes, so renaming or
    reshaping a parameter changes the fingerprint even when the raw bytes would not.

    Args:
        arch: architecture record (``backbone``, ``in_channels``, ``dim``, ``stem``).
        preprocessing: ``Preprocessing.to_dict()``.
        state_dict: the backbone's state dict.
    """
    h = hashlib.sha256()
    h.update(_canonical({"arch": arch, "preprocessing": preprocessing}))
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tensor.dtype).encode())
        h.update(_canonical(list(tensor.shape)))
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def make_arch(backbone: str = DEFAULT_BACKBONE, in_channels: int = 1, pooling: str = DEFAULT_POOLING, grid: int | None = None) -> dict:
    """The architecture record stored in checkpoints and ONNX metadata.

    Args:
        backbone: a name of :data:`~medcbir.train.backbones.BACKBONES`, or ``"thumbnail"``.
        in_channels: input channels (one per window policy).
        pooling: one of :data:`~medcbir.train.backbones.POOLINGS` (recorded only when not
            ``"avg"``, so records of encoders from before poolings existed are unchanged).
        grid: the side N of a thumbnail.
    """
    if backbone == "thumbnail":
        grid = int(grid or DEFAULT_THUMBNAIL)
        if grid < 1:
            raise ConfigError(f"a thumbnail needs a side ≥ 1, not {grid}")
        return {"backbone": "thumbnail", "grid": grid, "in_channels": int(in_channels), "dim": int(in_channels) * grid * grid, "stem": "none"}
    if backbone in CLASSIC_BACKBONES:
        from medcbir.train.classic import HOG_BINS, HOG_CELL, HOG_SIZE, hog_dim

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


def build_network(arch: dict) -> nn.Module:
    """A network for an architecture record (random weights from the caller's torch RNG)."""
    if arch["backbone"] == "thumbnail":
        return Thumbnail(int(arch["grid"]))
    if arch["backbone"] in CLASSIC_BACKBONES:
        from medcbir.train.classic import ClassicDescriptor, GradientHistogram

        hog = (int(arch["hog_size"]), int(arch["hog_cell"]), int(arch["hog_bins"]))
        return ClassicDescriptor(int(arch["grid"]), *hog) if arch["backbone"] == "classic" else GradientHistogram(*hog)
    if arch.get("stem", STEM) != STEM:
        raise ConfigError(f"this medcbir builds stem {STEM!r}, not {arch.get('stem')!r}")
    net = build_backbone(arch["backbone"], int(arch["in_channels"]))
    pooling = arch.get("pooling", "avg")
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r} in the architecture record")
    return net if pooling == "avg" else PooledResNet(net, pooling)


# --------------------------------------------------------------------------- the module
class EncoderModule(nn.Module):
    """Backbone + L2 normalisation, carrying its preprocessing record and fingerprint.

    Args:
        backbone: a network from :func:`build_backbone`.
        arch: its architecture record (:func:`make_arch`).
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


def new_encoder(
    backbone: str = DEFAULT_BACKBONE, preprocessing: Any = None, seed: int | None = DEFAULT_SEED, pooling: str = "avg"
) -> EncoderModule:
    """A randomly initialised encoder; deterministic for a given seed (global RNG untouched).

    Args:
        backbone: backbone name (:data:`~medcbir.train.backbones.BACKBONES`).
        preprocessing: a ``Preprocessing`` or its dict; None = :func:`default_preprocessing`.
        seed: torch seed for the initialisation; None uses the caller's RNG state.
        pooling: ``"avg"`` (the plain ResNet), ``"gem"`` or ``"multi"``
            (:data:`~medcbir.train.backbones.POOLINGS`); the built-in ``default`` and ``random``
            encoders use :data:`DEFAULT_POOLING`.
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


def thumbnail_encoder(grid: int = DEFAULT_THUMBNAIL, preprocessing: Any = None) -> EncoderModule:
    """The ``thumbnail:N`` baseline: the preprocessed image area-downsampled to N×N, L2-normalised."""
    prep = as_preprocessing(preprocessing)
    return EncoderModule(Thumbnail(grid), make_arch("thumbnail", prep.channels, grid=grid), prep).eval()


def classic_encoder(name: str = "classic", preprocessing: Any = None, grid: int = DEFAULT_THUMBNAIL) -> EncoderModule:
    """A weightless classical descriptor (:mod:`medcbir.train.classic`): ``hog``, or ``classic``
    (the ``thumbnail:grid`` and the HOG side by side)."""
    if name not in CLASSIC_BACKBONES:
        raise ConfigError(f"unknown classical descriptor {name!r} (known: {', '.join(CLASSIC_BACKBONES)})")
    prep = as_preprocessing(preprocessing)
    arch = make_arch(name, prep.channels, grid=grid)
    return EncoderModule(build_network(arch), arch, prep).eval()


# --------------------------------------------------------------------------- files
def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`medcbir.fsutil.atomic_path` (temporary name, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def checkpoint_record(encoder: EncoderModule, *, method: str = "random", extra: dict | None = None) -> dict:
    """The checkpoint dict for an encoder (plus any training state in ``extra``)."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(encoder.arch),
        "preprocessing": encoder.preprocessing.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in encoder.backbone.state_dict().items()},
        "fingerprint": encoder.refresh_fingerprint(),
        "method": method,
    }
    head = getattr(encoder, "wildcat", None)
    if head is not None:  # a fine-tuned WILDCAT head travels with its encoder (medcbir.train.wildcat)
        record["wildcat"] = head.record()
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra checkpoint key {key!r} would overwrite the encoder record")
        record[key] = value
    return record


def save_checkpoint(path: str | Path, encoder: EncoderModule, *, method: str = "random", extra: dict | None = None) -> Path:
    """Write an encoder checkpoint atomically.

    Args:
        path: destination file (conventionally ``*.pt``).
        encoder: the encoder to save.
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


def encoder_from_record(record: dict, source: str = "") -> EncoderModule:
    """Rebuild an :class:`EncoderModule` from a checkpoint dict and check its fingerprint."""
    arch = dict(record["arch"])
    if arch.get("backbone") not in WEIGHTLESS_BACKBONES and arch.get("stem", STEM) != STEM:
        raise ConfigError(f"{source or 'checkpoint'} uses stem {arch.get('stem')!r}; this medcbir builds {STEM!r}")
    try:
        net = build_network(arch)
        net.load_state_dict(record["state_dict"], strict=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{source or 'checkpoint'} weights do not fit {arch.get('backbone')}: {first}") from None
    module = EncoderModule(net, arch, record["preprocessing"]).eval()
    if module.fingerprint != record["fingerprint"]:
        raise ConfigError(
            f"{source or 'checkpoint'} is corrupt: its weights hash to {module.fingerprint[:12]}, "
            f"not the recorded {str(record['fingerprint'])[:12]}"
        )
    if record.get("wildcat") is not None:
        from medcbir.train.wildcat import attach_head

        attach_head(module, record["wildcat"], source)
    return module


def cache_dir() -> Path:
    """``$MEDCBIR_CACHE`` or ``~/.cache/medcbir``."""
    env = os.environ.get("MEDCBIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medcbir"


def default_encoder_path() -> Path:
    return cache_dir() / "default-encoder-v2.pt"


def _load_default(legacy: bool = False) -> EncoderModule:
    """The default encoder (cached), or with ``legacy`` the default of medcbir 0.1."""
    if legacy:
        prep, pooling = _preprocessing_cls()(windows=LEGACY_WINDOWS, size=DEFAULT_SIZE), "avg"
        path = cache_dir() / "default-encoder.pt"
    else:
        prep, pooling = default_preprocessing(), DEFAULT_POOLING
        path = default_encoder_path()
    if path.is_file():
        try:
            module = encoder_from_record(read_checkpoint(path), str(path))
            if module.preprocessing == prep and module.arch == make_arch(DEFAULT_BACKBONE, prep.channels, pooling):
                return module
        except ConfigError:
            pass  # a damaged or outdated cache is rebuilt below; it holds nothing that cannot be recreated
    module = new_encoder(DEFAULT_BACKBONE, prep, seed=DEFAULT_SEED, pooling=pooling)
    save_checkpoint(path, module, method="random")
    return module


def _is_default(path: Any) -> bool:
    return isinstance(path, str) and path == DEFAULT_ENCODER


def builtin_encoder(name: Any) -> EncoderModule | None:
    """The encoder a built-in name stands for, or None when ``name`` is not one.

    Names: ``default`` (the ``classic`` descriptor with the default preprocessing);
    ``default-v2`` (the seed-0 random ResNet-18, GeM, default preprocessing: the default before
    ``classic``); ``default-v1`` (medcbir 0.1's default, for indexes built with it);
    ``random`` / ``random:SEED`` (the default backbone at random initialisation, default
    preprocessing); ``thumbnail`` / ``thumbnail:N`` (the preprocessed image downsampled to N×N);
    ``hog`` and ``classic`` (a histogram of oriented gradients; thumbnail:16 + HOG), weightless
    classical descriptors with the default preprocessing (:mod:`medcbir.train.classic`).

    Raises:
        ConfigError: a built-in name with a bad parameter (``thumbnail:x``).
    """
    if not isinstance(name, str):
        return None
    base, _, arg = name.partition(":")
    if name == DEFAULT_ENCODER:
        return classic_encoder(DEFAULT_DESCRIPTOR)
    if name == PREVIOUS_DEFAULT:
        return _load_default()
    if name == LEGACY_DEFAULT:
        return _load_default(legacy=True)
    if name in CLASSIC_BACKBONES:
        return classic_encoder(name)
    if base not in ("random", "thumbnail") or (arg == "" and ":" in name):
        return None
    try:
        value = int(arg) if arg else None
    except ValueError:
        raise ConfigError(f"{name!r}: write {base}:{'N (the side)' if base == 'thumbnail' else 'SEED'} with an integer") from None
    if base == "thumbnail":
        return thumbnail_encoder(value or DEFAULT_THUMBNAIL)
    return new_encoder(DEFAULT_BACKBONE, None, seed=DEFAULT_SEED if value is None else value, pooling=DEFAULT_POOLING)


def is_builtin(name: Any) -> bool:
    """True for a built-in encoder name (no file behind it)."""
    if not isinstance(name, str):
        return False
    base, sep, arg = name.partition(":")
    if name in (DEFAULT_ENCODER, PREVIOUS_DEFAULT, LEGACY_DEFAULT, *CLASSIC_BACKBONES):
        return True
    return base in ("random", "thumbnail") and (not sep or arg.isdigit())


def _is_onnx(path: Any) -> bool:
    return str(path).lower().endswith(".onnx")


def load_encoder(path: str | Path = DEFAULT_ENCODER) -> EncoderModule:
    """The encoder as a torch module (eval mode, CPU).

    Args:
        path: a built-in name (:func:`builtin_encoder`: ``"default"`` = the ``classic``
            descriptor with :func:`default_preprocessing`; ``"random:SEED"``;
            ``"thumbnail:N"``), or a checkpoint written by :func:`save_checkpoint` or by the
            trainer (its training state is ignored here).

    Returns:
        An :class:`EncoderModule` with ``.preprocessing``, ``.fingerprint``, ``.dim``,
        ``.arch`` and ``.feature_layer``.
    """
    if isinstance(path, nn.Module):
        return path
    builtin = builtin_encoder(path) if is_builtin(path) else None
    if builtin is not None:
        return builtin
    if _is_onnx(path):
        raise ConfigError(f"{path} is an ONNX export; use open_encoder() for inference (no torch module to return)")
    return encoder_from_record(read_checkpoint(path), str(path))


# --------------------------------------------------------------------------- inference wrapper
class Encoder:
    """Batched inference: numpy B×C×S×S float32 in [0,1] → L2-normalised B×D float32.

    Built by :func:`open_encoder`; ``kind`` is ``"torch"`` or ``"onnx"``.
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
    if not path.is_file():
        raise ConfigError(f"encoder {path} not found")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=list(device.ort_providers))
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{path} is not a readable ONNX model ({first})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("medcbir.format") != FORMAT or "medcbir.fingerprint" not in meta:
        raise ConfigError(f"{path} is an ONNX model without medcbir metadata (export it with `medcbir export-onnx`)")
    try:
        preprocessing = as_preprocessing(json.loads(meta["medcbir.preprocessing"]))
        arch = json.loads(meta["medcbir.arch"])
        dim = int(meta["medcbir.dim"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} has damaged medcbir metadata ({exc})") from None
    return Encoder(
        kind="onnx",
        source=str(Path(path).resolve()),  # recorded in index manifests: must not depend on the cwd
        preprocessing=preprocessing,
        fingerprint=meta["medcbir.fingerprint"],
        dim=dim,
        arch=arch,
        device=device,
        session=session,
    )


def open_encoder(path: str | Path | EncoderModule = DEFAULT_ENCODER, device: Any = None, batch_size: int = 32) -> Encoder:
    """Open an encoder for batched inference.

    Args:
        path: ``"default"``, a checkpoint (``.pt``), an ONNX export (``.onnx``), or an
            :class:`EncoderModule` already in memory.
        device: a :class:`~medcbir.device.Device`; None = ``Device.auto()``.
        batch_size: default forward batch size of :meth:`Encoder.embed`.

    Raises:
        ConfigError: missing, unreadable or foreign file.
    """
    from medcbir.device import Device

    device = device or Device.auto()
    if isinstance(path, Encoder):
        return path
    if _is_onnx(path):
        return _open_onnx(Path(path), device)
    module = load_encoder(path)
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


def check_compatible(encoder: Any, fingerprint: str, preprocessing: Any) -> None:
    """Refuse an encoder that differs from the one an index was built with.

    Args:
        encoder: an :class:`Encoder` or :class:`EncoderModule`.
        fingerprint: the fingerprint recorded in the index.
        preprocessing: the preprocessing recorded in the index (dict or ``Preprocessing``).

    Raises:
        EncoderMismatch: e.g. ``index built with encoder abc123 (ct-liver-wide, 224 px);
            this encoder is def456 (ct-lung, 128 px)``.
    """
    if encoder.fingerprint == fingerprint:
        return
    raise EncoderMismatch(
        f"index built with encoder {describe(fingerprint, preprocessing)}; "
        f"this encoder is {describe(encoder.fingerprint, encoder.preprocessing)} "
        "(open it with the encoder it was built with, or re-index into a new folder with this one)"
    )
