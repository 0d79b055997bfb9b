"""The paper tables: our numbers beside the paper's cells, never an unsourced paper figure."""

from __future__ import annotations

import json

import pytest

from medcbir.reproduce import PAPERS, paper_module
from medcbir.reproduce.budget import DEFAULT, TEST
from medcbir.reproduce.table import NOT_IN_PAPER, NOT_REPORTED, Claim, Column, Source, Table

SRC = Source("Doe et al. 2020", "Table 2", "papers/000_doe.txt")
SEC = Source("Doe et al. 2020", "Section 4.1", "https://example.org/paper")


def table(**kw) -> Table:
    args = dict(paper="p", title="t", columns=[Column("a", "A"), Column("b", "B", "low")], rows=["ours-1", "ours-2"],
                extra_rows=["baseline"], paper_cells={"ours-1": {"a": "0.5", "b": NOT_REPORTED}, "ours-2": {"a": "0.7 ± 0.1", "b": "3 s"}},
                paper_sources={"ours-1": {"a": "t2", "b": "t2"}, "ours-2": {"a": "t2", "b": "s4"}},
                sources={"t2": SRC, "s4": SEC}, reference="Doe et al. 2020, arXiv:0000.00000")
    args.update(kw)
    return Table(**args)


def test_cells_say_where_the_number_comes_from(tmp_path):
    t = table(claims=[Claim("It works.", "t2")], paper_notes=["B is in seconds."])
    t.set("ours-1", "a", 0.25)
    t.set("baseline", "b", float("nan"))
    t.notes.append("a run note")
    with pytest.raises(KeyError):
        t.set("not-a-row", "a", 1.0)
    md_path, json_path = t.write(tmp_path)
    md = md_path.read_text()
    assert "| A ↑ ours | A paper | B ↓ ours | B paper |" in md
    assert "| ours-1 | 0.250 | 0.5 [1] | – | not reported [1] |" in md
    assert "| ours-2 | – | 0.7 ± 0.1 [1] | – | 3 s [2] |" in md
    assert "| baseline | – | not in paper | – | not in paper |" in md
    assert "- [1] Doe et al. 2020, Table 2 — text: papers/000_doe.txt" in md
    assert "- [2] Doe et al. 2020, Section 4.1 — text: https://example.org/paper" in md
    assert "3 of 4 quote the paper's own figures" in md and '1 say "not reported"' in md and "arXiv:0000.00000" in md
    assert '"It works." [1]' in md and "- B is in seconds." in md and "- a run note" in md
    data = json.loads(json_path.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert rows["ours-1"]["paper"] == {"a": "0.5", "b": NOT_REPORTED} and rows["ours-1"]["ours"] == {"a": 0.25, "b": None}
    assert rows["ours-1"]["paper_source"] == {"a": "t2", "b": "t2"} and rows["ours-2"]["paper_source"] == {"a": "t2", "b": "s4"}
    assert rows["baseline"]["paper"] == {"a": NOT_IN_PAPER, "b": NOT_IN_PAPER} and not rows["baseline"]["in_paper"]
    assert rows["baseline"]["paper_source"] == {"a": None, "b": None}
    assert data["paper_sources"]["t2"] == {"cite": "Doe et al. 2020", "where": "Table 2", "text": "papers/000_doe.txt"}
    assert data["paper_not_reported"] == ["ours-1 / B"] and data["reference"] == "Doe et al. 2020, arXiv:0000.00000"
    assert data["notes"] == ["a run note"] and data["paper_notes"] == ["B is in seconds."]


def test_a_paper_cell_without_a_source_in_the_paper_is_refused():
    with pytest.raises(ValueError, match="has no source"):
        table(paper_sources={"ours-1": {"a": "t2", "b": "t2"}, "ours-2": {"a": "t2"}})
    with pytest.raises(ValueError, match="has no source"):  # "not reported" is a statement about the paper: it needs one too
        table(paper_sources={"ours-1": {"a": "t2"}, "ours-2": {"a": "t2", "b": "s4"}})
    with pytest.raises(ValueError, match="unknown source"):
        table(paper_sources={"ours-1": {"a": "nowhere", "b": "t2"}, "ours-2": {"a": "t2", "b": "s4"}})
    with pytest.raises(ValueError, match="is missing"):  # every column of every paper row: a figure or "not reported"
        table(paper_cells={"ours-1": {"a": "0.5"}, "ours-2": {"a": "0.7", "b": "3 s"}})
    with pytest.raises(ValueError, match="names no table, section"):  # the place in the paper
        table(sources={"t2": Source("Doe et al. 2020", "the paper", "papers/000_doe.txt"), "s4": SEC})
    with pytest.raises(ValueError, match="neither papers/"):  # the text it was read in
        table(sources={"t2": Source("Doe et al. 2020", "Table 2", "from memory"), "s4": SEC})
    with pytest.raises(ValueError, match="no citation"):
        table(sources={"t2": Source(" ", "Table 2", "papers/000_doe.txt"), "s4": SEC})
    with pytest.raises(ValueError, match="as printed"):  # a figure is text as the paper prints it, never a float we rounded
        table(paper_cells={"ours-1": {"a": 0.5, "b": NOT_REPORTED}, "ours-2": {"a": "0.7", "b": "3 s"}})
    with pytest.raises(ValueError, match="not one of the paper's rows"):
        table(paper_cells={"ours-1": {"a": "0.5", "b": "1"}, "ours-2": {"a": "0.7", "b": "3 s"}, "baseline": {"a": "0.5"}})
    with pytest.raises(ValueError, match="unknown source"):
        table(claims=[Claim("It works.", "elsewhere")])
    t = table()
    t.paper_cells["ours-2"]["b"] = "2 s"
    t.paper_sources["ours-2"]["b"] = "s5"  # changed after construction: refused when written
    with pytest.raises(ValueError, match="unknown source"):
        t.markdown()
    for where in ("Table 1, bottom block", "Section 3.2", "Fig. 5.6", "Figs. 5.6–5.8", "Chapter 7", "Appendix B", "abstract", "Eq. 2"):
        assert not Source("Doe et al. 2020", where, "papers/x.txt").problem(), where


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_every_paper_table_quotes_its_paper_with_sources(paper):
    module = paper_module(paper)
    t = module.empty_table(DEFAULT.angles) if paper == "saranchuk" else module.empty_table()
    t.check()
    assert t.reference, "a table says which paper and which text its cells were read in"
    data = t.to_dict()
    quoted = 0
    for r in data["rows"]:
        for key, cell in r["paper"].items():
            if not r["in_paper"]:
                assert cell == NOT_IN_PAPER and r["paper_source"][key] is None
                continue
            src = data["paper_sources"][r["paper_source"][key]]
            assert src["cite"] and src["where"] and src["text"], (r["row"], key, src)
            quoted += cell != NOT_REPORTED
    assert quoted, "every seed paper gives at least one figure of its table"
    md = t.markdown()
    for src in t.sources.values():
        assert src.describe() in md


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
