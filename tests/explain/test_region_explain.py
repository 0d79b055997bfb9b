"""Explaining a region match on phantom v3 (real DICOM, real HDF5, real FAISS): maps over each neighbour."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from medcbir.cli.main import main
from medcbir.encoders import region_descriptor
from medcbir.encoders.region_image import region_image
from medcbir.engine import Engine
from medcbir.explain import metrics as M
from medcbir.explain.region_evaluation import lesion_truth, read_boxes, trivial_region_map
from medcbir.explain.regions import Neighbourhood, explain_region_match, local_background
from medcbir.explain.status import method_status, region_method_status
from medcbir.imaging.items import Item, ItemMeta


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    root = tmp_path_factory.mktemp("roi-explain")
    make_archive(root / "archive", patients=4, slices=16, seed=5, size=256, version=3, workers=1)
    index_archive(root / "archive", root / "index", "thumbnail:8", workers=1, progress=False)
    boxes = read_boxes(root / "archive" / "lesion-boxes.csv")
    clear = None
    with Engine.open(root / "index") as engine, h5py.File(root / "archive" / "masks.h5", "r") as fh:
        # The first clear match: a lesion box (≥ 6 px a side) among whose top 5 regions in other
        # patients one is a lesion's own box (0.5–4× the lesion's area), not a piece of a larger one.
        for row in (r for r in boxes if min(r["box"][2:]) >= 6):
            query = f"{row['sop_instance_uid']}:{row['frame']}"
            [hits] = engine.search([query], k=5, exclude="same-patient", roi=row["box"])
            for rank, hit in enumerate(hits):
                truth = lesion_truth(fh, hit.meta["sop_instance_uid"], hit.region)
                if truth is not None and 0.5 * truth.sum() <= hit.region[2] * hit.region[3] <= 4 * truth.sum():
                    clear = {"query": query, "box": row["box"], "truth": truth, "hit": hit.id, "rank": rank}
                    break
            if clear is not None:
                break
    assert clear is not None, "no box of the phantom finds a lesion in another patient"
    return {"root": root, "index": root / "index", "archive": root / "archive", "boxes": boxes, "clear": clear}


def test_batched_redescription_equals_describing_the_whole_perturbed_frame():
    """Tiles stacked into one describe() call give what the descriptor reads on the whole frame,
    also for boxes at the frame's border (edge padding = the descriptor's clamping)."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(40, 10, (64, 80)).astype(np.float32)
    pixels[20:30, 30:42] += 80
    image = region_image(Item(ItemMeta(sop_instance_uid="x", modality="CT", pixel_spacing=(1.0, 1.0)), pixels))
    for box in [(30, 20, 12, 10), (0, 0, 10, 12), (70, 50, 10, 14)]:
        hood = Neighbourhood.around(image, box)
        crops = hood.crop[None] + rng.normal(0, 30, (3, *hood.shape)).astype(np.float32)
        batched = hood.describe(crops)
        for i in range(3):
            whole = image.units.copy()
            whole[hood.rows, hood.cols] = crops[i]
            direct = region_descriptor.describe(replace(image, units=whole), np.array([box], float))[0]
            np.testing.assert_allclose(batched[i], direct, atol=1e-5)
    # the background of a bright square on a flat field is the field
    flat = np.zeros((80, 80), np.float32)
    flat[35:45, 35:45] = 100.0
    assert np.abs(local_background(flat, (35, 35, 10, 10), slice(25, 55), slice(25, 55))).max() < 5.0


