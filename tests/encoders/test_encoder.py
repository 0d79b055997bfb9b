"""Encoders: default encoder, checkpoints, fingerprints, open_encoder on torch and ONNX."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from medcbir.device import Device
from medcbir.errors import ConfigError, EncoderMismatch
from medcbir.imaging import Preprocessing
from medcbir.encoders.checkpoint import save_checkpoint
from medcbir.encoders.compat import check_compatible
from medcbir.encoders.module import new_encoder_module
from medcbir.encoders.names import DEFAULT_ENCODER
from medcbir.encoders.runtime import load_encoder_module, open_encoder


def _oracle_fingerprint(arch: dict, preprocessing: dict, state: dict) -> str:
    """The documented recipe, written out independently of compute_fingerprint."""
    h = hashlib.sha256(json.dumps({"arch": arch, "preprocessing": preprocessing}, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(state):
        t = state[key].contiguous()
        h.update(key.encode() + str(t.dtype).encode() + json.dumps(list(t.shape), separators=(",", ":")).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_previous_default_is_deterministic_cached_and_normalised(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCBIR_CACHE", str(tmp_path / "a"))
    first = load_encoder_module("default-v2")
    assert (tmp_path / "a" / "default-encoder-v2.pt").is_file()
    monkeypatch.setenv("MEDCBIR_CACHE", str(tmp_path / "b"))
    rng_before = torch.get_rng_state()
    second = load_encoder_module("default-v2")
    assert torch.equal(rng_before, torch.get_rng_state()), "creating the default must not move the global RNG"
    assert first.fingerprint == second.fingerprint
    for (k, a), (_, b) in zip(first.backbone.state_dict().items(), second.backbone.state_dict().items()):
        assert torch.equal(a, b), k
    from medcbir.encoders.preprocessing import default_preprocessing

    assert first.preprocessing == default_preprocessing()
    # CT through the liver window, everything else normalised: never a CT window on MR.
    assert first.preprocessing.policies[0].window_for("CT") == "ct-liver-wide"
    assert first.preprocessing.policies[0].window_for("MR") == "robust"
    assert first.arch["backbone"] == "resnet18" and first.arch["in_channels"] == 1
    assert first.dim == first.arch["dim"]
    assert first.feature_layer in (getattr(first.backbone, "layer4", None), getattr(getattr(first.backbone, "net", None), "layer4", None))
    assert first.fingerprint == _oracle_fingerprint(first.arch, first.preprocessing.to_dict(), first.backbone.state_dict())
    # A cached file is read back as is.
    cached = load_encoder_module("default-v2")
    assert cached.fingerprint == second.fingerprint
    x = torch.rand(3, 1, 224, 224)
    with torch.no_grad():
        y = first(x)
    assert y.shape == (3, first.dim)
    np.testing.assert_allclose(y.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_default_is_the_classic_descriptor_with_the_default_preprocessing():
    from medcbir.encoders.preprocessing import default_preprocessing

    enc = load_encoder_module(DEFAULT_ENCODER)
    assert enc.arch["backbone"] == "classic" and enc.preprocessing == default_preprocessing()
    assert enc.preprocessing.policies[0].window_for("MR") == "robust"
    assert enc.fingerprint == load_encoder_module("classic").fingerprint
    assert enc.fingerprint != load_encoder_module("default-v2").fingerprint


def test_an_index_built_with_an_earlier_default_opens_with_it():
    from medcbir.encoders.runtime import open_for_index

    for earlier in ("default-v2", "default-v1"):
        fingerprint = load_encoder_module(earlier).fingerprint
        assert open_for_index("default", fingerprint, Device.cpu()).fingerprint == fingerprint
    today = load_encoder_module("default").fingerprint
    assert open_for_index("default", today, Device.cpu()).fingerprint == today


def test_fingerprint_covers_weights_and_preprocessing():
    a = new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), 64), seed=1)
    b = new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), 128), seed=1)
    c = new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), 64), seed=2)
    d = new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), 64), seed=1)
    assert a.fingerprint == d.fingerprint
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3


def test_default_checkpoint_and_onnx_agree(exported, tmp_path, monkeypatch):
    """open_encoder on a checkpoint and its ONNX export: same fingerprint, embeddings within 1e-4."""
    dev = Device.cpu()
    torch_enc = open_encoder(exported["checkpoint"], dev)
    onnx_enc = open_encoder(exported["onnx"], dev)
    assert (torch_enc.kind, onnx_enc.kind) == ("torch", "onnx")
    assert onnx_enc.module is None and torch_enc.module is not None
    assert torch_enc.fingerprint == onnx_enc.fingerprint == exported["summary"].fingerprint
    from medcbir.encoders.preprocessing import default_preprocessing

    assert torch_enc.preprocessing == onnx_enc.preprocessing == default_preprocessing(64)
    assert torch_enc.dim == onnx_enc.dim == 512
    images = np.random.default_rng(0).random((5, 1, 64, 64), dtype=np.float32)
    a, b = torch_enc.embed(images, batch_size=2), onnx_enc.embed(images, batch_size=3)
    assert np.abs(a - b).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # The torch module returned by load_encoder_module gives the same vectors.
    with torch.no_grad():
        ref = load_encoder_module(exported["checkpoint"])(torch.from_numpy(images)).numpy()
    assert np.abs(a - ref).max() < 1e-5


def test_default_through_open_encoder_and_a_saved_copy(tmp_path):
    dev = Device.cpu()
    default = open_encoder("default", dev)
    assert default.source == "default" and default.kind == "torch"
    copy = save_checkpoint(tmp_path / "copy.pt", load_encoder_module("default"))
    reopened = open_encoder(copy, dev)
    assert reopened.fingerprint == default.fingerprint and reopened.source == str(copy)
    x = np.random.default_rng(1).random((2, 1, 224, 224), dtype=np.float32)
    assert np.abs(default.embed(x) - reopened.embed(x)).max() < 1e-6


def test_bad_files_are_one_line_config_errors(tmp_path, trained):
    with pytest.raises(ConfigError, match="not found"):
        open_encoder(tmp_path / "missing.pt", Device.cpu())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="not a readable encoder checkpoint"):
        load_encoder_module(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match="not a medcbir encoder checkpoint"):
        load_encoder_module(other)
    fake_onnx = tmp_path / "fake.onnx"
    fake_onnx.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        open_encoder(fake_onnx, Device.cpu())
    # Weights changed behind the recorded fingerprint: refused as corrupt.
    record = torch.load(trained["checkpoint"], weights_only=True)
    first_conv = next(k for k in record["state_dict"] if k.endswith("conv1.weight"))
    record["state_dict"][first_conv] += 1e-3
    tampered = tmp_path / "tampered.pt"
    torch.save(record, tampered)
    with pytest.raises(ConfigError, match="corrupt"):
        load_encoder_module(tampered)


def test_check_compatible_names_both_encoders(trained):
    enc = open_encoder(trained["checkpoint"], Device.cpu())
    check_compatible(enc, enc.fingerprint, enc.preprocessing.to_dict())  # same: no error
    other = new_encoder_module("resnet18", Preprocessing(("ct-lung",), 128), seed=3)
    with pytest.raises(EncoderMismatch) as info:
        check_compatible(enc, other.fingerprint, other.preprocessing.to_dict())
    message = str(info.value)
    assert message.startswith(
        f"index built with encoder {other.fingerprint[:12]} (ct-lung, 128 px); "
        f"this encoder is {enc.fingerprint[:12]} (CT=ct-liver-wide,*=robust, 64 px, body crop at 3.5 mm/px)"
    )
    assert "re-index" in message  # and says what to do about it


def test_embed_refuses_images_of_another_preprocessing(trained):
    enc = open_encoder(trained["checkpoint"], Device.cpu())
    with pytest.raises(EncoderMismatch, match="expects B×1×64×64"):
        enc.embed(np.zeros((2, 1, 128, 128), dtype=np.float32))
    assert enc.embed(np.zeros((1, 64, 64), dtype=np.float32)).shape == (1, 512)


def test_encoder_source_is_absolute_so_index_manifests_work_from_any_folder(tmp_path, monkeypatch):
    """An index records its encoder's source; a relative path would break `Engine.open` elsewhere."""
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module
    from medcbir.encoders.runtime import open_encoder

    monkeypatch.chdir(tmp_path)
    save_checkpoint("enc.pt", new_encoder_module(preprocessing=Preprocessing(size=32)))
    encoder = open_encoder("enc.pt")
    assert encoder.source == str(tmp_path / "enc.pt")
