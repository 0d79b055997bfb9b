"""Explanation scores that can tell methods apart: targets, trivial baselines, n/a, margins.

The hand-built :class:`PatchEncoder` with :func:`matched_pairs` makes the similarity between a
neighbour and its query depend on one known region, so the right answer of every metric is known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain import occlusion, relax
from medcbir.explain.evaluation.run import evaluate_explanations, relevance_rank_and_margin
from medcbir.explain.evaluation.tables import format_table
from medcbir.explain.evaluation.scoring import not_applicable
from medcbir.explain.metrics import average_drop_increase, deletion_auc, insertion_auc, relevance_rank_accuracy
from medcbir.explain.trivial_maps import TRIVIAL_MAPS
from tests.explain.toys import PatchEncoder, blob_images, matched_pairs

S = 32
REGION = torch.zeros(S, S, dtype=torch.bool)
REGION[8:24, 4:20] = True  # on the 4-px cell grid, off the image centre
OPTIONS = {"relax": {"n_masks": 500, "seed": 0}, "occlusion": {"window": 4, "stride": 4}}


@pytest.fixture(scope="module")
def pairs():
    neighbours, queries = matched_pairs(4, REGION, seed=0)
    return PatchEncoder(), neighbours, queries


def _targets(encoder, queries):
    return torch.nn.functional.normalize(encoder(queries), dim=1)


def test_perturbation_metrics_move_the_right_way_with_query_targets(pairs):
    encoder, images, queries = pairs
    t = _targets(encoder, queries)
    oracle = REGION.float().expand(len(images), S, S)
    anti = 1 - oracle
    scores = {}
    for name, heat in (("oracle", oracle), ("anti", anti)):
        scores[name] = {
            "del": np.mean([deletion_auc(encoder, images[i], heat[i], t[i]) for i in range(len(images))]),
            "ins": np.mean([insertion_auc(encoder, images[i], heat[i], t[i]) for i in range(len(images))]),
            **average_drop_increase(encoder, images, heat, t),
        }
    o, a = scores["oracle"], scores["anti"]
    # removing the shared region first kills the match; removing the rest first does not
    assert o["del"] < a["del"] - 0.3
    assert o["ins"] > a["ins"] + 0.3
    # keeping only the region removes the dilution: the match gets stronger for every pair
    assert o["adc"] == pytest.approx(0.0) and o["pic"] == 100.0
    assert a["adc"] > 80 and a["pic"] == 0.0


@pytest.mark.parametrize("method", [relax, occlusion])
def test_the_known_region_gets_the_highest_relevance(pairs, method):
    encoder, images, queries = pairs
    heat = method(encoder, images, _targets(encoder, queries), **OPTIONS[method.__name__])
    for h in heat:
        assert h[REGION].mean() > h[~REGION].mean()
        assert relevance_rank_accuracy(h, REGION) >= 0.8, method.__name__


def test_query_targets_score_every_metric_and_beat_the_trivial_maps(pairs):
    encoder, images, queries = pairs
    masks = [REGION.numpy()] * len(images)
    result = evaluate_explanations(encoder, images, masks, queries, methods=("relax", "occlusion"), options=OPTIONS)
    assert result["targets"] == "query" and result["not_applicable"] == {}
    assert 0.5 < result["target_similarity"] < 0.95
    assert set(result["trivial"]) == set(TRIVIAL_MAPS)
    for name in ("relax", "occlusion"):
        r = result["methods"][name]
        assert r["pic"] is not None and r["pic"] > 50
        # a faithful map beats every trivial map on localisation and on the perturbation curves
        for key in ("rank_accuracy", "deletion_auc", "insertion_auc"):
            assert r["margin"][key] > 0, (name, key, r["margin"][key], r["best_trivial"][key])
        best = result["trivial"][r["best_trivial"]["rank_accuracy"]]["rank_accuracy"]
        assert r["margin"]["rank_accuracy"] == pytest.approx(r["rank_accuracy"] - best)
        best_del = result["trivial"][r["best_trivial"]["deletion_auc"]]["deletion_auc"]
        assert r["margin"]["deletion_auc"] == pytest.approx(best_del - r["deletion_auc"])  # ↓ metric


def test_pic_is_not_applicable_for_own_targets(pairs):
    encoder, images, _ = pairs
    result = evaluate_explanations(encoder, images, [REGION.numpy()] * len(images), None, methods=("occlusion",), options=OPTIONS)
    assert result["targets"] == "own"
    assert "already 1" in result["not_applicable"]["pic"]
    for row in [*result["methods"].values(), *result["trivial"].values()]:
        assert row["pic"] is None
    assert result["methods"]["occlusion"]["margin"]["pic"] is None
    table = format_table(result)
    occlusion_row = next(line for line in table.splitlines() if line.startswith("occlusion"))
    assert "n/a" in occlusion_row
    assert any(line.startswith("n/a PIC↑: own-embedding targets") for line in table.splitlines())
    assert "targets: own" in table.splitlines()[0]


class ConstantEncoder(nn.Module):
    """Ignores its input: no perturbation can move the similarity."""

    def forward(self, x):
        return torch.ones(x.shape[0], 4) + 0 * x.flatten(1)[:, :4]


def test_a_metric_no_map_can_move_is_not_applicable():
    images = blob_images(3, S, seed=1)
    result = evaluate_explanations(ConstantEncoder(), images, [REGION.numpy()] * 3, blob_images(3, S, seed=2), methods=("occlusion",))
    for key in ("deletion_auc", "insertion_auc", "adc", "pic"):
        assert "barely moves" in result["not_applicable"][key]
        assert result["methods"]["occlusion"][key] is None and result["trivial"]["noise"][key] is None
    # localisation does not depend on the encoder's response: still a number
    assert result["methods"]["occlusion"]["rank_accuracy"] is not None
    assert not_applicable({"a": {"deletion_auc": 0.2}, "b": {"deletion_auc": 0.6}}, "query") == {}


def test_relevance_rank_and_margin_for_quality_benchmarks(pairs):
    encoder, images, queries = pairs
    masks = [REGION.numpy()] * len(images)
    out = relevance_rank_and_margin(encoder, images, masks, queries, methods=("occlusion",), options=OPTIONS)
    full = evaluate_explanations(encoder, images, masks, queries, methods=("occlusion",), options=OPTIONS)
    r = out["methods"]["occlusion"]
    assert out["targets"] == "query"
    assert r["rank_accuracy"] == pytest.approx(full["methods"]["occlusion"]["rank_accuracy"])
    assert r["margin"]["rank_accuracy"] == pytest.approx(full["methods"]["occlusion"]["margin"]["rank_accuracy"])
    assert set(out["trivial"]) == set(TRIVIAL_MAPS)


def test_bad_inputs_raise_config_error(pairs):
    encoder, images, queries = pairs
    with pytest.raises(ConfigError, match="masks"):
        evaluate_explanations(encoder, images, [REGION.numpy()], queries, methods=("occlusion",))
    with pytest.raises(ConfigError, match="trivial map"):
        evaluate_explanations(encoder, images, [REGION.numpy()] * 4, queries, methods=("occlusion",), trivial=("sky",))
    with pytest.raises(ConfigError, match="parameters"):
        evaluate_explanations(encoder, images, [REGION.numpy()] * 4, queries, methods=("occlusion",), trivial=(), sanity=True)


def test_masks_follow_the_body_crop_of_their_images(phantom_archive):
    """explain-eval's masks go through the image's own crop: the body mask drawn on the
    preprocessed image is the body mask of the original slice passed through ``mask_like``."""
    import h5py

    from medcbir.explain.evaluation.selection import mask_like
    from medcbir.imaging import Preprocessing, read_dicom, resize_keep_aspect

    path = sorted(phantom_archive.rglob("*.dcm"))[10]
    item = read_dicom(path)[0]
    with h5py.File(phantom_archive / "masks.h5", "r") as fh:
        liver = np.asarray(fh[item.meta.sop_instance_uid]["liver"]) > 0
    body = np.asarray(item.pixels, dtype=np.float32) > -300  # HU: air outside, tissue inside
    cropped = Preprocessing(("ct-liver-wide",), size=64, crop="body")
    assert cropped.crop == "body"
    on_image = cropped.geometry(item) > -300
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(mask_like(cropped, item, body), on_image) > 0.95
    # the uncropped resize puts the body elsewhere: the mistake mask_like avoids
    assert iou(resize_keep_aspect(body.astype(np.float32), 64, fill=0.0) > 0.5, on_image) < 0.9
    # and a real organ mask keeps its share of the body
    share = liver.sum() / body.sum()
    assert abs(mask_like(cropped, item, liver).sum() / on_image.sum() - share) < 0.1 * share + 0.01