def test_maps_cover_each_neighbour_frame_and_are_deterministic(v3):
    clear = v3["clear"]
    with Engine.open(v3["index"]) as engine:
        first = explain_region_match(engine, clear["query"], clear["box"], k=3, n_masks=64, seed=0)
        again = explain_region_match(engine, clear["query"], clear["box"], k=3, n_masks=64, seed=0)
        other = explain_region_match(engine, clear["query"], clear["box"], k=3, n_masks=64, seed=1)
    assert first.maps.shape == (3, 256, 256) and first.maps.dtype == np.float32
    assert [nb.id for nb in first.neighbours] == [nb.id for nb in again.neighbours]
    np.testing.assert_array_equal(first.maps, again.maps)
    assert not np.array_equal(first.maps, other.maps)
    for i, nb in enumerate(first.neighbours):
        x, y, w, h = first.windows[i]
        outside = first.maps[i].copy()
        outside[y:y + h, x:x + w] = 0
        assert not outside.any() and first.maps[i, y:y + h, x:x + w].any()
        # the box inside the neighbourhood; its re-described score is the search's, within what
        # the stored float16 descriptor rounds (the compared scale stretches it up to 3.3× near 0)
        rx, ry, rw, rh = nb.region
        assert x <= rx and y <= ry and rx + rw <= x + w and ry + rh <= y + h
        assert abs(first.match_scores[i] - nb.score) < 5e-3
    assert first.query_box == tuple(clear["box"])


@pytest.mark.parametrize("method", ["relax", "occlusion"])
def test_a_clear_match_is_explained_by_the_lesion_it_holds(v3, method):
    """A neighbour's region that is a lesion: the map peaks on it, most of its top pixels are the
    lesion (more than a random map on the same neighbourhood finds), it is densest in and around the box."""
    clear = v3["clear"]
    i = clear["rank"]
    with Engine.open(v3["index"]) as engine:
        shown = explain_region_match(engine, clear["query"], clear["box"], k=i + 1, method=method, n_masks=300)
    assert shown.neighbours[i].id == clear["hit"]
    heat, truth = shown.map_of(i), clear["truth"]
    noise = trivial_region_map("noise", shown.images[i], shown.neighbours[i].region, shown.windows[i])
    assert M.pointing_game(heat, truth) == 1.0
    assert M.relevance_rank_accuracy(heat, truth) >= 0.5
    assert M.relevance_rank_accuracy(heat, truth) > M.relevance_rank_accuracy(noise, truth)
    # the positive map is at least twice as dense in and around the box as in the rest of the neighbourhood
    x, y, w, h = shown.neighbours[i].region
    grow = max(w, h) // 2
    near = np.zeros_like(truth)
    near[max(0, y - grow):y + h + grow, max(0, x - grow):x + w + grow] = True
    wx, wy, ww, wh = shown.windows[i]
    rest = np.zeros_like(truth)
    rest[wy:wy + wh, wx:wx + ww] = True
    rest &= ~near
    positive = np.clip(heat, 0, None)
    assert positive[near].mean() >= 2 * positive[rest].mean()


