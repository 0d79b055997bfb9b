"""A simulated CUDA device for the CPU-only test machine (this is a GPU stand-in, i.e. a mock).

There is no GPU here, so tests of the device plumbing run under :class:`SimulatedCuda`, a torch
function mode that enforces the two CUDA rules the explain stage broke:

1. an operation mixing a CUDA tensor with a (non-scalar) CPU tensor raises
   ``Expected all tensors to be on the same device`` (indexing a CUDA tensor with CPU indices is
   allowed, as in CUDA);
2. ``.numpy()`` on a CUDA tensor raises ``can't convert cuda:0 device type tensor to numpy``.

``x.to("cuda")`` / ``x.cuda()`` / ``x.to(torch.device("cuda"))`` tag the tensor as living on the
simulated GPU (data stays in host memory), ``.device`` of a tagged tensor reports ``cuda:0``,
``.cpu()`` / ``.to("cpu")`` untag it, and the results of operations on tagged tensors are tagged.
:class:`CudaOnlyEncoder` is an encoder "on the GPU": like a CUDA module it raises when given a CPU
input and returns CUDA outputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map


class OnSimulatedGpu(torch.Tensor):
    """A tensor the simulation considers to live on cuda:0."""


def _is_gpu(t) -> bool:
    return isinstance(t, OnSimulatedGpu)


def _plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def _gpu(t):
    return t.as_subclass(OnSimulatedGpu) if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) else t


def _target_device(args, kwargs):
    for a in list(args[1:]) + [kwargs.get("device")]:
        if isinstance(a, (str, torch.device)):
            return torch.device(a).type
    return None


class SimulatedCuda(TorchFunctionMode):
    """Enforce CUDA's device rules on tagged tensors (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") == "device" and _is_gpu(args[0]):
            return torch.device("cuda", 0)
        if name == "numpy" and _is_gpu(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")
        if name == "cpu":
            return _plain(func(*tree_map(_plain, args), **kwargs))
        if name == "cuda":
            return _gpu(func(*tree_map(_plain, args), **kwargs).cpu())
        if name == "to":
            target = _target_device(args, kwargs)
            clean = [a for a in args if not isinstance(a, (str, torch.device))]
            kw = {k: v for k, v in kwargs.items() if k != "device"}
            out = func(*tree_map(_plain, clean), **kw)
            if target == "cuda" or (target is None and _is_gpu(args[0])):
                return _gpu(out)
            return _plain(out)
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cuda":
            kw = {**kwargs, "device": "cpu"}
            return tree_map(_gpu, func(*args, **kw))
        checked = args[:1] if name == "__getitem__" else (args, kwargs)  # CUDA accepts CPU index tensors
        tensors = [t for t in tree_flatten(checked)[0] if isinstance(t, torch.Tensor)]
        on_gpu = any(_is_gpu(t) for t in tensors)
        on_cpu = any(not _is_gpu(t) and t.dim() > 0 and not isinstance(t, nn.Parameter) for t in tensors)
        if on_gpu and on_cpu:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! ({name})")
        out = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        return tree_map(_gpu, out) if on_gpu else out


class CudaOnlyEncoder(nn.Module):
    """An encoder whose weights are on the simulated GPU: CPU inputs raise, outputs are on the GPU."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_gpu(x):
            raise RuntimeError("Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same")
        self.calls += 1
        return _gpu(self.inner(_plain(x)))
