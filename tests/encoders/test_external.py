"""Users' own models as encoders (tests/byo_models.py: every kind, random weights, saved locally).

The embeddings equal a direct forward of the same model on the same preprocessed images; the
fingerprint covers the weights' content (one weight changed → another fingerprint) and not where
the files are; what cannot work is one clear error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcbir.device import Device
from medcbir.encoders.runtime import load_encoder_module, open_encoder
from medcbir.errors import ConfigError
from tests.byo_models import SIZE, changed_copy, reference_vectors

KINDS = ("densenet", "hf-resnet", "hf-vit", "onnx", "torchscript")


def archive_images(archive: Path, preprocessing, n: int = 6) -> np.ndarray:
    """``n`` real items of the phantom, decoded and preprocessed as indexing does."""
    from medcbir.imaging import walk

    images = []
    for _meta, image in walk(archive, preprocessing=preprocessing, workers=1):
        images.append(image)
        if len(images) == n:
            break
    return np.stack(images)


@pytest.mark.parametrize("name", KINDS)
def test_embeddings_equal_a_direct_forward_of_the_model(byo_models, phantom_archive, name):
    entry = byo_models[name]
    encoder = open_encoder(entry["encoder"], device=Device.cpu())
    assert encoder.kind == ("onnx" if name == "onnx" else "torch")
    assert encoder.input_shape == (1, SIZE, SIZE) and encoder.spec["kind"] in ("torch", "huggingface", "onnx", "torchscript")
    images = archive_images(phantom_archive, encoder.preprocessing)
    got = encoder.embed(images)
    want = reference_vectors(entry, torch.from_numpy(images)).numpy()
    assert got.shape == want.shape
    cosine = (got * want).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_hf_dir_reads_the_folder_input_settings(byo_models):
    encoder = open_encoder(byo_models["hf-resnet"]["encoder"], device=Device.cpu())
    spec = encoder.spec
    assert spec["input"]["size"] == SIZE and spec["input"]["channels"] == 3
    assert spec["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and spec["input"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert encoder.source.startswith("hf:/") and encoder.dim == 16


@pytest.mark.parametrize("name", KINDS)
def test_the_fingerprint_covers_the_weights_not_their_place(byo_models, tmp_path, name):
    entry = byo_models[name]
    first = open_encoder(entry["encoder"], device=Device.cpu()).fingerprint
    assert open_encoder(entry["encoder"], device=Device.cpu()).fingerprint == first  # same files, same encoder
    moved = tmp_path / "moved"
    shutil.copytree(entry["folder"], moved)
    arg = entry["encoder"]
    moved_arg = f"hf:{moved}" if arg.startswith("hf:") else str(moved / Path(arg).name)
    assert open_encoder(moved_arg, device=Device.cpu()).fingerprint == first  # a copy elsewhere is the same encoder
    assert open_encoder(changed_copy(entry, name, tmp_path), device=Device.cpu()).fingerprint != first


def test_the_spec_is_in_the_fingerprint(byo_models, tmp_path):
    spec = json.loads(Path(byo_models["hf-vit"]["encoder"]).read_text())
    base = Path(byo_models["hf-vit"]["encoder"]).parent
    fingerprints = set()
    for change in ({}, {"output": "mean-tokens"}, {"windows": "CT=ct-lung,*=robust"}, {"input": {"mean": [0.4], "std": [0.2]}}):
        path = tmp_path / f"spec-{len(fingerprints)}.json"
        path.write_text(json.dumps({**spec, "model": str(base / "hf-vit"), **change}))
        fingerprints.add(open_encoder(str(path), device=Device.cpu()).fingerprint)
    assert len(fingerprints) == 4


@pytest.mark.parametrize("name", ["hf-vit", "hf-resnet", "densenet", "torchscript"])
def test_a_trained_user_encoder_saves_and_loads_as_a_checkpoint(byo_models, tmp_path, name):
    from medcbir.encoders.checkpoint import save_checkpoint

    module = load_encoder_module(byo_models[name]["encoder"])
    with torch.no_grad():
        next(module.backbone.parameters()).view(-1)[:3] += 0.1  # as training would
    before = module.refresh_fingerprint()
    save_checkpoint(tmp_path / "tuned.pt", module, method="simclr")
    loaded = load_encoder_module(tmp_path / "tuned.pt")
    assert loaded.fingerprint == before != open_encoder(byo_models[name]["encoder"]).fingerprint
    assert sorted(loaded.backbone.state_dict()) == sorted(module.backbone.state_dict())
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x))
    assert open_encoder(tmp_path / "tuned.pt").spec == module.spec


def test_a_vit_explains_with_grad_cam_on_its_token_grid(byo_models):
    from medcbir.explain.methods import METHODS

    module = load_encoder_module(byo_models["hf-vit"]["encoder"])
    assert module.backbone.layer_name == "layers.1.layernorm_before"  # the input of the last block
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = module(x)
    for method in ("gradcam", "ablation_cam"):
        heat = METHODS[method](module, x, None)
        assert heat.shape == (2, SIZE, SIZE) and torch.isfinite(heat).all() and float(heat.std()) > 0, method
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain)  # routing the tokens through the grid changes nothing


@pytest.mark.parametrize("name", ["densenet", "hf-resnet"])
def test_a_cnn_feature_layer_is_its_last_spatial_map(byo_models, name):
    from medcbir.explain.methods import METHODS

    module = load_encoder_module(byo_models[name]["encoder"])
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for method in ("gradcam", "guided_gradcam"):
        heat = METHODS[method](module, x, None)
        assert heat.shape == (2, SIZE, SIZE) and float(heat.std()) > 0, method


def test_torchscript_runs_gradient_methods_and_names_them_for_grad_cam(byo_models):
    from medcbir.explain.methods import METHODS

    module = load_encoder_module(byo_models["torchscript"]["encoder"])
    x = torch.rand(2, 1, SIZE, SIZE)
    assert float(METHODS["gradient"](module, x, None).std()) > 0
    with pytest.raises(ConfigError, match="TorchScript.*gradcam.*relax, occlusion, gradient"):
        METHODS["gradcam"](module, x, None)


def _spec_file(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kind": "tensorflow", "model": "x"}, "kind must be one of"),
        ({"kind": "torch", "model": "torch.nn.Identity", "colour": "red"}, "unknown field"),
        ({"kind": "torchscript", "model": "missing.ts"}, "not found .*local files only"),
        ({"kind": "huggingface", "model": "microsoft/rad-dino"}, "hub name.*local folders only"),
        ({"kind": "torch", "model": "torch.nn.Identity", "weights": "nothing.pt"}, "weights .* not found"),
        ({"kind": "torch", "model": "torch.nn.Identity", "input": {"channels": 3}, "windows": ["ct-lung", "ct-bone"]}, "2 window policies"),
        ({"kind": "torch", "model": "torch.nn.Flatten", "kwargs": {"start_dim": 2}}, "not one vector per image; set output to cls or mean-tokens"),
        ({"kind": "torch", "model": "torch.nn.Unflatten", "kwargs": {"dim": 1, "unflattened_size": [1, 1]}}, "not one vector per image"),
        ({"kind": "torch", "model": "torch.nn.Identity", "output": "cls"}, "needs B×N×D tokens"),
        ({"kind": "torch", "model": "torch.nn.Identity", "output": "encoder.layer9"}, "no layer 'encoder.layer9'"),
        ({"kind": "torch", "model": "torch.nn.Conv2d", "kwargs": {"in_channels": 3, "out_channels": 4, "kernel_size": 3}}, "fails on a 2×1×224×224 input"),
    ],
)
def test_what_cannot_work_is_one_clear_error(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        open_encoder(_spec_file(tmp_path, data), device=Device.cpu())


def test_hub_names_and_missing_folders_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="hub name: medcbir loads local folders only"):
        open_encoder("hf:microsoft/rad-dino")
    with pytest.raises(ConfigError, match="no local model folder"):
        open_encoder(f"hf:{tmp_path / 'absent'}")


def test_an_onnx_model_without_sidecar_or_metadata_says_how_to_describe_it(byo_models, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copy(byo_models["onnx"]["encoder"], bare)
    with pytest.raises(ConfigError, match=r"bare\.onnx\.json beside it"):
        open_encoder(bare)
    with pytest.raises(ConfigError, match="no torch module"):
        load_encoder_module(byo_models["onnx"]["encoder"])


def test_timm_kind_is_one_clear_error_without_timm(tmp_path):
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - timm needs torchvision, which medcbir's setup removes
        with pytest.raises(ConfigError, match="timm package, which needs torchvision"):
            open_encoder(_spec_file(tmp_path, {"kind": "timm", "model": "resnet18"}))
    else:
        encoder = open_encoder(_spec_file(tmp_path, {"kind": "timm", "model": "resnet18", "input": {"channels": 3, "size": 64}}))
        assert encoder.dim == 512
