"""Region evaluation on a small phantom v3 (real DICOM, real HDF5, real FAISS): `evaluate --roi-boxes`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medcbir.cli.main import main
from medcbir.engine import Engine
from medcbir.engine.region_evaluate import SKIP_REASONS, crop, evaluate_regions
from medcbir.imaging import Preprocessing, read_dicom
from medcbir.imaging.phantom import make_archive
from medcbir.indexer import index_archive

METRICS = ("n_queries", "map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi-eval")
    make_archive(root / "archive", patients=4, slices=12, seed=3, version=3, workers=1)
    # few regions per image: the crop baselines embed every one of them
    index_archive(root / "archive", root / "index", "default", workers=1, progress=False, regions_per_image=4)
    archive = root / "archive"
    return {"root": root, "index": root / "index", "labels": archive / "labels-lesion-kind.csv", "boxes": archive / "lesion-boxes.csv",
            "rows": list(csv.DictReader(open(archive / "lesion-boxes.csv", newline=""))),
            "kinds": {(r["sop_instance_uid"], int(r["frame"])): r["label"] for r in csv.DictReader(open(archive / "labels-lesion-kind.csv"))}}


def _write(path: Path, rows: list[dict], columns=("sop_instance_uid", "frame", "x", "y", "w", "h", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _oracle(hits: list[list[tuple]], truth: list[str], labels: dict, k: int) -> tuple[float, float]:
    """MAP@K (mean over k of P@k) and AP@K (Σ P@k·rel_k / min(K, R)), computed independently."""
    maps, aps = [], []
    for found, label, r in zip(hits, truth, [h[1] for h in hits]):
        rel = [labels.get(key) == label for key in found[0]] + [False] * (k - len(found[0]))
        precision = np.cumsum(rel) / np.arange(1, k + 1)
        maps.append(precision.mean())
        aps.append((precision * rel).sum() / min(k, r) if r else 0.0)
    return float(np.mean(maps)), float(np.mean(aps))


def _relevant_count(engine, uid, frame, label, labels) -> int:
    """Items of another patient than the query's with this label (every item is labelled)."""
    metas = engine.meta(engine.ids)
    patient = next(m["patient_pseudonym"] for m in metas if m["sop_instance_uid"] == uid and int(m["frame"]) == frame)
    return sum(1 for m in metas if m["patient_pseudonym"] != patient and labels.get((m["sop_instance_uid"], int(m["frame"]))) == label)


def test_cli_json_matches_region_and_whole_slice_search(small, capsys):
    """The JSON has the agreed fields, and its figures equal MAP@5/AP@5 recomputed from the engine's own
    region search (`search --roi`) and whole-slice search of every row, patient-disjoint."""
    k = 5
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(small["boxes"]), "-k", str(k),
                 "--exclude", "same-patient", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"k", "exclude", "relevance", "queries", "map_at_k", "ap_at_k", "knn_accuracy", "per_class", "whole_slice",
            "gain_over_whole_slice"} <= set(result)
    assert result["queries"] == {"rows": len(small["rows"]), "count": len(small["rows"]), "skipped": {}, "skipped_rows": []}
    assert result["relevance"] == "row-label" and result["exclude"] == "same-patient"
    assert set(result["per_class"]) == {r["label"] for r in small["rows"]}
    assert "baselines" not in result
    labels = small["kinds"]
    region_hits, slice_hits = [], []
    with Engine.open(small["index"]) as engine:
        sources = {m["sop_instance_uid"]: m["source"] for m in engine.meta(engine.ids)}
        for r in small["rows"]:
            box = [int(r[c]) for c in "xywh"]
            n_rel = _relevant_count(engine, r["sop_instance_uid"], int(r["frame"]), r["label"], labels)
            hits = engine.search(sources[r["sop_instance_uid"]], k, roi=box, exclude="same-patient")[0]
            region_hits.append(([(n.meta["sop_instance_uid"], int(n.meta["frame"])) for n in hits], n_rel))
            whole = engine.search(r["sop_instance_uid"], k, exclude="same-patient")[0]
            slice_hits.append(([(n.meta["sop_instance_uid"], int(n.meta["frame"])) for n in whole], n_rel))
    truth = [r["label"] for r in small["rows"]]
    for hits, got in ((region_hits, result), (slice_hits, result["whole_slice"])):
        expected_map, expected_ap = _oracle(hits, truth, labels, k)
        assert got["map_at_k"] == pytest.approx(expected_map, abs=1e-9)
        assert got["ap_at_k"] == pytest.approx(expected_ap, abs=1e-9)
        assert got["n_queries"] == len(truth) and 0.0 <= got["knn_accuracy"] <= 1.0
    assert result["gain_over_whole_slice"] == pytest.approx(result["map_at_k"] - result["whole_slice"]["map_at_k"])