def test_cli_writes_maps_and_overlays(v3, tmp_path, capsys):
    clear = v3["clear"]
    roi = ",".join(map(str, clear["box"]))
    code = main(["explain", str(v3["index"]), clear["query"], "--roi", roi, "-k", "2", "--masks", "40", "--exclude", "same-patient",
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.strip().startswith("#")]
    assert len(lines) == 2 and "region=" in lines[0]
    maps = np.load(tmp_path / "out" / "maps.npy")
    assert maps.shape == (2, 256, 256)
    summary = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert summary["query"]["region"] == list(clear["box"]) and len(summary["neighbours"]) == 2
    for name in ("query.png", "neighbour-1.png", "neighbour-2.png"):
        with Image.open(tmp_path / "out" / name) as png:
            assert png.size == (512, 512) and png.mode == "RGB"
    # the matched box is drawn in green on the neighbour's overlay
    rgb = np.asarray(Image.open(tmp_path / "out" / "neighbour-1.png"))
    x, y, w, h = summary["neighbours"][0]["region"]
    assert tuple(rgb[2 * y, 2 * x + w]) == (0, 230, 0)


def test_cli_writes_region_maps_as_dicom(v3, tmp_path, capsys):
    """`explain --roi --dicom-out`: per neighbour, its map as a Parametric Map (the values of maps.npy)
    and an overlay Secondary Capture with the matched box, both in the neighbour's study, valid DICOM."""
    import pydicom

    from tests.dicom_validate import dciodvfy_errors

    clear = v3["clear"]
    code = main(["explain", str(v3["index"]), clear["query"], "--roi", ",".join(map(str, clear["box"])), "-k", "2", "--masks", "40",
                 "--exclude", "same-patient", "--out", str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dicom"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert len(payload["dicom"]) == 4 and "wrote 4 DICOM object(s)" in captured.err
    maps = np.load(tmp_path / "out" / "maps.npy")
    objects = {}
    for path in payload["dicom"]:
        assert dciodvfy_errors(Path(path)) == [], path
        ds = pydicom.dcmread(path)
        objects.setdefault(ds.SOPClassUID, []).append(ds)
    pms = sorted(objects["1.2.840.10008.5.1.4.1.1.30"], key=lambda d: int(d.InstanceNumber))
    scs = sorted(objects["1.2.840.10008.5.1.4.1.1.7"], key=lambda d: int(d.InstanceNumber))
    assert len(pms) == len(scs) == 2
    for i, (pm, sc, nb) in enumerate(zip(pms, scs, payload["neighbours"])):
        np.testing.assert_allclose(pm.pixel_array.astype(np.float32), maps[i], rtol=1e-6, atol=1e-7)
        refs = {r.ReferencedSOPInstanceUID for r in sc.SourceImageSequence}
        assert refs == {nb["sop_instance_uid"]} and sc.BurnedInAnnotation == "YES"
        assert payload["status"]["text"] in str(sc.ImageComments)
        x, y, w, h = nb["region"]
        assert tuple(sc.pixel_array[y, x]) == (0, 255, 0) and tuple(sc.pixel_array[y + h - 1, x + w - 1]) == (0, 255, 0)


@pytest.mark.parametrize("argv, says", [
    (["--roi", "1,2,3"], "--roi takes X,Y,W,H"),
    (["--roi", "250,250,20,20"], "outside the query image"),
    (["--roi", "10,10,5,5", "--method", "gradcam"], "region match is explained by perturbation"),
    (["--roi", "10,10,5,5", "--pairwise"], "--pairwise does not apply"),
    (["--out", "x"], "--out applies to a region explanation"),
])
def test_cli_errors_are_one_line(v3, capsys, argv, says):
    code = main(["explain", str(v3["index"]), v3["clear"]["query"], *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and says in err[0], err


def test_explain_eval_scores_region_maps_beside_trivial_maps(v3, tmp_path, capsys):
    archive = v3["archive"]
    code = main(["explain-eval", str(v3["index"]), "--masks-file", str(archive / "masks.h5"), "--roi-boxes", str(archive / "lesion-boxes.csv"),
                 "--n", "21", "-k", "1", "--masks", "40", "--json-out", str(tmp_path / "scores.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "scores.json").read_text())
    assert result["queries"] == 21 and result["scored"] >= 1
    assert set(result["methods"]) == {"relax", "occlusion"} and set(result["trivial"]) == {"centre", "intensity", "edges", "noise"}
    for row in result["methods"].values():
        best = max(result["trivial"][t]["rank_accuracy"] for t in result["trivial"])
        assert row["margin"]["rank_accuracy"] == pytest.approx(row["rank_accuracy"] - best)
        # faithfulness to the match score: deletion (lower is better) and insertion areas, beside the trivial maps'
        lowest = min(result["trivial"][t]["deletion_auc"] for t in result["trivial"])
        assert 0 < row["deletion_auc"] <= 1 and 0 < row["insertion_auc"] <= 1  # areas of the match score, in (0, 1]
        assert row["margin"]["deletion_auc"] == pytest.approx(lowest - row["deletion_auc"])
    assert "margin over the best trivial map" in out
    # the index keeps the evaluation, and a region explanation on it quotes it (not the whole-image one)
    relax = result["methods"]["relax"]
    status = region_method_status(v3["index"], "relax")
    assert status["evaluated"] and status["margin"] == pytest.approx(relax["margin"]["rank_accuracy"])
    assert method_status(v3["index"], "relax")["evaluated"] is False
    clear = v3["clear"]
    code = main(["explain", str(v3["index"]), clear["query"], "--roi", ",".join(map(str, clear["box"])), "-k", "1", "--masks", "20"])
    out = capsys.readouterr().out
    assert code == 0 and "region-match RELAX: explain-eval --roi-boxes" in out and f"margin {relax['margin']['rank_accuracy']:+.3f}" in out, out
    assert "not for diagnosis" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("sop_instance_uid,x,y\n1.2.3,1,2\n")
    code = main(["explain-eval", str(v3["index"]), "--masks-file", str(archive / "masks.h5"), "--roi-boxes", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "lacks column(s) w, h" in err[0], err


def test_deletion_and_insertion_score_a_map_against_the_match_score():
    """The curves start and end where they must (the neighbourhood as it is, all background), a
    map carried to the stored grid and back is the same map, and on a synthetic match the map that
    ranks the structure first deletes the score faster, and restores it faster, than its reverse."""
    from medcbir.explain import region_faithfulness as RF
    from medcbir.explain.regions import MatchScore, relax_map
    from medcbir.indexer.region_index import RegionMetric

    rng = np.random.default_rng(1)
    pixels = rng.normal(40, 5, (96, 96)).astype(np.float32)
    pixels[40:52, 44:56] += 120  # a bright structure
    image = region_image(Item(ItemMeta(sop_instance_uid="x", modality="CT", pixel_spacing=(1.4, 1.4)), pixels))
    box = image.to_grid((44, 40, 12, 12))
    hood = Neighbourhood.around(image, box)
    others = rng.normal(0, 1, (400, region_descriptor.DIM)).astype(np.float32) + hood.describe(hood.crop[None])
    metric = RegionMetric.fit(others)
    score = MatchScore(metric, metric(hood.describe(hood.crop[None]))[0] + 0.3)
    heat = relax_map(hood, score, n_masks=128)
    deletion, insertion = RF.curves(hood, score, heat, steps=8)
    full, empty = score(hood.describe(np.stack([hood.crop, hood.background])))
    assert deletion[0] == pytest.approx(full) and deletion[-1] == pytest.approx(empty)
    assert insertion[0] == pytest.approx(empty) and insertion[-1] == pytest.approx(full)
    np.testing.assert_allclose(hood.from_stored(hood.to_stored(heat))[2:-2, 2:-2], heat[2:-2, 2:-2], atol=0.05 * np.abs(heat).max())
    good, bad = RF.faithfulness(hood, score, heat), RF.faithfulness(hood, score, -heat)
    assert good["deletion_auc"] < bad["deletion_auc"] and good["insertion_auc"] > bad["insertion_auc"]
    with pytest.raises(ValueError):
        RF.curves(hood, score, heat[1:])


def test_the_public_api_explains_a_region_match(v3):
    import medcbir
    from medcbir.errors import ConfigError
    from medcbir.explain.regions import RegionExplanation

    clear = v3["clear"]
    i = clear["rank"]
    shown = medcbir.explain(v3["index"], clear["query"], k=i + 1, roi=clear["box"], method="occlusion")
    assert isinstance(shown, RegionExplanation) and shown.neighbours[i].id == clear["hit"] and shown.neighbours[i].meta
    with pytest.raises(ConfigError, match="region match"):
        medcbir.explain(v3["index"], clear["query"], k=1, roi=clear["box"], pairwise=True)


def test_a_box_holds_a_lesion_it_covers_or_lies_in_not_one_it_grazes(tmp_path):
    ids = np.zeros((40, 40), np.uint8)
    ids[10:20, 10:20] = 1  # a 10 × 10 lesion
    ids[30:34, 30:34] = 2  # a 4 × 4 lesion
    with h5py.File(tmp_path / "masks.h5", "w") as fh:
        fh["a/lesion-id"] = ids
    with h5py.File(tmp_path / "masks.h5", "r") as fh:
        assert lesion_truth(fh, "a", (12, 12, 4, 4)).sum() == 100  # a box on the lesion's core
        assert lesion_truth(fh, "a", (26, 26, 12, 12)).sum() == 16  # a box around a small lesion
        assert lesion_truth(fh, "a", (19, 5, 10, 10)) is None  # one column of the lesion in a 10 × 10 box
        assert lesion_truth(fh, "a", (0, 0, 5, 5)) is None and lesion_truth(fh, "b", (0, 0, 5, 5)) is None
