"""The training precision is the device's decision, on every device.

There is no GPU here: the CUDA cases check the decision functions with a CUDA ``Device`` value
(no CUDA tensor is made), the CPU cases run real steps.
"""

from __future__ import annotations

import torch

from medcbir.device import Device
from medcbir.encoders.backbones import build_backbone
from medcbir.train.methods import build_method
from medcbir.train.trainer import TrainConfig, make_optimizer, needs_grad_scaler, train_step


def _step_dtypes(precision: str) -> set:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 1)
    method = build_method("simsiam", backbone, 512, proj_dim=64, pred_dim=16)
    seen = set()
    backbone.conv1.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    device = Device(torch="cpu", precision=precision)
    config = TrainConfig(archive=".", out="x.pt", batch_size=4)
    optimizer, scheduler, scaler = make_optimizer(method, config, 2, device)
    views = [torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)]
    loss = train_step(method, views, optimizer, scheduler, scaler, device)
    assert torch.isfinite(torch.tensor(loss))
    return seen


def test_fp32_trains_in_fp32_and_bf16_autocasts_on_cpu():
    assert _step_dtypes("fp32") == {torch.float32}
    assert _step_dtypes("bf16") == {torch.bfloat16}


def test_grad_scaler_only_for_fp16_on_cuda():
    assert not needs_grad_scaler(Device(torch="cuda", precision="fp32"))  # was: always fp16 + scaler on CUDA
    assert not needs_grad_scaler(Device(torch="cuda", precision="bf16"))
    assert needs_grad_scaler(Device(torch="cuda", precision="fp16"))
    assert not needs_grad_scaler(Device(torch="cpu", precision="bf16"))
