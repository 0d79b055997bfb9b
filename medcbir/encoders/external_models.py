"""Loading a user's model from local files, per kind: Hugging Face, torch class path, TorchScript, timm.

Each loader returns the bare ``torch.nn.Module`` of a :class:`~medcbir.encoders.spec.EncoderSpec`
in eval mode on the CPU, plus what identifies it beyond its weights (a Hugging Face config, the
code of a TorchScript file); :mod:`medcbir.encoders.external` puts medcbir's input adapter and
output selection around it. Nothing is downloaded: Hugging Face runs offline with
``local_files_only``. Any weight the files do not hold is initialised from a fixed seed, so the
same files always give the same module (and fingerprint).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcbir.encoders.spec import HF_CONFIG, EncoderSpec
from medcbir.errors import ConfigError

#: Hugging Face config keys that do not change what the base model computes (left out of the identity).
HF_VOLATILE = (
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "id2label", "label2id",
    "_attn_implementation", "_commit_hash", "problem_type", "finetuning_task",
)
INIT_SEED = 0
TIMM_MISSING = (
    "kind timm needs the timm package, which needs torchvision; the PyPI torchvision does not load beside "
    "medcbir's CPU torch build (its C++ ops fail to register). Export the timm model to TorchScript or ONNX on "
    "a machine with timm, or load its class and weights with kind torch"
)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _seeded(build):
    """``build()`` with torch's RNG seeded and restored: weights the files lack start the same every time."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build()


