"""WILDCAT class maps as an explanation method: which class is mapped, and explain / explain-eval on a real index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcbir.cli.main import main
from medcbir.device import Device
from medcbir.engine import Engine
from medcbir.explain import METHODS, explain_search, wildcat
from medcbir.explain.base import to_heatmap
from medcbir.explain.wildcat import SAME_EMBEDDING
from medcbir.encoders.runtime import load_encoder_module
from medcbir.train.finetune import FinetuneConfig, finetune
from medcbir.encoders.wildcat import predict
from tests.explain.indexes import query_file


@pytest.fixture(scope="module")
def head_checkpoint(explain_index, phantom_archive, tmp_path_factory):
    """The index's encoder with a WILDCAT head fine-tuned on liver / no-liver (frozen backbone: same fingerprint)."""
    out = tmp_path_factory.mktemp("wildcat-explain") / "wildcat.pt"
    finetune(FinetuneConfig(encoder=explain_index.parent / "encoder.pt", archive=phantom_archive, labels=phantom_archive / "labels-liver.csv",
                            out=out, epochs=10, batch_size=8, lr=0.2, maps_per_class=4, device=Device.cpu(), progress=False, workers=1))
    return out


def _expected(module, images: torch.Tensor, classes) -> np.ndarray:
    _, maps = predict(module, images)
    picked = maps[torch.arange(len(images)), torch.as_tensor(classes)]
    return to_heatmap(picked, tuple(images.shape[-2:])).numpy()


def test_wildcat_is_a_registered_method_choosing_its_class(head_checkpoint):
    assert METHODS["wildcat"] is wildcat
    module = load_encoder_module(head_checkpoint)
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    scores, _ = predict(module, images)
    predicted = scores.argmax(1)
    # own targets: each image's predicted class
    np.testing.assert_allclose(wildcat(module, images).numpy(), _expected(module, images, predicted), atol=1e-6)
    # a given class, by name or index
    liver = module.wildcat.classes.index("liver")
    np.testing.assert_allclose(wildcat(module, images, classes="liver").numpy(), _expected(module, images, [liver] * 4), atol=1e-6)
    np.testing.assert_allclose(wildcat(module, images, classes=[1, 0, 1, 0]).numpy(), _expected(module, images, [1, 0, 1, 0]), atol=1e-6)
    # a target that is the embedding of a batch image: that image's predicted class
    with torch.no_grad():
        emb = F.normalize(module(images), dim=1)
    np.testing.assert_allclose(wildcat(module, images, emb[2:3]).numpy(), _expected(module, images, [predicted[2]] * 4), atol=1e-6)
    # a target from outside the batch (a blank image's embedding): the class of the nearest prototype
    with torch.no_grad():
        target = F.normalize(module(torch.zeros(1, 1, 64, 64)), dim=1)
    assert float((target @ emb.T).max()) < SAME_EMBEDDING
    nearest = int((target @ F.normalize(module.wildcat.prototypes, dim=1).T).argmax())
    np.testing.assert_allclose(wildcat(module, images, target).numpy(), _expected(module, images, [nearest] * 4), atol=1e-6)


def test_explain_search_maps_the_class_predicted_for_the_query(explain_index, phantom_archive, head_checkpoint):
    engine = Engine.open(explain_index, encoder=str(head_checkpoint))
    res = explain_search(engine, str(query_file(phantom_archive, 1, 9)), k=3, method="wildcat", pairwise=True, exclude="same-patient")
    module = engine.encoder.module
    images = torch.from_numpy(res.images)
    scores, _ = predict(module, images)
    predicted = scores.argmax(1)
    # query: its own class; neighbours: the query's class; pairwise rows: each neighbour's class
    np.testing.assert_allclose(res.heatmaps, _expected(module, images, [predicted[0]] * 4), atol=1e-5)
    np.testing.assert_allclose(res.pairwise, _expected(module, images[:1].expand(3, -1, -1, -1), predicted[1:]), atol=1e-5)


def test_explain_and_explain_eval_run_with_wildcat(explain_index, phantom_archive, head_checkpoint, tmp_path, capsys):
    query = query_file(phantom_archive)
    code = main(["explain", str(explain_index), str(query), "-k", "2", "--method", "wildcat", "--encoder", str(head_checkpoint),
                 "--wildcat-class", "liver", "--json", "--report", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["method"] == "wildcat" and payload["heatmap_shape"] == [3, 64, 64] and (tmp_path / "r.png").is_file()

    out_json = tmp_path / "scores.json"
    code = main(["explain-eval", str(explain_index), "--masks-file", str(phantom_archive / "masks.h5"), "--methods", "wildcat,gradcam",
                 "--n", "2", "--angles", "0,90", "--encoder", str(head_checkpoint), "--json-out", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line.split()[0] for line in captured.out.splitlines()[2:4]] == ["wildcat", "gradcam"]
    data = json.loads(out_json.read_text())
    assert data["targets"] == "query" and 0 <= data["methods"]["wildcat"]["rank_accuracy"] <= 1
    assert 0 <= data["methods"]["wildcat"]["dice_rotation"] <= 1

    code = main(["explain-eval", str(explain_index), "--masks-file", str(phantom_archive / "masks.h5"), "--methods", "wildcat", "--n", "2",
                 "--angles", "", "--targets", "own", "--wildcat-class", "liver", "--encoder", str(head_checkpoint)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "targets: own" in captured.out.splitlines()[0] and captured.out.splitlines()[2].split()[0] == "wildcat"


def test_wildcat_without_a_head_is_one_line(explain_index, phantom_archive, head_checkpoint, capsys):
    assert main(["explain", str(explain_index), str(query_file(phantom_archive)), "-k", "1", "--method", "wildcat"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: this encoder has no WILDCAT head") and err.count("\n") == 1
    code = main(["explain", str(explain_index), str(query_file(phantom_archive)), "-k", "1", "--method", "wildcat", "--encoder",
                 str(head_checkpoint), "--wildcat-class", "spleen"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: unknown WILDCAT class 'spleen'")
