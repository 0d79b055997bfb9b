"""The fingerprint of an encoder: what an index records to refuse any other encoder.

sha256 over the canonical JSON of the architecture record and the preprocessing record, then
every tensor of the network's state dict in sorted key order (key, dtype, shape, bytes). The
exact byte stream is a compatibility contract: every index ever built records a fingerprint
computed this way. A user's ONNX model has no state dict: :func:`file_fingerprint` hashes the
bytes of its files instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch


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


def file_fingerprint(arch: dict, preprocessing: dict, files: list) -> str:
    """sha256 hex of canonical JSON (arch, preprocessing) + each file's name and bytes, in order.

    For models that are files and not a state dict (a user's ONNX graph and its external data):
    their bytes are the weights' content.

    Args:
        arch: architecture record (without paths).
        preprocessing: ``Preprocessing.to_dict()``.
        files: paths of the files that define the model, in a fixed order.
    """
    h = hashlib.sha256()
    h.update(_canonical({"arch": arch, "preprocessing": preprocessing}))
    for path in files:
        path = Path(path)
        h.update(path.name.encode())
        h.update(_canonical(path.stat().st_size))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
