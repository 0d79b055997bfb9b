"""The public API (medcbir/__init__.py, medcbir/api.py): its examples run here, on a phantom archive."""

from __future__ import annotations

import doctest
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medcbir

API = ("index", "open_index", "search", "evaluate", "explain", "embed", "refresh_regions")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """3 patients × 8 slices at 64 px, indexed with thumbnail:8: what the docstring examples use."""
    from medcbir.imaging.phantom import make_archive

    root = tmp_path_factory.mktemp("api")
    archive = root / "archive"
    make_archive(archive, patients=3, slices=8, seed=3, size=64)
    medcbir.index(root / "index", archive, "thumbnail:8", workers=1)
    query = sorted(p for p in archive.rglob("*.dcm"))[0]
    return {"archive": archive, "index_dir": root / "index", "query": str(query)}


@pytest.mark.parametrize("module", ["medcbir", "medcbir.api"])
def test_the_examples_run(module, phantom, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("MEDCBIR_CACHE", str(tmp_path / "cache"))
    extraglobs = {**phantom, "tmp": tmp_path}
    result = doctest.testmod(importlib.import_module(module), extraglobs=extraglobs, optionflags=doctest.ELLIPSIS, report=True)
    assert result.attempted > (2 if module == "medcbir" else 15)
    assert result.failed == 0


def test_importing_medcbir_loads_neither_torch_nor_faiss():
    code = "import sys, medcbir; medcbir.__all__; print(sorted(m for m in ('torch', 'faiss', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_the_public_api():
    env = {**os.environ, "PAGER": "cat"}
    out = subprocess.run([sys.executable, "-c", "import medcbir; help(medcbir)"], capture_output=True, text=True, check=True, env=env).stdout
    functions = out[out.index("\nFUNCTIONS\n"):]
    for name in ("index", "open_index", "search", "evaluate", "embed"):
        assert f"\n    {name}(" in functions, name
    assert "explain (package)" in out and "``explain(index, query" in out  # the package, callable


def test_one_first_argument_and_one_exclude_default():
    for name in API:
        fn = getattr(medcbir.api, name)
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == ("archive" if name == "embed" else "index"), name
        if "exclude" in inspect.signature(fn).parameters:
            assert inspect.signature(fn).parameters["exclude"].default == medcbir.EXCLUDE == "same-patient", name
    assert {n for n in API if "exclude" in inspect.signature(getattr(medcbir.api, n)).parameters} == {"search", "evaluate", "explain"}


def test_an_open_engine_and_a_path_give_the_same_answers(phantom):
    with medcbir.open_index(phantom["index_dir"]) as engine:
        by_engine = medcbir.search(engine, [phantom["query"]], k=4)
        assert medcbir.open_index(engine) is engine
        evaluation = medcbir.evaluate(engine, phantom["archive"] / "labels.csv", k=3)
    by_path = medcbir.search(phantom["index_dir"], [phantom["query"]], k=4)
    assert [(n.id, n.rank) for n in by_engine[0]] == [(n.id, n.rank) for n in by_path[0]]
    assert by_path[0][0].meta["sop_instance_uid"]  # metadata outlives the engine the call opened
    assert evaluation == medcbir.evaluate(phantom["index_dir"], phantom["archive"] / "labels.csv", k=3)


def test_explain_is_both_the_package_and_the_api_function(phantom):
    result = medcbir.explain(phantom["index_dir"], phantom["query"], k=1, method="gradcam")
    assert type(result).__name__ == "Explanation" and result.heatmaps.shape[0] == 2
    assert "relax" in medcbir.explain.METHODS
    import medcbir.explain.metrics as metrics

    assert metrics.__name__ == "medcbir.explain.metrics"


def test_embed_matches_what_the_index_stored(phantom):
    found = medcbir.embed([Path(phantom["query"])], "thumbnail:8")
    with medcbir.open_index(phantom["index_dir"]) as engine:
        [[hit]] = medcbir.search(engine, [found.vectors[0]], k=1, exclude="none")
        stored = engine.embeddings([hit.id])[0]
    assert (hit.meta["sop_instance_uid"], hit.meta["frame"]) == found.keys[0]
    assert abs(float(stored @ found.vectors[0]) - 1.0) < 1e-5
