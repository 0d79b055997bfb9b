"""Adaptation (medcbir.train.adapt, ``medcbir train`` without --method): real DICOM archives, real encoders.

- the whitening fitted on the archive equals a direct numpy computation, and the encoder that
  carries it embeds exactly what the numpy map gives;
- a head fitted on a useless archive (pure noise) is rejected by the label-free score: the start is kept;
- ``train --init`` on each kind of starting encoder (the default descriptor, a built-in network,
  a checkpoint) writes an encoder that indexes, searches, explains and exports to ONNX with parity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from medcbir.cli.main import main
from medcbir.device import Device
from medcbir.encoders.runtime import load_encoder_module, open_encoder
from medcbir.train.adapt import AdaptConfig, adapt, embed_archive_features, projected_module
from medcbir.train.whitening import fit_pca_whitening
from tests.imaging.dicomfiles import ct_dataset, save


def _features(archive, init="default", stages=("whiten",)):
    start = load_encoder_module(init).eval()
    return start, embed_archive_features(start, AdaptConfig(archive=archive, out="unused.pt", stages=stages, workers=1), Device.cpu())


def test_whitening_fitted_on_the_archive_equals_a_direct_computation(phantom_archive):
    start, features = _features(phantom_archive)
    x = features.vectors.astype(np.float64)
    mapping = fit_pca_whitening(x, dim=16, shrinkage=1.0)

    # The oracle: covariance, its eigendecomposition, the top 16 directions scaled by (λ + mean λ)^-1/2.
    mean = x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((x - mean).T))
    values, vectors = values[::-1], vectors[:, ::-1]
    spanned = values > 1e-9 * values[0]
    y = (x - mean) @ vectors[:, :16] / np.sqrt(values[:16] + values[spanned].mean())
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    got = mapping.apply(x)
    # Eigenvectors have no sign: compare what retrieval sees, every pairwise cosine.
    np.testing.assert_allclose(got @ got.T, y @ y.T, atol=1e-5)

    # The encoder that carries the map embeds the archive's images as map(start(x)).
    module = projected_module(start, mapping)
    images = torch.rand(6, *open_encoder(start).input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        base = torch.nn.functional.normalize(start(images), dim=1).numpy()
    np.testing.assert_allclose(open_encoder(module, device=Device.cpu()).embed(images.numpy()), mapping.apply(base), atol=1e-5)
    assert module.fingerprint != start.fingerprint and module.arch["base"] == start.arch


@pytest.fixture(scope="module")
def noise_archive(tmp_path_factory):
    """4 patients, one axial series of 24 slices each (5 mm apart), every image pure noise."""
    root = tmp_path_factory.mktemp("noise") / "archive"
    rng = np.random.default_rng(0)
    for p in range(4):
        study, series = generate_uid(), generate_uid()
        for s in range(24):
            ds = ct_dataset(rng.normal(0, 300, (48, 48)).clip(-1000, 1000), position=5.0 * s, instance=s + 1)
            ds.PatientID, ds.PatientName = f"noise-{p}", f"Noise^{p}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            save(ds, root / f"p{p}" / f"{s:03d}.dcm")
    return root


def test_a_head_fitted_on_a_useless_archive_is_rejected_and_the_start_kept(noise_archive, tmp_path):
    out = tmp_path / "kept.pt"
    summary = adapt(AdaptConfig(archive=noise_archive, out=out, workers=1, device=Device.cpu(), augment_images=32))
    heads = [s for s in summary.stages if s.kind == "head"]
    assert heads and all(s.agreement is not None for s in heads), [s.note for s in heads]  # fitted, then judged
    assert summary.kept == "start", summary.reason
    assert not any(s.better for s in summary.stages[1:])
    assert summary.reason.startswith("no stage beat it beyond chance")
    assert load_encoder_module(out).fingerprint == load_encoder_module("default").fingerprint


@pytest.mark.parametrize("kind", ["default", "random", "checkpoint"])
def test_train_init_gives_an_encoder_that_indexes_searches_explains_and_exports(kind, phantom_archive, trained, tmp_path, capsys):
    import medcbir

    init = str(trained["checkpoint"]) if kind == "checkpoint" else kind
    stages = "whiten,head" if kind == "default" else "whiten"  # a network pays an augmented pass for the head
    out = tmp_path / "adapted.pt"
    assert main(["train", str(phantom_archive), "--init", init, "--stages", stages, "--out", str(out), "--workers", "1",
                 "--device", "cpu", "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("kept ")
    module = load_encoder_module(out)
    if kind == "default":  # on the phantom the head beats the classic descriptor by far: the projected path is exercised
        assert module.arch["backbone"] == "projected" and module.arch["base"]["backbone"] == "classic", line

    medcbir.index(tmp_path / "index", phantom_archive, out, workers=1)
    query = sorted(phantom_archive.rglob("*.dcm"))[0]
    [hits] = medcbir.search(tmp_path / "index", [str(query)], k=3)
    assert len(hits) == 3
    explanation = medcbir.explain(tmp_path / "index", str(query), k=2, method="gradcam")
    assert explanation.heatmaps.shape[0] == 3 and np.isfinite(explanation.heatmaps).all()

    assert main(["export-onnx", str(out), str(tmp_path / "adapted.onnx"), "--archive", str(phantom_archive)]) == 0
    assert "parity: max |Δ| torch vs onnxruntime" in capsys.readouterr().out
    onnx = open_encoder(tmp_path / "adapted.onnx")
    assert onnx.fingerprint == module.fingerprint  # an index built with either opens with both


def test_finetune_starts_the_recipe_from_the_network_and_is_judged_like_any_stage(phantom_archive, trained, tmp_path):
    summary = adapt(AdaptConfig(archive=phantom_archive, out=tmp_path / "ft.pt", init=trained["checkpoint"], stages=("finetune",),
                                finetune_epochs=1, workers=1, device=Device.cpu()))
    [row] = [s for s in summary.stages if s.name == "finetune"]
    assert row.agreement is not None and row.gain is not None and row.better is not None  # fitted per fold, then judged
    kept = load_encoder_module(tmp_path / "ft.pt")
    start = load_encoder_module(trained["checkpoint"])
    assert (kept.fingerprint == start.fingerprint) == (summary.kept == "start")
    # a descriptor has no weights to fine-tune: said, not attempted
    summary = adapt(AdaptConfig(archive=phantom_archive, out=tmp_path / "d.pt", stages=("finetune",), workers=1, device=Device.cpu()))
    assert summary.kept == "start" and "not a network the trainer can fine-tune" in summary.stages[1].note


def test_the_trainer_trains_the_starting_network_not_the_configured_one(phantom_archive, trained, tmp_path):
    """With ``init`` the run trains the starting encoder's own network and preprocessing; --backbone/--size
    describe a new random network and do not apply (the run records which encoder it started from)."""
    from medcbir.train.trainer import TrainConfig, train

    start = load_encoder_module(trained["checkpoint"])
    out = tmp_path / "x.pt"
    train(TrainConfig(archive=phantom_archive, out=out, epochs=1, size=160, batch_size=8, init=trained["checkpoint"],
                      device=Device.cpu(), progress=False, workers=1))
    result = load_encoder_module(out)
    assert result.arch == start.arch
    assert result.preprocessing == start.preprocessing and start.preprocessing.size != 160
    assert result.fingerprint != start.fingerprint  # trained: the weights moved
