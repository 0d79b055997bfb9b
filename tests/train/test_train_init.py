"""``train --init``: self-supervised training continued from a user's pretrained weights."""

from __future__ import annotations

import pytest
import torch

from medcbir.cli.main import main
from medcbir.device import Device
from medcbir.encoders.runtime import load_encoder_module, open_encoder
from medcbir.train.dataset import load_hu_dataset
from medcbir.train.methods import build_method
from medcbir.train.trainer import TrainConfig, seed_everything, train
from medcbir.train.views import BatchAugment, make_views, parse_views
from tests.conftest import SMALL_HEADS

SEED, CROP_SCALE, ITEMS = 3, 0.5, 80


def fresh_first_loss(module, archive, cache) -> float:
    """The SimSiam loss of the first batch, computed here from a freshly loaded module: the same
    seed, batch order, views and augmentation draws as the trainer's first step."""
    seed_everything(SEED)
    method = build_method("simsiam", module.backbone, module.dim, **SMALL_HEADS).train()
    augment = BatchAugment(module.preprocessing.size, scale=(CROP_SCALE, 1.0), rotation=0.0)
    data = load_hu_dataset(archive, module.preprocessing, cache, workers=1, progress=False)
    ranges = [data.ranges(v) for v in parse_views(None, module.preprocessing.windows)[:2]]
    idx = torch.arange(ITEMS)[torch.randperm(ITEMS, generator=torch.Generator().manual_seed(SEED * 100_003))]
    views = make_views(data.pixels(idx), [r[idx] for r in ranges], augment, data.inverted[idx])
    return float(method([v.contiguous(memory_format=torch.channels_last) for v in views]).detach())


@pytest.mark.parametrize("name", ["hf-resnet", "densenet"])
def test_the_first_step_loss_is_a_forward_of_the_given_weights(byo_models, phantom_archive, tmp_path, name):
    spec = byo_models[name]["encoder"]
    cache = tmp_path / "hu.h5"
    summary = train(TrainConfig(archive=phantom_archive, out=tmp_path / "adapted.pt", cache=cache, method="simsiam", epochs=1,
                                batch_size=ITEMS, method_options=SMALL_HEADS, seed=SEED, crop_scale=CROP_SCALE, device=Device.cpu(),
                                progress=False, workers=1, init=spec))
    assert summary.steps == 1  # the epoch's loss is its first step's
    assert summary.history[0]["loss"] == pytest.approx(fresh_first_loss(load_encoder_module(spec), phantom_archive, cache), abs=1e-5)

    other = load_encoder_module(spec)  # the same network from other weights gives another first loss
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * (float(p.std()) if p.numel() > 1 else 0.1))
    assert abs(summary.history[0]["loss"] - fresh_first_loss(other, phantom_archive, cache)) > 1e-4

    adapted = open_encoder(tmp_path / "adapted.pt", device=Device.cpu())  # a checkpoint of the user's model, trained
    start = open_encoder(spec, device=Device.cpu())
    assert adapted.spec["kind"] == start.spec["kind"] and adapted.dim == start.dim
    assert adapted.fingerprint == summary.fingerprint != start.fingerprint


def test_a_module_given_in_memory_is_copied_not_trained_in_place(byo_models, phantom_archive, tmp_path):
    from medcbir.encoders.checkpoint import read_checkpoint

    module = load_encoder_module(byo_models["densenet"]["encoder"])
    before = module.refresh_fingerprint()
    summary = train(TrainConfig(archive=phantom_archive, out=tmp_path / "adapted.pt", method="simsiam", epochs=1, batch_size=ITEMS,
                                method_options=SMALL_HEADS, seed=SEED, device=Device.cpu(), progress=False, workers=1, init=module))
    assert module.refresh_fingerprint() == before != summary.fingerprint
    assert read_checkpoint(tmp_path / "adapted.pt")["config"]["init"] == before


def test_train_init_through_the_cli(byo_models, phantom_archive, tmp_path, capsys):
    out = tmp_path / "vit-adapted.pt"
    code = main(["train", str(phantom_archive), "--init", byo_models["hf-vit"]["encoder"], "--method", "simclr", "--epochs", "1",
                 "--batch-size", "40", "--out", str(out), "--workers", "1", "--quiet", "--method-option", "proj_dim=16",
                 "--position-delta", "0"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert f"trained simclr (from {byo_models['hf-vit']['encoder']})" in text
    assert open_encoder(out).spec["output"] == "cls"
    code = main(["train", str(phantom_archive), "--init", byo_models["onnx"]["encoder"], "--epochs", "1", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "ONNX model" in err and "no torch module" in err
