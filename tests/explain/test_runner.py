"""Search + explain on a real index: one batched pass equals per-image runs; reports render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.engine import Engine
from medcbir.explain import explain_search, explain_to_report, gradcam, relax
from medcbir.explain.evaluation.run import evaluate_methods
from medcbir.explain.evaluation.tables import format_table
from tests.explain.indexes import query_file
from tests.explain.test_report import chromium_counts


@pytest.fixture(scope="module")
def engine(explain_index):
    return Engine.open(explain_index)


def test_relax_for_query_and_neighbours_in_one_pass(engine, phantom_archive):
    query = query_file(phantom_archive)
    res = explain_search(engine, str(query), k=3, method="relax", exclude="same-patient", pairwise=True, n_masks=120, seed=4, batch_size=50)
    [expected] = engine.search([str(query)], k=3, exclude="same-patient")
    assert [n.id for n in res.neighbours] == [n.id for n in expected]
    assert res.images.shape == (4, 1, 64, 64) and res.heatmaps.shape == (4, 64, 64) and res.pairwise.shape == (3, 64, 64)
    module = engine.encoder.module
    images = torch.from_numpy(res.images)
    with torch.no_grad():
        emb = F.normalize(module(images), dim=1)
    # neighbour images decoded from source + frame embed to what the index stored
    stored = torch.from_numpy(engine.embeddings([n.id for n in res.neighbours]))
    assert F.cosine_similarity(emb[1:], stored, dim=1).min() > 0.999
    # one shared pass == separate runs with the same seed (the masks are shared, not redrawn)
    np.testing.assert_allclose(res.heatmaps[0], relax(module, images[:1], None, n_masks=120, seed=4)[0].numpy(), atol=1e-5)
    for i in range(1, 4):
        alone = relax(module, images[i : i + 1], emb[:1], n_masks=120, seed=4)[0].numpy()
        np.testing.assert_allclose(res.heatmaps[i], alone, atol=1e-5)
        pair = relax(module, images[:1], emb[i : i + 1], n_masks=120, seed=4)[0].numpy()
        np.testing.assert_allclose(res.pairwise[i - 1], pair, atol=1e-5)
    assert res.n_masks_used == 120
    summary = res.to_dict()
    json.dumps(summary)
    assert "patient_pseudonym" not in json.dumps(summary)


def test_gradient_method_explains_the_query_against_itself(engine, phantom_archive):
    query = query_file(phantom_archive, patient=2, slice_no=8)
    res = explain_search(engine, str(query), k=2, method="gradcam")
    module = engine.encoder.module
    images = torch.from_numpy(res.images)
    np.testing.assert_allclose(res.heatmaps[0], gradcam(module, images[:1], None)[0].numpy(), atol=1e-5)
    q = F.normalize(module(images[:1]).detach(), dim=1)
    np.testing.assert_allclose(res.heatmaps[1:], gradcam(module, images[1:], q).numpy(), atol=1e-5)


def test_uid_query_is_decoded_from_its_source(engine):
    uid = str(np.asarray(engine.columns["sop_instance_uid"]).astype(str)[5])
    res = explain_search(engine, uid, k=2, method="occlusion", window=16, stride=16)
    assert res.query_meta["sop_instance_uid"] == uid
    assert res.heatmaps.shape == (3, 64, 64) and np.isfinite(res.heatmaps).all()


@pytest.mark.chromium
def test_explain_to_report_renders_in_chromium(explain_index, phantom_archive, tmp_path):
    html, png = explain_to_report(explain_index, query_file(phantom_archive), tmp_path / "report.html", k=4, n_masks=60, seed=1)
    assert png.is_file() and png.stat().st_size > 5000
    rendered, total = chromium_counts(html, tmp_path)
    assert rendered == total == 2 * 5 + 1  # 1+K images, 1+K overlays, one colour bar


def test_evaluate_methods_on_organ_masks(explain_index, phantom_archive):
    result = evaluate_methods(
        explain_index, phantom_archive / "masks.h5", organ="liver", methods=("relax", "gradcam"), n=3,
        labels=phantom_archive / "labels.csv", angles=(0, 180), n_masks=60, targets="own",
    )
    assert result["n"] == 3 and len(set(result["items"])) == 3 and result["targets"] == "own"
    for name in ("relax", "gradcam"):
        r = result["methods"][name]
        for key in ("rank_accuracy", "mass_accuracy", "pointing_game", "auprc", "dice_rotation", "pointwise"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert len(r["per_image"]["rank_accuracy"]) == 3
        assert r["pic"] is None and "pic" in result["not_applicable"]  # own targets: PIC cannot move
        assert np.isfinite(r["silhouette"])
        assert set(r["margin"]) >= {"rank_accuracy", "deletion_auc"}
    table = format_table(result)
    assert table.splitlines()[2].startswith("relax") and "RRA" in table and "n/a PIC" in table


def test_evaluate_methods_pairs_queries_with_masked_neighbours(explain_index, phantom_archive, engine):
    """Query targets: each neighbour (another patient's, with a liver mask) explained w.r.t. its query."""
    import h5py

    result = evaluate_methods(
        explain_index, phantom_archive / "masks.h5", organ="liver", methods=("occlusion",), n=2, angles=(),
        targets="query", pairwise=True, exclude="same-patient",
    )
    assert result["targets"] == "query" and result["pairwise"] and len(result["pairs"]) == 2
    uids = np.asarray(engine.columns["sop_instance_uid"]).astype(str)
    patients = np.asarray(engine.columns["patient_pseudonym"]).astype(str)
    with h5py.File(phantom_archive / "masks.h5", "r") as fh:
        for q, nb in result["pairs"]:
            assert q != nb and patients[uids == q][0] != patients[uids == nb][0]
            assert np.asarray(fh[nb]["liver"]).any() and np.asarray(fh[q]["liver"]).any()
    # pairwise: neighbours first, then the queries explained w.r.t. their neighbours
    assert result["items"] == [nb for _, nb in result["pairs"]] + [q for q, _ in result["pairs"]]
    assert result["n"] == 4 and result["target_similarity"] < 0.9999
    assert "pic" not in result["not_applicable"] or "barely moves" in result["not_applicable"]["pic"]


def test_onnx_encoder_runs_forward_only_methods(explain_index, phantom_archive, engine, tmp_path):
    """The demo's index records an ONNX encoder: RELAX runs on it, gradient methods ask for the checkpoint."""
    from medcbir.errors import ConfigError
    from medcbir.train.onnx_export import export_onnx

    onnx_path = tmp_path / "encoder.onnx"
    export_onnx(explain_index.parent / "encoder.pt", onnx_path, n_parity=2)
    onnx_engine = Engine.open(explain_index, encoder=str(onnx_path))
    query = str(query_file(phantom_archive, patient=3, slice_no=12))
    on_onnx = explain_search(onnx_engine, query, k=2, n_masks=60, seed=3)
    on_torch = explain_search(engine, query, k=2, n_masks=60, seed=3)
    assert [n.id for n in on_onnx.neighbours] == [n.id for n in on_torch.neighbours]
    for a, b in zip(on_onnx.heatmaps, on_torch.heatmaps):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    with pytest.raises(ConfigError, match="ONNX"):
        explain_search(onnx_engine, query, k=2, method="gradcam")