# ---------------------------------------------------------------------------- weights files
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (loaded with ``weights_only``: no code runs).

    A checkpoint that nests it (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ConfigError(f"{path} is a safetensors file: install medcbir's [hf] extra (safetensors)") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "not weights"
        raise ConfigError(f"{path} is not a readable weights file ({_first_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not isinstance(state.get(key), torch.Tensor):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds no state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str, strict: bool = True) -> None:
    """Load a weights file into ``model``; a key mismatch is one clear error naming the first keys."""
    state = read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or (strict and unexpected):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if strict and unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ConfigError(f"weights {path} do not fit the model ({'; '.join(parts)})")


# ---------------------------------------------------------------------------- per kind
def _torch_model(spec: EncoderSpec, weights: bool) -> nn.Module:
    module_name, _, name = spec.model.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"encoder spec: cannot import {spec.model} ({_first_line(exc)})") from None
    try:
        model = _seeded(lambda: cls(**spec.kwargs))
    except Exception as exc:  # noqa: BLE001 - a constructor refusing the kwargs
        raise ConfigError(f"encoder spec: {spec.model}(**kwargs) failed ({_first_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"encoder spec: {spec.model} is not a torch.nn.Module class")
    if weights and spec.weights:
        load_weights(model, spec.weights)
    return model


def _timm_model(spec: EncoderSpec, weights: bool) -> nn.Module:
    try:
        import timm
    except Exception:  # noqa: BLE001 - ImportError, or torchvision failing inside timm's import
        raise ConfigError(TIMM_MISSING) from None
    try:
        model = _seeded(lambda: timm.create_model(spec.model, pretrained=False, num_classes=0, **spec.kwargs))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"encoder spec: timm.create_model({spec.model!r}) failed ({_first_line(exc)})") from None
    if weights and spec.weights:
        load_weights(model, spec.weights, strict=False)  # a checkpoint's classifier has no place in num_classes=0
    return model


def _torchscript_model(spec: EncoderSpec) -> nn.Module:
    try:
        return torch.jit.load(spec.model, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{spec.model} is not a readable TorchScript file ({_first_line(exc)})") from None


def torchscript_code(model: nn.Module) -> str:
    """sha256 of the TorchScript code of every submodule: two files with the same weights and
    different code are different encoders."""
    digest = hashlib.sha256()
    for name, sub in model.named_modules():
        try:
            code = sub.code
        except (AttributeError, RuntimeError):
            continue
        digest.update(name.encode())
        digest.update(code.encode())
    return digest.hexdigest()


def _transformers():
    # A hospital's normal case is offline: never let transformers reach for the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError("kind huggingface needs transformers and safetensors: pip install 'medcbir[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _hf_class(transformers, spec: EncoderSpec):
    if not spec.hf_class:
        return transformers.AutoModel
    cls = getattr(transformers, spec.hf_class, None)
    if cls is None:
        raise ConfigError(f"encoder spec: transformers has no class {spec.hf_class!r}")
    return cls


def hf_config_record(folder: str | Path) -> dict:
    """The model folder's ``config.json`` without the keys that change nothing computed (:data:`HF_VOLATILE`)."""
    data = json.loads((Path(folder) / HF_CONFIG).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in HF_VOLATILE}


def _check_loading(spec: EncoderSpec, info: dict) -> None:
    missing = sorted(info.get("missing_keys") or ())
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in (info.get("mismatched_keys") or ())]
    if mismatched:
        raise ConfigError(f"{spec.model}: weights of the wrong shape for {', '.join(mismatched[:3])}")
    pooler = [k for k in missing if k.startswith("pooler.")]
    if pooler and spec.output == "pooled":
        raise ConfigError(f"{spec.model}: the weights lack the pooler ({', '.join(pooler[:2])}), which output 'pooled' reads; "
                          "set output to cls or mean-tokens")
    other = [k for k in missing if not k.startswith("pooler.")]
    if other:
        raise ConfigError(f"{spec.model}: the weights lack {len(other)} tensor(s) of the model ({', '.join(other[:3])})")


def _hf_model(spec: EncoderSpec, weights: bool, config: dict | None) -> nn.Module:
    transformers = _transformers()
    cls = _hf_class(transformers, spec)
    if weights:
        try:
            model, info = _seeded(lambda: cls.from_pretrained(spec.model, local_files_only=True, output_loading_info=True, dtype=torch.float32))
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/... for unreadable folders
            raise ConfigError(f"cannot load the Hugging Face model in {spec.model} ({_first_line(exc)})") from None
        _check_loading(spec, info)
        return model
    # The structure alone (a checkpoint carries the weights): the recorded config, through a
    # folder so that transformers reads it exactly as from the model's own folder.
    with tempfile.TemporaryDirectory(prefix="medcbir-hf-") as tmp:
        (Path(tmp) / HF_CONFIG).write_text(json.dumps(config or {}), encoding="utf-8")
        try:
            loaded = (transformers.AutoConfig if cls is transformers.AutoModel else cls.config_class).from_pretrained(tmp, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"the recorded Hugging Face config does not load ({_first_line(exc)})") from None
    return _seeded(lambda: cls.from_config(loaded) if cls is transformers.AutoModel else cls(loaded))


def load_model(spec: EncoderSpec, weights: bool = True, identity: dict | None = None) -> tuple[nn.Module, dict]:
    """The user's model (eval mode, CPU, fp32) and what identifies it beyond its weights.

    Args:
        spec: the spec (``kind`` other than ``onnx``).
        weights: load the weights from the spec's files; False builds the structure only (a
            checkpoint's state dict is loaded into it next), from ``identity`` for Hugging Face.
        identity: the recorded extra identity (``{"config": ...}``) when ``weights`` is False.

    Returns:
        (model, extra identity: ``{"config": ...}`` for Hugging Face, ``{"code": sha256}`` for
        TorchScript, else ``{}``).
    """
    extra: dict[str, Any] = {}
    if spec.kind == "huggingface":
        config = hf_config_record(spec.model) if weights else (identity or {}).get("config")
        model = _hf_model(spec, weights, config)
        extra["config"] = config
    elif spec.kind == "torch":
        model = _torch_model(spec, weights)
    elif spec.kind == "timm":
        model = _timm_model(spec, weights)
    elif spec.kind == "torchscript":
        model = _torchscript_model(spec)
        extra["code"] = torchscript_code(model)
    else:
        raise ConfigError(f"a {spec.kind} model has no torch module")
    return model.float().eval(), extra
