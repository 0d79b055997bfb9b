"""The paper tables: our numbers beside the paper's cells, never an invented or unsourced paper figure."""

from __future__ import annotations

import json

import pytest

from medcbir.reproduce import PAPERS, paper_module
from medcbir.reproduce.budget import DEFAULT, TEST
from medcbir.reproduce.table import NOT_IN_PAPER, SEE_PAPER, Claim, Column, Source, Table

SRC = Source("https://example.org/paper", "Table 2")


def table(**kw) -> Table:
    args = dict(paper="p", title="t", columns=[Column("a", "A"), Column("b", "B", "low")], rows=["ours-1", "ours-2"],
                extra_rows=["baseline"], paper_cells={"ours-1": {"a": 0.5}}, paper_sources={"ours-1": {"a": "t2"}},
                sources={"t2": SRC}, reference="arXiv:0000.00000")
    args.update(kw)
    return Table(**args)


def test_cells_say_where_the_number_comes_from(tmp_path):
    t = table(claims=[Claim("It works.", "t2")], paper_notes=["B is not verified."])
    t.set("ours-1", "a", 0.25)
    t.set("baseline", "b", float("nan"))
    t.notes.append("a run note")
    with pytest.raises(KeyError):
        t.set("not-a-row", "a", 1.0)
    md_path, json_path = t.write(tmp_path)
    md = md_path.read_text()
    assert "| A ↑ ours | A paper | B ↓ ours | B paper |" in md
    assert "| ours-1 | 0.250 | 0.500 [1] | – | see paper |" in md
    assert "| baseline | – | not in paper | – | not in paper |" in md
    assert "- [1] https://example.org/paper — Table 2" in md
    assert "1 of 4 quoted" in md and "not verified: ours-1 / B; ours-2 / A; ours-2 / B" in md and "arXiv:0000.00000" in md
    assert '"It works." [1]' in md and "- B is not verified." in md and "- a run note" in md
    data = json.loads(json_path.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert rows["ours-1"]["paper"] == {"a": 0.5, "b": SEE_PAPER} and rows["ours-1"]["ours"] == {"a": 0.25, "b": None}
    assert rows["ours-1"]["paper_source"] == {"a": "t2", "b": None}
    assert rows["baseline"]["paper"] == {"a": NOT_IN_PAPER, "b": NOT_IN_PAPER} and not rows["baseline"]["in_paper"]
    assert data["paper_sources"] == {"t2": {"url": "https://example.org/paper", "where": "Table 2", "title": ""}}
    assert data["paper_unverified"] == ["ours-1 / B", "ours-2 / A", "ours-2 / B"] and data["reference"] == "arXiv:0000.00000"
    assert data["notes"] == ["a run note"] and data["paper_notes"] == ["B is not verified."]


def test_a_paper_cell_without_a_source_is_refused():
    with pytest.raises(ValueError, match="has no source"):
        table(paper_sources={})
    with pytest.raises(ValueError, match="has no source"):
        table(paper_cells={"ours-1": {"a": "better than ours-2"}}, paper_sources={})  # a quoted claim needs one too
    with pytest.raises(ValueError, match="unknown source"):
        table(paper_sources={"ours-1": {"a": "nowhere"}})
    with pytest.raises(ValueError, match="URL"):
        table(sources={"t2": Source("the paper", "Table 2")})
    with pytest.raises(ValueError, match="not one of the paper's rows"):
        table(paper_cells={"baseline": {"a": 0.5}}, paper_sources={"baseline": {"a": "t2"}})
    with pytest.raises(ValueError, match="unknown source"):
        table(claims=[Claim("It works.", "elsewhere")])
    t = table()
    t.paper_cells["ours-2"] = {"b": 0.1}  # added after construction: refused when written
    with pytest.raises(ValueError, match="has no source"):
        t.markdown()
    assert table(paper_cells={"ours-1": {"a": SEE_PAPER}}, paper_sources={}).paper_cell("ours-1", "a") == SEE_PAPER


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_every_paper_table_sources_its_paper_cells(paper):
    module = paper_module(paper)
    t = module.empty_table(DEFAULT.angles) if paper == "saranchuk" else module.empty_table()
    t.check()
    assert t.reference, "a table says where its paper's figures can be looked up"
    data = t.to_dict()
    for r in data["rows"]:
        for key, cell in r["paper"].items():
            if cell in (SEE_PAPER, NOT_IN_PAPER):
                assert r["paper_source"][key] is None
                continue
            assert r["in_paper"], (r["row"], key)
            src = data["paper_sources"][r["paper_source"][key]]
            assert src["url"].startswith(("http://", "https://")) and src["where"], (r["row"], key, src)
    md = t.markdown()
    assert "Paper cells:" in md and "Paper reference:" in md or not t.unverified()
    for name, src in t.sources.items():
        assert src.url in md, name


def test_budgets_are_checked():
    assert TEST.check() is TEST and DEFAULT.check() is DEFAULT
    from medcbir.errors import ConfigError

    for bad in ({"patients": 2}, {"slices": 5}, {"size": 32}, {"minutes": 0}):
        with pytest.raises(ConfigError):
            DEFAULT.with_(**bad)
    assert DEFAULT.with_(minutes=None, epochs=3).epochs == 3


def _seeds_benchmark():
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("seeds_benchmark", bench / "seeds.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def test_seeds_render_reads_our_numbers_back_from_a_recorded_table():
    """``benchmarks/seeds.py --render`` rebuilds a recorded table with the current paper cells, our numbers unchanged."""
    seeds = _seeds_benchmark()
    recorded = paper_module("eskandari").empty_table()
    values = {"adc": 9.229, "pic": None, "seconds_per_image": 2183.4, "speedup": 1, "rank_accuracy": -0.25}
    for row in recorded.rows + recorded.extra_rows:
        for key, value in values.items():
            recorded.set(row, key, value)
    recorded.notes = ["a run note"]
    fresh = paper_module("eskandari").empty_table()
    ours, notes = seeds._parse_recorded(recorded.markdown(), fresh)
    assert notes == ["a run note"]
    for row, cells in ours.items():
        for key, value in cells.items():
            fresh.set(row, key, value)
    fresh.notes = notes
    assert fresh.markdown() == recorded.markdown()
    other = paper_module("zhang").empty_table()
    with pytest.raises(SystemExit, match="columns"):
        seeds._parse_recorded(recorded.markdown(), other)