def test_relevance_by_the_rows_label_or_by_the_labels_file(small, tmp_path):
    """With a label column the row's label decides; without it, the query item's label in L; a label no
    item carries leaves its query nothing to find."""
    rows = small["rows"]
    with Engine.open(small["index"]) as engine:
        own = evaluate_regions(engine, small["labels"], small["boxes"], k=5, per_query=True)
        bare = evaluate_regions(engine, small["labels"], _write(tmp_path / "bare.csv", rows, columns=("sop_instance_uid", "frame", "x", "y", "w", "h")),
                                k=5, per_query=True)
        odd = [dict(r, label="unicorn") if i == 0 else r for i, r in enumerate(rows)]
        unicorn = evaluate_regions(engine, small["labels"], _write(tmp_path / "odd.csv", odd), k=5, per_query=True)
    assert own["relevance"] == "row-label" and bare["relevance"] == "item-label"
    item_labels = [small["kinds"][(r["sop_instance_uid"], int(r["frame"]))] for r in rows]
    assert [q["label"] for q in bare["per_query"]] == item_labels
    assert set(bare["per_class"]) == set(item_labels)
    # the same boxes find the same items; only what counts as relevant changes
    assert [q["region"] for q in bare["per_query"]] == [q["region"] for q in own["per_query"]]
    for result, truth in ((own, [r["label"] for r in rows]), (bare, item_labels)):
        hits = [q["region"] for q in result["per_query"]]
        p_at_k = np.mean([sum(small["kinds"][(h["sop_instance_uid"], h["frame"])] == t for h in found) / 5 for found, t in zip(hits, truth)])
        assert result["precision_at_k"] == pytest.approx(p_at_k)
    if any(a != b for a, b in zip(item_labels, [r["label"] for r in rows])):  # "mixed" slices: two kinds, one row each
        assert bare["per_class"] != own["per_class"]
    assert unicorn["per_class"]["unicorn"]["map_at_k"] == 0.0 and unicorn["n_queries_without_relevant"] == own["n_queries_without_relevant"] + 1


def test_crop_baselines_and_whole_slice_beside_region_search(small, capsys):
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(small["boxes"]), "-k", "5",
                 "--baselines", "--json"]) == 0
    captured = capsys.readouterr()
    assert "crop baselines" not in captured.err  # no progress display in --json mode
    result = json.loads(captured.out)
    baselines = result["baselines"]
    assert set(baselines) == {"thumbnail:16", "random", "classic", "crop"}
    with Engine.open(small["index"]) as engine:
        region_count = len(engine.store.regions().rows)
        plain = evaluate_regions(engine, small["labels"], small["boxes"], k=5)
    assert baselines["crop"]["size"] == 64 and baselines["crop"]["regions"] == region_count
    assert baselines["crop"]["items_without_crops"] == 0 and baselines["crop"]["queries_without_crop"] == 0
    for name in ("thumbnail:16", "random", "classic"):
        b = baselines[name]
        assert b["n_queries"] == result["n_queries"] and set(b["per_class"]) == set(result["per_class"])
        assert all(0.0 <= b[m] <= 1.0 for m in METRICS[1:])
    # three different descriptors do not give one answer three times
    assert len({json.dumps(baselines[n]["per_class"], sort_keys=True) for n in ("thumbnail:16", "random", "classic")}) > 1
    # the baselines change nothing of the region and whole-slice figures
    assert {m: result[m] for m in METRICS} == {m: plain[m] for m in METRICS}
    assert result["whole_slice"] == plain["whole_slice"]
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(small["boxes"])]) == 0
    out = capsys.readouterr().out
    assert "region (this index)" in out and "whole slice (same items)" in out and "per class" in out


