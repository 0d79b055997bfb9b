"""Forward-only embedding backends for perturbation methods (RELAX's masked batches).

RELAX needs nothing from the encoder but embeddings of many masked copies, so the forwards can
run wherever they are cheapest while the rest of the estimator stays in torch:

- ``"torch"``: the module itself on the Device (inputs moved there, outputs brought back to the
  CPU), fp32 or bf16/fp16 autocast, optionally channels-last;
- ``"onnx"``: ONNX Runtime on the index's ONNX encoder, or on the module exported on the fly
  (cached per weights fingerprint in memory and in the model cache folder);
- ``"onnx-int8"``: the same graph with ONNX Runtime's dynamic int8 quantisation;
- ``"auto"`` (:func:`resolve_backend`): torch bf16 autocast where the CPU computes bf16 natively
  (AMX / AVX512-BF16; at 224 px it was cheaper per forward than ONNX Runtime fp32 with maps
  equal to fp32's on the same masks: benchmarks/RESULTS.md, "Development measurements"), ONNX
  Runtime fp32 otherwise (and whenever fp32 is asked for).

Every backend maps a float32 n×C×H×W tensor to float32 n×D embeddings *on the CPU*.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medcbir.cache import cache_dir
from medcbir.errors import ConfigError
from medcbir.explain.base import autocast
from medcbir.fsutil import atomic_path

BACKENDS = ("torch", "onnx", "onnx-int8")
#: what a face may ask for: a backend, or ``"auto"`` (:func:`resolve_backend`)
BACKEND_CHOICES = ("auto", *BACKENDS)
_SESSIONS: dict[tuple[str, str], object] = {}


def module_device(module: nn.Module, default: str | torch.device = "cpu") -> torch.device:
    """Where the module's weights live (``default`` for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device(default)


# Bumped when the exported graph of the same weights changes (2: the classic descriptor's atan2 no longer
# exports NaN on flat regions), so that an export cached by an earlier version is not reused.
EXPORT_VERSION = 2


def weights_key(module: nn.Module) -> str:
    """A key that changes whenever the weights do (the encoder's fingerprint when it has one)."""
    fingerprint = getattr(module, "fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16), as oneDNN uses it."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private probe that may change between torch releases
            continue
    return False


def resolve_backend(backend: str, precision: str | None, device_type: str = "cpu") -> tuple[str, str]:
    """The (backend, precision) a request means; ``"auto"`` is decided here and nowhere else.

    Args:
        backend: one of :data:`BACKEND_CHOICES`.
        precision: ``None`` (not asked: the backend's best), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: where torch runs (``"cpu"`` or ``"cuda"``).

    ``"auto"``: a reduced precision asked for runs as torch autocast; fp32 asked for runs through
    ONNX Runtime; nothing asked runs torch bf16 on a CPU with native bf16, ONNX Runtime otherwise.
    """
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"forward backend must be one of {', '.join(BACKEND_CHOICES)}, not {backend!r}")
    if backend != "auto":
        return backend, precision or "fp32"
    if precision not in (None, "fp32"):
        return "torch", precision
    if precision is None and device_type == "cpu" and native_bf16():
        return "torch", "bf16"
    return "onnx", "fp32"


_BF16_COPIES: dict[str, nn.Module | None] = {}
_BF16_KEEP = 4  # copies kept in memory (one per encoder weights)


