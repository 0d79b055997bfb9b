"""The one device decision: where tensors, FAISS and ONNX Runtime run, and at what precision.

It is made once (``Device.auto()``, or from the user's ``--device``/``--precision``) and passed
down to every stage; nothing else in medcbir asks whether CUDA is present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from medcbir.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


@lru_cache(maxsize=1)
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


@lru_cache(maxsize=1)
def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a hard dependency
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


@lru_cache(maxsize=1)
def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        return ("CPUExecutionProvider",)
    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return tuple(wanted or ["CPUExecutionProvider"])


#: (CPU wheel, GPU wheel) pairs that install the same import name and must not coexist.
WHEEL_PAIRS = (("faiss-cpu", "faiss-gpu"), ("onnxruntime", "onnxruntime-gpu"))


def wheel_conflicts() -> list[str]:
    """CPU/GPU wheel pairs installed together (they overwrite each other's files)."""
    from importlib import metadata

    def installed(name: str) -> bool:
        try:
            metadata.version(name)
            return True
        except metadata.PackageNotFoundError:
            return False

    return [f"{cpu} and {gpu}" for cpu, gpu in WHEEL_PAIRS if installed(cpu) and installed(gpu)]


@dataclass(frozen=True)
class Device:
    """Where and how to compute.

    Args:
        torch: torch device string, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for encoder forwards.
        faiss_gpu: run FAISS searches on GPU indexes (same results as CPU).
        ort_providers: ONNX Runtime execution providers, in order of preference.
    """

    torch: str = "cpu"
    precision: str = "fp32"
    faiss_gpu: bool = False
    ort_providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    @classmethod
    def auto(cls, prefer: str | None = None, precision: str = "fp32") -> "Device":
        """Pick CUDA when present (unless ``prefer="cpu"``), CPU otherwise."""
        use_cuda = prefer != "cpu" and _cuda_available()
        if prefer == "cuda" and not use_cuda:
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
        # ONNX Runtime's CUDA provider is whatever ONNX Runtime itself offers (onnxruntime-gpu),
        # independent of whether torch was built with CUDA.
        providers = _ort_providers() if prefer != "cpu" else ("CPUExecutionProvider",)
        return cls(
            torch="cuda" if use_cuda else "cpu",
            precision=precision,
            faiss_gpu=prefer != "cpu" and _faiss_gpus() > 0,
            ort_providers=tuple(providers),
        )

    @classmethod
    def cpu(cls) -> "Device":
        return cls()

    def autocast(self):
        """A torch autocast context for this device's precision (a no-op for fp32)."""
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.torch, dtype=dtype)