def test_a_crop_baseline_ranks_items_by_their_best_region(small):
    """thumbnail:16 of the crops recomputed here with numpy (4×4 block means of the 64-px crop, unit
    length): each query's items ranked by their best region's cosine, other patients only."""
    with Engine.open(small["index"]) as engine:
        result = evaluate_regions(engine, small["labels"], small["boxes"], k=5, baselines=("thumbnail:16",), per_query=True)
        windows = Preprocessing(windows=tuple(w if isinstance(w, str) else tuple(w) for w in
                                              engine.store.encoder_info["preprocessing"]["windows"]), size=64)
        stored = engine.store.regions()
        items, boxes = np.asarray(stored.rows), np.asarray(stored.boxes)
        metas = engine.meta(engine.ids)
        id_of = {(m["sop_instance_uid"], int(m["frame"])): int(i) for i, m in zip(engine.ids.tolist(), metas)}
        meta_of = {int(i): m for i, m in zip(engine.ids.tolist(), metas)}
        frames = {i: read_dicom(meta_of[i]["source"])[int(meta_of[i]["frame"])] for i in meta_of}

    def thumb(item_id, box):
        v = crop(frames[item_id], box, windows, 64)[0].reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()
        return v / np.linalg.norm(v)

    region_thumbs = np.stack([thumb(i, b) for i, b in zip(items.tolist(), boxes.tolist())])
    for q in result["per_query"][:4]:
        own = id_of[(q["sop_instance_uid"], q["frame"])]
        scores = region_thumbs @ thumb(own, q["box"])
        best: dict = {}
        for item_id, score in zip(items.tolist(), scores.tolist()):
            if meta_of[item_id]["patient_pseudonym"] != meta_of[own]["patient_pseudonym"]:
                best[item_id] = max(best.get(item_id, -2.0), score)
        expected = sorted(best, key=lambda i: -best[i])[:5]
        assert q["baselines"]["thumbnail:16"] == [[meta_of[i]["sop_instance_uid"], int(meta_of[i]["frame"])] for i in expected]


def test_a_crop_is_the_box_resampled_and_windowed(small):
    """The crop a baseline sees: the box's pixels resampled to 64 px (here 32 → 64) in the given window."""
    r = next(r for r in small["rows"] if int(r["w"]) >= 6 and int(r["h"]) >= 6)
    with Engine.open(small["index"]) as engine:
        source = next(m["source"] for m in engine.meta(engine.ids) if m["sop_instance_uid"] == r["sop_instance_uid"])
    item = read_dicom(source)[int(r["frame"])]
    x, y, w, h = (int(r[c]) for c in "xywh")
    prep = Preprocessing(windows=((-100.0, 300.0),), size=64)
    image = crop(item, (x, y, 32, 32), prep, 64)
    assert image.shape == (1, 64, 64)
    box = np.clip((item.pixels[y:y + 32, x:x + 32].astype(np.float64) + 100.0) / 400.0, 0, 1)
    assert image.mean() == pytest.approx(box.mean(), abs=0.02)
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_bad_rows_are_skipped_with_a_reason_and_counted(small, tmp_path, capsys):
    rows = list({r["sop_instance_uid"]: r for r in small["rows"]}.values())  # one row per file
    good = rows[:3]
    bad = [
        dict(rows[0], sop_instance_uid="1.2.3.4.5"),                       # unknown-item
        dict(rows[0], x="250", y="250", w="40", h="40"),                   # outside-image
        dict(rows[0], w="0"),                                              # outside-image (empty)
        dict(rows[0], x="left"),                                           # bad-row
        dict(rows[1], label=""),                                           # no label of its own: L's (kept)
    ]
    boxes = _write(tmp_path / "boxes.csv", good + bad)
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(boxes), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    q = result["queries"]
    assert q["rows"] == 8 and q["count"] == 4
    assert q["skipped"] == {"bad-row": 1, "unknown-item": 1, "outside-image": 2}
    assert set(q["skipped"]) <= set(SKIP_REASONS)
    assert [s["line"] for s in q["skipped_rows"]] == [5, 6, 7, 8]
    # a row without a label whose item has none in L either, and an unreadable source file
    partial = tmp_path / "labels.csv"
    _write(partial, [{"sop_instance_uid": u, "frame": f, "label": v} for (u, f), v in small["kinds"].items() if u != rows[1]["sop_instance_uid"]],
           columns=("sop_instance_uid", "frame", "label"))
    with Engine.open(small["index"]) as engine:
        source = Path(next(m["source"] for m in engine.meta(engine.ids) if m["sop_instance_uid"] == rows[2]["sop_instance_uid"]))
        moved = source.with_suffix(".away")
        source.rename(moved)
        try:
            result = evaluate_regions(engine, partial, boxes, k=5)
        finally:
            moved.rename(source)
    assert result["queries"]["skipped"] == {"bad-row": 1, "unknown-item": 1, "no-label": 1, "unreadable": 1, "outside-image": 2}
    # nothing usable: one line, exit 2, no traceback
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(_write(tmp_path / "none.csv", bad[:4]))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can be a region query" in err[0] and "unknown-item" in err[0]