def bf16_copy(module: nn.Module) -> nn.Module | None:
    """A CPU inference copy of ``module`` in bf16, channels-last, batch norms folded into the
    convolutions; ``None`` when the module cannot be traced (the caller autocasts instead).

    The module itself is left as it was. Cached per weights (:func:`weights_key`): casting and
    folding once instead of autocast re-casting every weight at every forward costs less CPU
    per 224-px forward (benchmarks/RESULTS.md, "Development measurements").
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    key = weights_key(module)
    if key not in _BF16_COPIES:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                folded = fuse(copy.deepcopy(module).cpu().float().eval())
                _BF16_COPIES[key] = folded.to(torch.bfloat16).to(memory_format=torch.channels_last).eval()
        except Exception:  # noqa: BLE001 - data-dependent control flow fx cannot trace
            _BF16_COPIES[key] = None
        while len(_BF16_COPIES) > _BF16_KEEP:
            _BF16_COPIES.pop(next(iter(_BF16_COPIES)))
    return _BF16_COPIES[key]


class TorchForward:
    """Embeddings from the torch module on its device.

    Args:
        module: the encoder (already on ``device``).
        device: torch device the module runs on (inputs are moved there).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast.
        channels_last: run in channels-last memory format (the module is converted for the run
            by :meth:`session` and converted back after).
        fold: bf16 on the CPU runs :func:`bf16_copy` (weights cast and batch norms folded once)
            instead of autocasting the module, when the module can be traced.
    """

    name = "torch"

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32", channels_last: bool = False,
                 fold: bool = True):
        self.module = module
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.folded = bf16_copy(module) if fold and precision == "bf16" and self.device.type == "cpu" else None

    @contextlib.contextmanager
    def session(self):
        convert = self.channels_last and self.folded is None
        if convert:
            self.module.to(memory_format=torch.channels_last)
        try:
            yield self
        finally:
            if convert:
                self.module.to(memory_format=torch.contiguous_format)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded is not None:
            with torch.no_grad():
                return self.folded(x.cpu().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device).contiguous(memory_format=fmt)
        with torch.no_grad(), autocast(self.precision, self.device.type):
            return self.module(x).float().cpu()


class OnnxForward:
    """Embeddings from an ONNX Runtime session (input ``images``, first output the embeddings)."""

    def __init__(self, session, name: str = "onnx"):
        self.ort_session = session
        self.name = name
        self.input_name = session.get_inputs()[0].name

    @contextlib.contextmanager
    def session(self):
        yield self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.ort_session.run(None, {self.input_name: arr})[0]).float()


def _cache_folder() -> Path:
    folder = cache_dir() / "explain-onnx"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_for_forwards(module: nn.Module, shape: tuple[int, int, int], path: Path) -> Path:
    """Export ``module`` (on the CPU, fp32) to ONNX with a dynamic batch; returns ``path``."""
    from medcbir.encoders.onnx_format import OPSET, write_onnx

    was_training = module.training
    module.eval()
    dummy = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_onnx(module, dummy, str(tmp), OPSET)
    finally:
        module.train(was_training)
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime dynamic int8 quantisation of ``src`` (weights uint8, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QUInt8)
    return dst


def _session(path: Path, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session with torch's thread count and no spin-waiting.

    ONNX Runtime's default pool (one thread per physical core, pinned, spinning between runs)
    starved on this shared 2-core machine: a pinned worker behind other jobs stalls every
    parallel section (slower per forward under load; a reference run stalled).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers))


def onnx_forward(module: nn.Module, shape: tuple[int, int, int], int8: bool = False, providers=("CPUExecutionProvider",)) -> OnnxForward:
    """An ONNX Runtime backend for ``module``: its own session if it wraps one, else an export.

    Args:
        module: a torch encoder, or the runner's wrapper of an ONNX ``Encoder``.
        shape: C×H×W of one input (for the export's dummy batch).
        int8: dynamic int8 quantisation of the graph.
        providers: ONNX Runtime execution providers (the Device's).
    """
    name = "onnx-int8" if int8 else "onnx"
    onnx_encoder = getattr(module, "encoder", None)
    session = getattr(onnx_encoder, "session", None)
    if session is not None and not int8:
        return OnnxForward(session, name)
    key = (weights_key(module) if session is None else str(onnx_encoder.fingerprint), name)
    if key not in _SESSIONS:
        folder = _cache_folder()
        base = folder / f"{key[0][:32]}-{'x'.join(map(str, shape))}-e{EXPORT_VERSION}.onnx"
        if session is not None:
            base = Path(onnx_encoder.source)
        elif not base.is_file():
            cpu_copy = module if module_device(module).type == "cpu" else _cpu_copy(module)
            export_for_forwards(cpu_copy, shape, base)
        path = base
        if int8:
            path = folder / f"{key[0][:32]}-{'x'.join(map(str, shape))}-e{EXPORT_VERSION}.int8.onnx"
            if not path.is_file():
                quantize_int8(base, path)
        _SESSIONS[key] = _session(path, providers)
    return OnnxForward(_SESSIONS[key], name)


def _cpu_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).cpu().float()


def make_forward(
    module: nn.Module,
    shape: tuple[int, int, int],
    backend: str = "torch",
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    providers=("CPUExecutionProvider",),
    fold: bool = True,
):
    """The forward backend ``backend`` (one of :data:`BACKENDS`) for ``module``.

    A module that wraps an ONNX Runtime encoder always runs through its session ("torch" on it
    means "whatever the module does", i.e. ONNX Runtime too). ``fold``: see :class:`TorchForward`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"forward backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "torch":
        return TorchForward(module, device if device is not None else module_device(module), precision, channels_last, fold)
    if precision != "fp32":
        raise ConfigError(f"the {backend} backend runs the exported fp32 graph; precision {precision!r} applies to torch only")
    try:
        return onnx_forward(module, shape, int8=backend == "onnx-int8", providers=providers)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an encoder the exporter cannot trace
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise ConfigError(f"cannot run this encoder through ONNX Runtime ({first}); use backend 'torch'") from None


__all__ = ["BACKENDS", "BACKEND_CHOICES", "OnnxForward", "TorchForward", "bf16_copy", "make_forward", "module_device", "native_bf16", "resolve_backend"]
