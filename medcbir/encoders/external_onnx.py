"""A user's ONNX model as an encoder: medcbir's input adapter and output selection around its session.

:class:`AdaptedSession` has the two methods of an ONNX Runtime session the rest of medcbir calls
(``get_inputs`` and ``run`` with an ``images`` input), so the runtime
:class:`~medcbir.encoders.runtime.Encoder` and the explanations' ONNX forwards run it like a
medcbir export: window channels in [0, 1] in, L2-normalised embeddings out. In between, the
same :class:`~medcbir.encoders.external.InputAdapter` and
:func:`~medcbir.encoders.external.select_vector` as for the torch kinds. The fingerprint hashes
the graph's files (the model file and any external data) with the spec's identity.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from medcbir.encoders.external import EXTERNAL, PROBE_BATCH, InputAdapter, select_vector
from medcbir.encoders.fingerprint import file_fingerprint
from medcbir.encoders.onnx_format import onnx_session
from medcbir.encoders.spec import OUTPUTS, EncoderSpec
from medcbir.errors import ConfigError

INPUT = "images"


class AdaptedSession:
    """An ONNX Runtime session of a user's model behind medcbir's input adapter and output selection.

    Args:
        session: the model's ``onnxruntime.InferenceSession``.
        spec: its spec.
    """

    def __init__(self, session, spec: EncoderSpec) -> None:
        self.session = session
        self.spec = spec
        model_input = session.get_inputs()[0]
        self.model_input = model_input.name
        self._check_input(model_input.shape)
        batch = model_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        names = [o.name for o in session.get_outputs()]
        if spec.output in OUTPUTS:
            self.output = names[0]
        elif spec.output in names:
            self.output = spec.output
        else:
            raise ConfigError(f"{spec.model} has no output {spec.output!r} (its outputs: {', '.join(names)})")
        self.adapter = InputAdapter(spec.input_channels, spec.mean, spec.std)
        self.prefix = int(spec.prefix_tokens if spec.prefix_tokens is not None else 1)

    def _check_input(self, shape) -> None:
        spec = self.spec
        want = [None, spec.input_channels, spec.input_size, spec.input_size]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in list(shape)[:4]]
        if len(shape) != 4 or any(f is not None and f != w for f, w in zip(fixed[1:], want[1:])):
            got = "×".join(str(d) for d in shape)
            raise ConfigError(f"{spec.model} takes {got}, not B×{spec.input_channels}×{spec.input_size}×{spec.input_size}: "
                              "set input.channels and input.size in its spec")

    def get_inputs(self):
        """One input, ``images``: B×C×S×S window channels in [0, 1]."""
        return [SimpleNamespace(name=INPUT, shape=["batch", len(self.spec.windows), self.spec.input_size, self.spec.input_size])]

    def get_modelmeta(self):
        return self.session.get_modelmeta()

    def rewrap(self, session) -> "AdaptedSession":
        """The same adapter around another session of the model (a quantised copy)."""
        return AdaptedSession(session, self.spec)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        step = self.fixed_batch or len(x)
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:  # a graph with a fixed batch: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run([self.output], {self.model_input: np.ascontiguousarray(chunk)})[0][:n])
        return np.concatenate(outs)

    def run(self, _output_names, feeds: dict) -> list[np.ndarray]:
        """``[B×D embeddings]`` of ``feeds["images"]``, L2-normalised."""
        images = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32))
        with torch.no_grad():
            x = self.adapter(images).numpy()
        vectors = select_vector(torch.from_numpy(self._raw(x)), self.spec.output, self.prefix, f"{Path(self.spec.model).name}")
        return [F.normalize(vectors.float(), dim=1).numpy()]


def model_files(path: str | Path) -> list[Path]:
    """The model file and the external data files its initializers name, in a fixed order."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:160]})") from None
    extra = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            extra.update(entry.value for entry in tensor.external_data if entry.key == "location")
    missing = [name for name in sorted(extra) if not (path.parent / name).is_file()]
    if missing:
        raise ConfigError(f"{path} needs its external data file {path.parent / missing[0]}, which is missing")
    return [path] + [path.parent / name for name in sorted(extra)]


def open_onnx_spec(spec: EncoderSpec, providers) -> dict:
    """The fields of an ONNX :class:`~medcbir.encoders.runtime.Encoder` for a spec of kind ``onnx``."""
    files = model_files(spec.model)
    session = AdaptedSession(onnx_session(Path(spec.model), providers), spec)
    preprocessing = spec.preprocessing()
    probe = np.random.default_rng(0).random((PROBE_BATCH, preprocessing.channels, preprocessing.size, preprocessing.size), dtype=np.float32)
    try:
        vectors = session.run(None, {INPUT: probe})[0]
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing the input
        raise ConfigError(f"{spec.model} fails on a {PROBE_BATCH}-image batch ({str(exc).splitlines()[0][:160]})") from None
    arch = {"backbone": EXTERNAL, "in_channels": preprocessing.channels, "dim": int(vectors.shape[1]), "stem": "none", "identity": spec.identity()}
    return {
        "session": session,
        "preprocessing": preprocessing,
        "fingerprint": file_fingerprint(arch, preprocessing.to_dict(), files),
        "dim": int(vectors.shape[1]),
        "arch": {**arch, "spec": spec.to_dict()},
    }