def test_the_public_api_evaluates_regions(small):
    """``medcbir.evaluate(index, labels, roi_boxes=...)``: the CLI's figures as a dataclass."""
    import medcbir
    from medcbir.errors import ConfigError

    with Engine.open(small["index"]) as engine:
        record = evaluate_regions(engine, small["labels"], small["boxes"], k=5)
    result = medcbir.evaluate(small["index"], small["labels"], k=5, roi_boxes=small["boxes"])
    assert isinstance(result, medcbir.RegionEvaluation) and not result.snap
    assert (result.n_queries, result.rows, result.skipped, result.relevance) == (len(small["rows"]), len(small["rows"]), {}, "row-label")
    assert result.map_at_k == record["map_at_k"] and result.ap_at_k == record["ap_at_k"]
    assert result.whole_slice.map_at_k == record["whole_slice"]["map_at_k"] and result.baselines == {}
    assert result.gain_over_whole_slice == pytest.approx(result.map_at_k - result.whole_slice.map_at_k)
    assert set(result.per_class) == {r["label"] for r in small["rows"]}
    with_crops = medcbir.evaluate(small["index"], small["labels"], k=5, roi_boxes=small["boxes"], baselines=["thumbnail:16"])
    assert set(with_crops.baselines) == {"thumbnail:16"} and with_crops.baselines["thumbnail:16"].n_queries == result.n_queries
    with pytest.raises(ConfigError, match="roi_boxes"):
        medcbir.evaluate(small["index"], small["labels"], snap=True)


def test_snapped_boxes_are_the_ones_search_snap_uses(small, capsys):
    from medcbir.encoders.regions import describe_query

    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(small["boxes"]), "-k", "5",
                 "--snap", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["snap"] is True
    with Engine.open(small["index"]) as engine:
        snapped = evaluate_regions(engine, small["labels"], small["boxes"], k=5, snap=True, per_query=True)
        sources = {m["sop_instance_uid"]: m["source"] for m in engine.meta(engine.ids)}
        moved = 0
        for r, q in zip(small["rows"], snapped["per_query"]):
            item = read_dicom(sources[r["sop_instance_uid"]])[int(r["frame"])]
            drawn = tuple(int(r[c]) for c in "xywh")
            assert tuple(q["box"]) == tuple(describe_query(item, drawn, snap=True)[1])
            moved += tuple(q["box"]) != drawn
            hits = engine.search(sources[r["sop_instance_uid"]], 5, roi=list(drawn), snap=True, exclude="same-patient")[0]
            assert [h["sop_instance_uid"] for h in q["region"]] == [n.meta["sop_instance_uid"] for n in hits]
    assert moved > 0 and cli["map_at_k"] == snapped["map_at_k"]
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--snap"]) == 2
    assert "--roi-boxes" in capsys.readouterr().err


def test_a_progress_display_while_the_crop_baselines_embed(small, capsys):
    calls = []
    with Engine.open(small["index"]) as engine:
        evaluate_regions(engine, small["labels"], small["boxes"], k=5, baselines=("thumbnail:16",), progress=lambda *a: calls.append(a))
        items = len(np.unique(engine.store.regions().rows))
    assert calls and calls[-1] == (items, items) and all(a <= b for a, b in calls)
    assert main(["evaluate", str(small["index"]), "--labels", str(small["labels"]), "--roi-boxes", str(small["boxes"]), "--baselines"]) == 0
    captured = capsys.readouterr()
    assert "crop baselines" in captured.err and "region (this index)" in captured.out
