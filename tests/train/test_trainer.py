"""The trainer: bit-for-bit resume, checkpoints, the held-out retrieval monitor and its log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medcbir.device import Device
from medcbir.errors import ConfigError
from medcbir.encoders.checkpoint import read_checkpoint, save_checkpoint
from medcbir.encoders.runtime import load_encoder_module
from medcbir.train.monitor import knn_retrieval
from medcbir.train.trainer import TrainConfig, train

from tests.conftest import SMALL_HEADS


def _config(archive, out, cache, method, **kw):
    options = {"simsiam": SMALL_HEADS, "moco": {"proj_dim": 32, "queue_size": 64}, "seqsort": {"length": 3, "hidden": 32}, "simclr": {"proj_dim": 32}}[method]
    base = dict(
        archive=archive,
        out=out,
        cache=cache,
        method=method,
        epochs=2,
        batch_size=16,
        size=64,
        views="hu-narrow,hu-wide",
        labels=archive / "labels.csv",  # 3 of 4 patients trained on: 3 steps per epoch
        method_options=options,
        seed=5,
        device=Device.cpu(),
        progress=False,
        workers=1,
    )
    base.update(kw)
    return TrainConfig(**base)


# SimSiam only, to stay in the time budget; MoCo's extra state (key encoder, queue) lives in
# the same "heads" dict and is restored by the same code path.
# seqsort (runs of slices) and the archive recipe (window jitter, neighbour-slice partners drawn
# from a per-step generator) take their own data paths, so they are resumed here too.
@pytest.mark.parametrize(
    "method, extra",
    [("simsiam", {}), ("seqsort", {"views": None}), ("simsiam", {"augment": "archive", "neighbour_mm": 12.0}),
     ("simclr", {"views": None, "augment": "archive", "position_delta": 0.05, "position_p": 1.0})],
    ids=["simsiam", "seqsort", "simsiam-archive-neighbours", "simclr-positional"],
)
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(method, extra, phantom_archive, tmp_path):
    cache = tmp_path / "hu.h5"
    whole = train(_config(phantom_archive, tmp_path / "whole.pt", cache, method, **extra))

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(phantom_archive, tmp_path / "split.pt", cache, method, **extra), on_epoch_end=interrupt)
    assert read_checkpoint(tmp_path / "split.pt")["epoch"] == 1
    resumed = train(_config(phantom_archive, tmp_path / "split.pt", cache, method, resume=True, **extra))
    assert resumed.epochs_run == 1 and whole.epochs_run == 2

    a, b = read_checkpoint(tmp_path / "whole.pt"), read_checkpoint(tmp_path / "split.pt")
    assert a["fingerprint"] == b["fingerprint"] == whole.fingerprint == resumed.fingerprint
    for part in ("state_dict", "heads"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}/{key}"
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert [r["epoch"] for r in a["history"]] == [r["epoch"] for r in b["history"]] == [0, 1, 2]
    for row_a, row_b in zip(a["history"], b["history"]):
        for key in ("loss", "map_at_k", "knn_accuracy", "lr"):
            assert row_a.get(key) == row_b.get(key), key
    if method == "moco":
        assert torch.equal(a["heads"]["queue"], b["heads"]["queue"])


def test_checkpoint_is_an_encoder_with_test_time_preprocessing_and_a_log(trained):
    summary = trained["summary"]
    record = read_checkpoint(trained["checkpoint"])
    assert record["method"] == "simsiam" and record["epoch"] == 1
    assert record["preprocessing"] == {"windows": ["CT=ct-liver-wide,*=robust"], "size": 64, "crop": "body", "margin": 0.05, "spacing": 3.5}
    assert record["config"]["views"] == "hu-narrow,hu-wide"
    assert set(record["rng"]) >= {"torch", "numpy", "python"}
    encoder = load_encoder_module(trained["checkpoint"])
    assert encoder.fingerprint == summary.fingerprint
    rows = [json.loads(line) for line in open(summary.log)]
    assert rows == summary.history and [r["epoch"] for r in rows] == [0, 1]
    assert "loss" not in rows[0] and rows[1]["loss"] == summary.final_loss  # epoch 0: the random start
    for row in rows:
        assert row["k"] == 5 and 0.0 <= row["map_at_k"] <= 1.0 and row["n_queries"] == 20  # one held-out patient
    assert open(summary.plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # 0.05·batch/256, cosine-annealed to zero by the last step of the last epoch.
    assert record["scheduler"]["base_lrs"] == [pytest.approx(0.05 * 16 / 256)]
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_refuses_a_changed_run_or_an_exported_encoder(trained, phantom_archive, tmp_path):
    config = _config(phantom_archive, trained["checkpoint"], None, "simsiam", epochs=3, resume=True)
    with pytest.raises(ConfigError, match="the run changed .*epochs"):
        train(config)
    plain = save_checkpoint(tmp_path / "plain.pt", load_encoder_module(trained["checkpoint"]))
    with pytest.raises(ConfigError, match="no training state"):
        train(_config(phantom_archive, plain, tmp_path / "hu.h5", "simsiam", resume=True))


def test_bad_options_are_config_errors(phantom_archive, tmp_path):
    for kw, match in [({"epochs": 0}, "epochs"), ({"batch_size": 1}, "batch-size"), ({"views": "hu-narrow"}, "two views")]:
        with pytest.raises(ConfigError, match=match):
            train(_config(phantom_archive, tmp_path / "x.pt", tmp_path / "hu.h5", "simsiam", **kw))


def test_knn_monitor_matches_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(40, 8)).astype(np.float32)
    queries = rng.normal(size=(15, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    bank_labels = rng.choice(["a", "b", "c"], size=40)
    query_labels = rng.choice(["a", "b", "c"], size=15)
    got = knn_retrieval(bank, bank_labels, queries, query_labels, k=5)
    _, idx = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(bank).kneighbors(queries)
    relevant = bank_labels[idx] == query_labels[:, None]
    expected_map = np.mean([np.mean([relevant[q, : j + 1].mean() for j in range(5)]) for q in range(15)])
    votes = []
    for row in bank_labels[idx]:
        labels, counts = np.unique(row, return_counts=True)
        winners = set(labels[counts == counts.max()])
        votes.append(next(label for label in row if label in winners))  # ties: best-ranked label
    assert got["map_at_k"] == pytest.approx(expected_map, abs=1e-12)
    assert got["knn_accuracy"] == pytest.approx(np.mean(np.array(votes) == query_labels))
    assert got["precision_at_k"] == pytest.approx(relevant.mean())


def test_views_as_a_sequence_and_the_summary_line(trained, tmp_path):
    config = TrainConfig(archive=tmp_path, out=tmp_path / "x.pt", views=("hu-narrow", "hu-wide"))
    assert config.record()["views"] == "hu-narrow,hu-wide"
    line = trained["summary"].summary_line()
    assert line.startswith("simsiam: 1 epoch(s) of 1, 48 images")  # 60 slices, 3 full batches and "held-out MAP@5" in line and "random start" in line
