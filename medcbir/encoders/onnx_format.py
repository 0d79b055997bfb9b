"""ONNX exports of encoders: the graph written, and the medcbir metadata it carries.

An exported graph maps ``images`` (B×C×S×S float32 in [0,1], dynamic B) to ``embeddings``
(B×D, L2-normalised), exactly like :class:`~medcbir.encoders.module.EncoderModule`; an encoder
with a WILDCAT head exports two more outputs after the embeddings, ``class_scores`` (B×C) and
``class_maps`` (B×C×h×w). The model's ``metadata_props`` carry ``medcbir.format``,
``medcbir.fingerprint`` (the checkpoint's own, so an index built with either is opened by both),
``medcbir.preprocessing`` (JSON), ``medcbir.arch`` (JSON), ``medcbir.dim`` and, with a head,
``medcbir.wildcat`` (JSON: classes, maps per class, k+, k−, α).
The checked export command is :func:`medcbir.train.onnx_export.export_onnx`; opening an export
for inference is :func:`medcbir.encoders.runtime.open_encoder`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medcbir.encoders.checkpoint import FORMAT
from medcbir.encoders.preprocessing import as_preprocessing
from medcbir.encoders.wildcat import ExportGraph
from medcbir.errors import ConfigError

OPSET = 17
#: ONNX metadata keys (custom_metadata_map) every medcbir export carries.
ONNX_KEYS = ("medcbir.format", "medcbir.fingerprint", "medcbir.preprocessing", "medcbir.arch", "medcbir.dim")


def is_onnx(path: Any) -> bool:
    """True for a path (or name) ending in ``.onnx``."""
    return str(path).lower().endswith(".onnx")


def onnx_metadata(module) -> dict[str, str]:
    """The metadata an exported model carries (all strings; ``medcbir.wildcat`` with a WILDCAT head)."""
    meta = {
        "medcbir.format": FORMAT,
        "medcbir.fingerprint": module.fingerprint,
        "medcbir.preprocessing": json.dumps(module.preprocessing.to_dict(), sort_keys=True),
        "medcbir.arch": json.dumps(module.arch, sort_keys=True),
        "medcbir.dim": str(module.dim),
    }
    head = getattr(module, "wildcat", None)
    if head is not None:
        meta["medcbir.wildcat"] = json.dumps(head.config(), sort_keys=True)
    return meta


def export_graph(module) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """What to export and its output names: the encoder (``embeddings``), or with a WILDCAT head
    :class:`~medcbir.encoders.wildcat.ExportGraph` (``embeddings``, ``class_scores``, ``class_maps``)."""
    if getattr(module, "wildcat", None) is None:
        return module, ("embeddings",)
    return ExportGraph(module).eval(), ExportGraph.OUTPUTS


def write_onnx(module, dummy: torch.Tensor, path: str, opset: int = OPSET, outputs: tuple[str, ...] = ("embeddings",)) -> None:
    """Trace ``module`` on ``dummy`` into an ONNX file at ``path`` (input ``images``, dynamic batch)."""
    torch.onnx.export(
        module,
        (dummy,),
        path,
        input_names=["images"],
        output_names=list(outputs),
        dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def onnx_session(path: Path, providers) -> Any:
    """An ONNX Runtime session of a model file.

    Raises:
        ConfigError: missing or unreadable file.
    """
    if not path.is_file():
        raise ConfigError(f"encoder {path} not found")
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=list(providers))
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{path} is not a readable ONNX model ({first})") from None


def read_metadata(session, path: Path) -> dict:
    """``{fingerprint, preprocessing, arch, dim}`` of an export, from its medcbir metadata.

    Raises:
        ConfigError: no or damaged medcbir metadata.
    """
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("medcbir.format") != FORMAT or "medcbir.fingerprint" not in meta:
        raise ConfigError(f"{path} is an ONNX model without medcbir metadata: describe it in {path.name}.json beside it "
                          "(`medcbir encoder-spec --kind onnx`), or export it with `medcbir export-onnx`")
    try:
        return {
            "fingerprint": meta["medcbir.fingerprint"],
            "preprocessing": as_preprocessing(json.loads(meta["medcbir.preprocessing"])),
            "arch": json.loads(meta["medcbir.arch"]),
            "dim": int(meta["medcbir.dim"]),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} has damaged medcbir metadata ({exc})") from None
