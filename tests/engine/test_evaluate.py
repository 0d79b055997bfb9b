"""``evaluate`` equals an independent brute-force computation from the metric definitions."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medcbir.engine import Engine, evaluate
from medcbir.engine.metrics import ap_at_k, knn_vote, map_at_k, precision_at_k
from medcbir.errors import ConfigError
from tests.engine.indexes import rebuild_with_spec

K = 5


@pytest.fixture(scope="module")
def stored(flat_index):
    from medcbir.indexer import IndexStore

    store = IndexStore.open(flat_index)
    out = {"ids": np.asarray(store.ids), "x": store.embeddings(np.asarray(store.ids)).astype(np.float64)}
    for name in ("sop_instance_uid", "frame", "patient_pseudonym", "study_instance_uid"):
        out[name] = np.asarray(store.columns[name])
    store.close()
    return out


@pytest.fixture(scope="module")
def labels(phantom_archive, tmp_path_factory) -> Path:
    """The phantom's labels plus two rows the index does not know."""
    src = Path(phantom_archive) / "labels.csv"
    out = tmp_path_factory.mktemp("labels") / "labels.csv"
    text = src.read_text().rstrip("\n") + "\n1.2.3.999,0,thorax\n1.2.3.998,0,kidney\n"
    out.write_text(text)
    return out


def oracle(stored, labels_csv: Path, k: int, exclude: str) -> dict:
    """Leave-one-out metrics straight from their definitions (exact search in float64)."""
    with open(labels_csv, newline="") as fh:
        label_of = {(r["sop_instance_uid"], int(r["frame"])): r["label"] for r in csv.DictReader(fh)}
    keys = list(zip(stored["sop_instance_uid"].tolist(), stored["frame"].tolist()))
    lab = np.array([label_of.get(key) for key in keys], dtype=object)
    group = {"same-patient": stored["patient_pseudonym"], "same-study": stored["study_instance_uid"]}.get(exclude)
    per_query = []
    for q in range(len(keys)):
        allowed = np.ones(len(keys), bool)
        allowed[q] = False
        if group is not None:
            allowed &= group != group[q]
        scores = stored["x"] @ stored["x"][q]
        cand = np.flatnonzero(allowed)
        top = cand[np.lexsort((cand, -scores[cand]))][:k]
        rel = [lab[j] == lab[q] for j in top] + [False] * (k - len(top))
        precisions = [sum(rel[: i + 1]) / (i + 1) for i in range(k)]
        n_rel = int(sum(lab[j] == lab[q] for j in cand))
        ap = sum(p for p, r in zip(precisions, rel) if r) / min(k, n_rel) if n_rel else 0.0
        votes = Counter(lab[j] for j in top)
        best = max(votes.values())
        predicted = next(lab[j] for j in top if votes[lab[j]] == best)  # tie: ranked first wins
        per_query.append((lab[q], float(np.mean(precisions)), ap, sum(rel) / k, float(predicted == lab[q])))
    out = {"n_queries": len(per_query), "per_class": {}}
    names = ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy")
    for i, name in enumerate(names, start=1):
        out[name] = float(np.mean([row[i] for row in per_query]))
    for label in sorted({row[0] for row in per_query}):
        rows = [row for row in per_query if row[0] == label]
        out["per_class"][label] = {"n_queries": len(rows), **{name: float(np.mean([r[i] for r in rows])) for i, name in enumerate(names, start=1)}}
    return out


@pytest.mark.parametrize("k", [K, 20])  # 20 > the ~12 relevant items left per query: R < K
@pytest.mark.parametrize("exclude", ["same-patient", "same-study", "none"])
def test_evaluate_equals_brute_force(flat_index, stored, labels, exclude, k):
    engine = Engine.open(flat_index)
    got = evaluate(engine, labels, k=k, exclude=exclude)
    want = oracle(stored, labels, k, exclude)
    assert got["k"] == k and got["exclude"] == exclude
    assert got["n_queries"] == want["n_queries"] == 80
    assert got["n_labels_unknown"] == 2
    assert "recall_vs_exact" not in got and got["exact"] is True
    for name in ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy"):
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    assert set(got["per_class"]) == set(want["per_class"])
    for label, metrics in want["per_class"].items():
        for name, value in metrics.items():
            assert got["per_class"][label][name] == pytest.approx(value, abs=1e-6), (label, name)


def test_approximate_index_reports_recall_vs_exact(flat_index, labels, tmp_path):
    ivf = Engine.open(rebuild_with_spec(flat_index, tmp_path / "ivf", "IVF4,Flat"))
    assert not ivf.exact
    exact = evaluate(Engine.open(flat_index), labels, k=K)
    ivf.set_search_params(nprobe=4)  # every list probed: IVF-Flat is then exact
    full = evaluate(ivf, labels, k=K)
    assert full["recall_vs_exact"] == pytest.approx(1.0)
    for name in ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy"):
        assert full[name] == pytest.approx(exact[name], abs=1e-6)
    ivf.set_search_params(nprobe=1)
    one = evaluate(ivf, labels, k=K)
    assert 0.0 < one["recall_vs_exact"] < 1.0


def test_evaluate_sample_and_bad_labels(flat_index, labels, tmp_path):
    engine = Engine.open(flat_index)
    sample = evaluate(engine, labels, k=3, queries=10)
    assert sample["n_queries"] == 10 and sample["searchable"] == 80
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,label\n1.2,x\n")
    with pytest.raises(ConfigError, match="missing column"):
        evaluate(engine, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(engine, tmp_path / "absent.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sop_instance_uid,frame,label\n1.2,0,f\xe9mur\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        evaluate(engine, latin)


def test_metric_definitions_by_hand():
    rel = np.array([[True, False, True], [False, False, False], [False, True, True]])
    np.testing.assert_allclose(precision_at_k(rel), [2 / 3, 0, 2 / 3])
    np.testing.assert_allclose(map_at_k(rel), [(1 + 1 / 2 + 2 / 3) / 3, 0, (0 + 1 / 2 + 2 / 3) / 3])
    # R = 5 → denominator min(K, R) = 3; R = 1 → 1; R = 0 → AP 0
    np.testing.assert_allclose(ap_at_k(rel, np.array([5, 0, 2])), [(1 + 2 / 3) / 3, 0, (1 / 2 + 2 / 3) / 2])
    # ties go to the tied label whose best neighbour ranks highest; -1 = missing neighbour
    votes = knn_vote(np.array([[2, 1, 1, 2, 3], [4, 5, 5, 4, -1], [7, -1, -1, -1, -1], [-1, -1, -1, -1, -1], [3, 1, 1, 1, 3]]))
    np.testing.assert_array_equal(votes, [2, 4, 7, -1, 1])
