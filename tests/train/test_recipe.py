"""The training recipe's parts: neighbour-slice pairs, slice runs, seqsort, bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcbir.device import Device
from medcbir.train.pairs import draw_partners, neighbour_table, sequences
from medcbir.train.seqsort import SequenceSorting, permutation_classes
from medcbir.train.trainer import TrainConfig, train

from tests.conftest import SMALL_HEADS


def _toy():
    rng = np.random.default_rng(0)
    series = np.array(["a"] * 6 + ["b"] * 5 + ["c"] * 2, dtype=object)
    position = np.concatenate([np.arange(6) * 2.5, rng.permutation(np.arange(5) * 3.0), [np.nan, 1.0]])
    return series, position


def test_neighbour_pairs_come_from_the_same_series_within_the_distance():
    series, position = _toy()
    for max_mm in (0.0, 2.5, 3.0, 6.0):
        table = neighbour_table(series, position, max_mm)
        for i in range(len(series)):
            # brute-force oracle
            expected = sorted(
                j for j in range(len(series))
                if j != i and series[j] == series[i] and np.isfinite(position[i]) and np.isfinite(position[j])
                and abs(position[i] - position[j]) <= max_mm and max_mm > 0
            )
            assert sorted(table[i].tolist()) == expected, (max_mm, i)
    table = neighbour_table(series, position, 5.0)
    index = torch.arange(len(series))
    a = draw_partners(index, table, 0.5, torch.Generator().manual_seed(1))
    b = draw_partners(index, table, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # a per-step generator: resumed runs draw the same partners
    always = draw_partners(index, table, 1.0, torch.Generator().manual_seed(2))
    for i, j in zip(index.tolist(), always.tolist()):
        assert j == i if not len(table[i]) else (j in table[i].tolist())


def test_runs_are_consecutive_slices_of_one_series():
    series, position = _toy()
    runs = sequences(series, position, 3)
    assert len(runs) == 4 + 3  # series a: 6 slices → 4 runs; b: 5 → 3; c has one positioned slice
    for run in runs:
        assert len(set(series[run])) == 1
        assert np.all(np.diff(position[run]) > 0)
    assert len(sequences(series, position, 3, max_gap_mm=2.6)) == 4  # b's 3-mm gaps are too large


def test_seqsort_classes_and_a_step_lowers_the_loss():
    classes = permutation_classes(3)
    assert len(classes) == 3  # 3!/2: a run and its reverse are one class
    torch.manual_seed(0)
    from medcbir.encoders.backbones import build_backbone

    method = SequenceSorting(build_backbone("resnet18"), 512, length=3, hidden=32)
    # Runs whose order is visible: a bright bar moving down the image.
    x = torch.zeros(8 * 3, 1, 32, 32)
    for r in range(8):
        for j in range(3):
            x[r * 3 + j, 0, 6 + 9 * j : 10 + 9 * j] = 1.0
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        torch.manual_seed(len(losses))
        loss = method([x])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    with pytest.raises(ValueError, match="runs of 3"):
        method([x[:7]])


def test_seqsort_checkpoint_exports_to_onnx(phantom_archive, tmp_path):
    from medcbir.train.onnx_export import export_onnx

    summary = train(TrainConfig(archive=phantom_archive, out=tmp_path / "seq.pt", method="seqsort", epochs=1, batch_size=12, size=64,
                                method_options={"length": 3, "hidden": 32}, device=Device.cpu(), progress=False, workers=1))
    assert summary.steps >= 1
    report = export_onnx(tmp_path / "seq.pt", tmp_path / "seq.onnx", archive=phantom_archive)
    assert report.max_abs_diff < 1e-4 and report.fingerprint == summary.fingerprint


def test_bf16_training_reaches_the_fp32_held_out_map(phantom_archive, tmp_path):
    """A short run in bf16 autocast lands where fp32 does (within noise on 20 held-out queries)."""
    rows = {}
    for precision in ("fp32", "bf16"):
        summary = train(TrainConfig(archive=phantom_archive, out=tmp_path / f"{precision}.pt", method="simsiam", epochs=2, batch_size=16,
                                    size=64, views="hu-narrow,hu-wide", labels=phantom_archive / "labels.csv", method_options=SMALL_HEADS,
                                    seed=3, device=Device(torch="cpu", precision=precision), progress=False, workers=1, lr=0.2))
        rows[precision] = summary.history[-1]["map_at_k"]
    assert abs(rows["bf16"] - rows["fp32"]) <= 0.1, rows


def test_nnclr_positives_come_from_the_support_queue():
    from medcbir.encoders.backbones import build_backbone
    from medcbir.train.simclr import SimCLR

    torch.manual_seed(0)
    method = SimCLR(build_backbone("resnet18"), 512, proj_dim=16, nn_queue=8)
    q0 = method.queue.clone()
    z = torch.randn(3, 16)
    nn_rows = method.nearest(z)
    # Oracle: brute-force cosine nearest row of the queue.
    expected = q0[torch.tensor([max(range(8), key=lambda r: float(torch.nn.functional.cosine_similarity(zi, q0[r], dim=0))) for zi in z])]
    assert torch.allclose(nn_rows, expected)
    x = [torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)]
    loss = method(x)
    loss.backward()
    assert torch.isfinite(loss) and int(method.queue_ptr) == 4
    assert not torch.equal(method.queue[:4], q0[:4]) and torch.equal(method.queue[4:], q0[4:])
    assert "queue" in method.state_dict()  # resumes with the checkpoint
