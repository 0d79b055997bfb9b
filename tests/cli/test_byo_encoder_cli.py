"""Your own encoder through the CLI, for every kind: index → search → explain → evaluate, the
index refusing an encoder whose weights changed, `verify --json` naming the spec, `embed`,
`encoder-spec`, `finetune --head wildcat` and `orthanc-config` with a spec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medcbir.cli.main import main
from tests.byo_models import changed_copy

KINDS = ("densenet", "hf-resnet", "hf-vit", "onnx", "torchscript")
#: what a gradient/CAM explanation does per kind: runs, or is refused naming what runs
GRADCAM = {"densenet": 0, "hf-resnet": 0, "hf-vit": 0, "onnx": "relax and occlusion run on it", "torchscript": "relax, occlusion, gradient"}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def query_of(archive: Path) -> Path:
    return sorted(archive.rglob("*.dcm"))[12]


@pytest.fixture(scope="module")
def byo_indexes(byo_models, phantom_archive, tmp_path_factory) -> dict[str, Path]:
    """The phantom archive indexed once with each user encoder."""
    root = tmp_path_factory.mktemp("byo-indexes")
    out = {}
    for name in KINDS:
        index = root / name
        assert main(["index", str(phantom_archive), "--encoder", byo_models[name]["encoder"], "--out", str(index), "--workers", "1", "--no-progress"]) == 0, name
        out[name] = index
    return out


@pytest.mark.parametrize("name", KINDS)
def test_index_search_explain_evaluate(byo_indexes, byo_models, phantom_archive, name, capsys):
    index = byo_indexes[name]
    code, out, err = run(capsys, "verify", index, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["items"] == 80, err
    spec = report["encoder"]["spec"]  # verify names the spec the index was built with
    assert spec["kind"] == {"densenet": "torch", "hf-resnet": "huggingface", "hf-vit": "huggingface"}.get(name, name)
    arg = byo_models[name]["encoder"]
    assert report["encoder"]["source"] == (arg if arg.startswith("hf:") else str(Path(arg).resolve()))

    code, out, err = run(capsys, "search", index, query_of(phantom_archive), "-k", "3", "--json")
    assert code == 0, err
    assert len(json.loads(out)[0]["neighbours"]) == 3

    code, out, err = run(capsys, "explain", index, query_of(phantom_archive), "-k", "2", "--masks", "40", "--json")
    assert code == 0, err
    assert json.loads(out)["heatmap_shape"] == [3, 64, 64]
    method = "gradient" if name == "onnx" else "gradcam"
    code, out, err = run(capsys, "explain", index, query_of(phantom_archive), "-k", "2", "--method", method, "--json")
    if GRADCAM[name] == 0:
        heat = json.loads(out)
        assert code == 0 and heat["method"] == "gradcam" and heat["heatmap_shape"] == [3, 64, 64], err
    else:
        assert code == 1 and err.startswith("error: ") and GRADCAM[name] in err and len(err.strip().splitlines()) == 1, err

    code, out, err = run(capsys, "evaluate", index, "--labels", phantom_archive / "labels.csv", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_queries"] == 80 and 0.0 < result["map_at_k"] <= 1.0


def test_evaluate_with_baselines(byo_indexes, phantom_archive, capsys):
    code, out, err = run(capsys, "evaluate", byo_indexes["hf-vit"], "--labels", phantom_archive / "labels.csv", "--baselines", "--workers", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"thumbnail:16", "random", "classic"} <= set(result["baselines"]) and result["n_queries"] == 80


@pytest.mark.parametrize("name", ["hf-resnet", "onnx", "densenet"])
def test_an_index_refuses_the_encoder_once_a_weight_changed(byo_indexes, byo_models, phantom_archive, name, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(byo_indexes[name], index)
    changed = changed_copy(byo_models[name], name, tmp_path)
    code, out, err = run(capsys, "index", phantom_archive, "--encoder", changed, "--out", index, "--workers", "1", "--no-progress")
    assert code == 1 and err.startswith("error: index built with encoder") and len(err.strip().splitlines()) == 1, err
    code, out, err = run(capsys, "search", index, query_of(phantom_archive), "--encoder", changed)
    assert code == 1 and "index built with encoder" in err
    code, out, err = run(capsys, "verify", index, "--json")
    assert code == 0 and json.loads(out)["items"] == 80  # nothing indexed was lost


def test_embed_writes_npz_and_parquet_equal_to_the_index(byo_indexes, byo_models, phantom_archive, tmp_path, capsys):
    from medcbir.engine import Engine

    code, out, err = run(capsys, "embed", phantom_archive, "--encoder", byo_models["hf-resnet"]["encoder"], "--out", tmp_path / "e.npz",
                         "--workers", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["items"] == 80
    saved = np.load(tmp_path / "e.npz")
    assert saved["vectors"].shape == (80, 16) and saved["frame"].dtype == np.int64 and len(saved["sop_instance_uid"]) == 80
    with Engine.open(byo_indexes["hf-resnet"]) as engine:
        ids = engine.lookup.find([str(u) for u in saved["sop_instance_uid"]], [int(f) for f in saved["frame"]])
        np.testing.assert_allclose(engine.embeddings(ids), saved["vectors"], atol=1e-5)  # the indexer's embedding step
        assert str(saved["fingerprint"]) == engine.store.encoder_info["fingerprint"]
    files = sorted(phantom_archive.rglob("*.dcm"))[:3]
    code, out, err = run(capsys, "embed", *files, "--encoder", byo_models["onnx"]["encoder"], "--out", tmp_path / "e.parquet", "--workers", "1")
    assert code == 0, err
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["sop_instance_uid", "frame", "vector"] and table.num_rows == 3
    assert b"medcbir.fingerprint" in table.schema.metadata
    code, out, err = run(capsys, "embed", phantom_archive, "--out", tmp_path / "e.csv")
    assert code == 1 and err.startswith("error: --out") and "write .npz or .parquet" in err


def test_encoder_spec_writes_a_spec_that_opens(byo_models, tmp_path, capsys):
    folder = Path(byo_models["hf-vit"]["encoder"]).parent / "hf-vit"
    out = tmp_path / "specs" / "vit.json"
    code, text, err = run(capsys, "encoder-spec", "--kind", "huggingface", "--model", folder, "--output", "mean-tokens",
                          "--windows", "CT=ct-lung,*=robust", "--crop", "none", "--out", out)
    assert code == 0, err
    assert "32-d" in text and "feature layer layers.1.layernorm_before" in text and f"wrote {out}" in text
    spec = json.loads(out.read_text())
    assert spec["kind"] == "huggingface" and spec["output"] == "mean-tokens" and spec["crop"] == "none"
    assert spec["input"]["size"] == 64 and spec["input"]["channels"] == 3
    code, text, err = run(capsys, "encoder-spec", "--kind", "huggingface", "--model", "org/model", "--out", tmp_path / "x.json")
    assert code == 1 and "hub name" in err and not (tmp_path / "x.json").exists()
    code, text, err = run(capsys, "encoder-spec", "--help")
    for field in ("--kind", "--model", "--class", "--kwargs", "--weights", "--size", "--channels", "--mean", "--std", "--windows",
                  "--crop", "--fov-mm", "--output", "--feature-layer", "--prefix-tokens"):
        assert field in text


def test_finetune_a_wildcat_head_on_a_user_encoder(byo_indexes, byo_models, phantom_archive, tmp_path, capsys):
    out = tmp_path / "wildcat.pt"
    code, text, err = run(capsys, "finetune", byo_models["hf-vit"]["encoder"], phantom_archive, "--labels", phantom_archive / "labels-liver.csv",
                          "--out", out, "--epochs", "1", "--batch-size", "16", "--workers", "1", "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["fingerprint"] == summary["base_fingerprint"]  # the head rides on the user's frozen model
    code, text, err = run(capsys, "explain", byo_indexes["hf-vit"], query_of(phantom_archive), "-k", "2", "--method", "wildcat",
                          "--encoder", out, "--json")
    assert code == 0, err
    assert json.loads(text)["heatmap_shape"] == [3, 64, 64]


def test_orthanc_config_records_a_spec_and_hf_dir_absolutely(byo_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(byo_models["hf-resnet"]["folder"]).parent)
    for arg, want in ((Path(byo_models["hf-vit"]["encoder"]).name, byo_models["hf-vit"]["encoder"]),
                      ("hf:hf-resnet", byo_models["hf-resnet"]["encoder"])):
        out = tmp_path / "orthanc.json"
        code, text, err = run(capsys, "orthanc-config", out, "--index", tmp_path / "index", "--encoder", arg, "--allow-any-store")
        assert code == 0, err
        assert json.loads(out.read_text())["Medcbir"]["Encoder"] == want
    code, text, err = run(capsys, "orthanc-config", tmp_path / "o.json", "--index", tmp_path / "index", "--encoder", "hf:absent")
    assert code == 1 and "no local model folder" in err
