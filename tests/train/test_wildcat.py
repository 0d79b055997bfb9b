"""The WILDCAT head: its pooling against the formula, fine-tuning (trains, resumes bit for bit), ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medcbir.cli.main import main
from medcbir.device import Device
from medcbir.errors import ConfigError
from medcbir.encoders.checkpoint import read_checkpoint, save_checkpoint
from medcbir.encoders.module import new_encoder_module
from medcbir.encoders.runtime import load_encoder_module, open_encoder
from medcbir.encoders.preprocessing import default_preprocessing
from medcbir.train.finetune import FinetuneConfig, finetune
from medcbir.encoders.wildcat import predict, region_count, wildcat_pool, WildcatHead

SIZE = 64


# --------------------------------------------------------------------------- the pooling
def _oracle(values: np.ndarray, k_plus: int, k_minus: int, alpha: float) -> float:
    """The WILDCAT score written out: mean of the k+ largest + α · mean of the k− smallest."""
    ordered = sorted(values.ravel().tolist())
    top = ordered[::-1][:k_plus]
    score = sum(top) / len(top)
    if k_minus:
        bottom = ordered[:k_minus]
        score += alpha * sum(bottom) / len(bottom)
    return score


def test_pooling_of_a_hand_made_map_is_the_formula():
    m = torch.tensor([[[[3.0, -1.0, 0.5], [2.0, 7.0, -4.0], [1.0, 0.0, -2.0]]]])
    # top 2 = 7, 3 → 5; bottom 3 = −4, −2, −1 → −7/3; α = 0.6
    assert wildcat_pool(m, k_plus=2, k_minus=3, alpha=0.6).item() == pytest.approx(5.0 + 0.6 * (-7.0 / 3.0))
    # k+ = 1 and no negative evidence: the max; k+ = all: the mean
    assert wildcat_pool(m, k_plus=1, k_minus=0, alpha=0.6).item() == pytest.approx(7.0)
    assert wildcat_pool(m, k_plus=9, k_minus=0, alpha=1.0).item() == pytest.approx(float(m.mean()))
    # α = 0 drops the bottom term whatever k− is
    assert wildcat_pool(m, k_plus=2, k_minus=3, alpha=0.0).item() == pytest.approx(5.0)
    # fractions of the 9 regions: round(0.3·9) = 3 top, round(0.2·9) = 2 bottom
    assert region_count(0.3, 9) == 3 and region_count(0.2, 9) == 2 and region_count(20, 9) == 9 and region_count(0, 9) == 0
    assert wildcat_pool(m, k_plus=0.3, k_minus=0.2, alpha=0.7).item() == pytest.approx((7 + 3 + 2) / 3 + 0.7 * (-4 - 2) / 2)


def test_pooling_with_ties_and_per_class_maps_matches_the_oracle():
    # ties straddling the k boundaries: any choice among equal values gives the same mean
    tied = torch.tensor([[[[5.0, 5.0, 5.0], [1.0, 1.0, 1.0], [-2.0, -2.0, 9.0]]]])
    assert wildcat_pool(tied, k_plus=2, k_minus=1, alpha=0.5).item() == pytest.approx((9 + 5) / 2 + 0.5 * -2)
    assert wildcat_pool(tied, k_plus=3, k_minus=3, alpha=0.5).item() == pytest.approx((9 + 5 + 5) / 3 + 0.5 * (-2 - 2 + 1) / 3)
    flat = torch.full((1, 1, 4, 4), 2.5)
    assert wildcat_pool(flat, k_plus=3, k_minus=5, alpha=0.7).item() == pytest.approx(2.5 * 1.7)
    # a batch of random maps with many repeated values, every class and image against the oracle
    rng = np.random.default_rng(0)
    maps = rng.integers(-3, 4, size=(3, 4, 5, 5)).astype(np.float32)
    got = wildcat_pool(torch.from_numpy(maps), k_plus=4, k_minus=6, alpha=0.7).numpy()
    want = np.array([[_oracle(maps[b, c], 4, 6, 0.7) for c in range(4)] for b in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_head_averages_the_maps_of_each_class_and_refuses_bad_options():
    torch.manual_seed(0)
    head = WildcatHead(6, ["a", "b", "c"], maps_per_class=4, k_plus=2, k_minus=1, alpha=0.7)
    features = torch.randn(2, 6, 3, 3)
    scores, maps = head(features)
    z = torch.einsum("bkhw,ok->bohw", features, head.transfer.weight[:, :, 0, 0]) + head.transfer.bias[None, :, None, None]
    np.testing.assert_allclose(maps.detach().numpy(), z.view(2, 3, 4, 3, 3).mean(2).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.detach().numpy(), wildcat_pool(maps, 2, 1, 0.7).detach().numpy(), atol=1e-6)
    assert head.class_index("b") == 1 and head.class_index("2") == 2
    with pytest.raises(ConfigError, match="unknown WILDCAT class"):
        head.class_index("d")
    with pytest.raises(ConfigError, match="--k-plus"):
        WildcatHead(6, ["a", "b"], k_plus=1.5)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        WildcatHead(6, ["a"])


# --------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("wildcat-base") / "base.pt"
    save_checkpoint(path, new_encoder_module("resnet18", default_preprocessing(SIZE), seed=0))
    return path


def _config(base, archive, out, cache, **kw):
    options = dict(encoder=base, archive=archive, labels=archive / "labels.csv", out=out, cache=cache, epochs=20, batch_size=8, lr=0.2,
                   seed=3, device=Device.cpu(), progress=False, workers=1)
    options.update(kw)
    return FinetuneConfig(**options)


@pytest.fixture(scope="module")
def tuned(base, phantom_archive, tmp_path_factory):
    """A head fine-tuned on the frozen random backbone: 5 anatomical levels, 3 patients trained, 1 held out."""
    root = tmp_path_factory.mktemp("wildcat-tuned")
    summary = finetune(_config(base, phantom_archive, root / "wildcat.pt", root / "hu.h5"))
    return {"checkpoint": root / "wildcat.pt", "summary": summary, "cache": root / "hu.h5"}


def test_finetune_trains_the_head_and_keeps_the_encoder(tuned, base):
    summary = tuned["summary"]
    losses = [row["loss"] for row in summary.history]
    assert len(losses) == 20 and summary.classes == ["kidney", "liver-dome", "liver-kidney", "pelvis", "thorax"]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert summary.train_accuracy > 0.5 and summary.n_train == 60 and summary.n_heldout == 20
    # the backbone was frozen: the same fingerprint, the same embeddings; the head rides along
    encoder = load_encoder_module(tuned["checkpoint"])
    assert encoder.fingerprint == summary.fingerprint == summary.base_fingerprint == load_encoder_module(base).fingerprint
    x = np.random.default_rng(1).random((3, 1, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_array_equal(open_encoder(tuned["checkpoint"], Device.cpu()).embed(x), open_encoder(base, Device.cpu()).embed(x))
    assert encoder.wildcat.classes == summary.classes and float(encoder.wildcat.prototypes.norm(dim=1).min()) == pytest.approx(1.0)
    scores, maps = predict(encoder, torch.from_numpy(x))
    assert scores.shape == (3, 5) and maps.shape == (3, 5, 2, 2)
    record = read_checkpoint(tuned["checkpoint"])
    assert record["method"] == "wildcat-finetune" and record["wildcat"]["config"]["maps_per_class"] == 8


@pytest.mark.parametrize("train_backbone", [False, True], ids=["head", "head+backbone"])
def test_interrupted_then_resumed_finetune_equals_an_uninterrupted_one(train_backbone, base, phantom_archive, tuned, tmp_path):
    kw = dict(epochs=2, labels=phantom_archive / "labels-liver.csv", train_backbone=train_backbone)
    whole = finetune(_config(base, phantom_archive, tmp_path / "whole.pt", tuned["cache"], **kw))

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(_config(base, phantom_archive, tmp_path / "split.pt", tuned["cache"], **kw), on_epoch_end=interrupt)
    assert read_checkpoint(tmp_path / "split.pt")["epoch"] == 1
    resumed = finetune(_config(base, phantom_archive, tmp_path / "split.pt", tuned["cache"], resume=True, **kw))
    assert resumed.epochs_run == 1 and whole.epochs_run == 2

    a, b = read_checkpoint(tmp_path / "whole.pt"), read_checkpoint(tmp_path / "split.pt")
    assert a["fingerprint"] == b["fingerprint"] == whole.fingerprint == resumed.fingerprint
    assert (a["fingerprint"] != whole.base_fingerprint) == train_backbone
    for part in (a["state_dict"], a["wildcat"]["state_dict"]):
        other = b["state_dict"] if part is a["state_dict"] else b["wildcat"]["state_dict"]
        assert part.keys() == other.keys()
        for key in part:
            assert torch.equal(part[key], other[key]), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]] == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]

    # a changed option refuses to resume
    with pytest.raises(ConfigError, match="cannot resume"):
        finetune(_config(base, phantom_archive, tmp_path / "split.pt", tuned["cache"], resume=True, **{**kw, "alpha": 0.3}))


def test_onnx_export_carries_the_head_with_parity(tuned, tmp_path):
    import onnxruntime as ort

    from medcbir.train.onnx_export import export_onnx

    out = tmp_path / "wildcat.onnx"
    report = export_onnx(tuned["checkpoint"], out)
    assert report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embeddings", "class_scores", "class_maps"]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["medcbir.wildcat"])["classes"] == tuned["summary"].classes
    encoder = load_encoder_module(tuned["checkpoint"])
    x = np.random.default_rng(2).random((5, 1, SIZE, SIZE), dtype=np.float32)  # another batch size than the export's
    emb, scores, maps = session.run(None, {"images": x})
    want_scores, want_maps = predict(encoder, torch.from_numpy(x))
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(maps, want_maps.numpy(), atol=1e-4)
    # still an encoder for index and search: the same embeddings through open_encoder
    np.testing.assert_allclose(open_encoder(out, Device.cpu()).embed(x), open_encoder(tuned["checkpoint"], Device.cpu()).embed(x), atol=1e-5)


def test_finetune_from_the_command_line_and_its_errors(base, phantom_archive, tuned, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    args = ["finetune", str(base), str(phantom_archive), "--labels", str(phantom_archive / "labels-liver.csv"), "--head", "wildcat",
            "--out", str(out), "--k-plus", "2", "--k-minus", "0.25", "--alpha", "0.5", "--maps-per-class", "3", "--epochs", "2",
            "--batch-size", "8", "--cache", str(tuned["cache"]), "--workers", "1", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fine-tuned a wildcat head (2 classes: liver, no-liver) for 2 epoch(s) of 2 on 30 labelled images" in text
    head = load_encoder_module(out).wildcat
    assert (head.k_plus, head.k_minus, head.alpha, head.maps_per_class) == (2.0, 0.25, 0.5, 3)

    one_class = tmp_path / "one.csv"
    lines = (phantom_archive / "labels-liver.csv").read_text().splitlines()
    one_class.write_text("\n".join([lines[0]] + [line for line in lines[1:] if line.endswith(",liver")]) + "\n")
    for bad, message in (
        (["--labels", str(one_class)], "error: " + str(one_class) + " has one class (liver)"),
        (["--k-plus", "1.5"], "error: --k-plus = 1.5: give a fraction"),
        (["--resume", "--alpha", "0.9"], "error: cannot resume"),
    ):
        assert main(args + bad) == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
