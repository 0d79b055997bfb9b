"""The paper tables: our numbers beside the paper's cells, never an invented paper figure."""

from __future__ import annotations

import json

import pytest

from medcbir.reproduce.budget import DEFAULT, TEST
from medcbir.reproduce.table import NOT_IN_PAPER, SEE_PAPER, Column, Table


def table() -> Table:
    return Table(paper="p", title="t", columns=[Column("a", "A"), Column("b", "B", "low")], rows=["ours-1", "ours-2"],
                 extra_rows=["baseline"], paper_cells={"ours-1": {"a": 0.5}})


def test_cells_say_where_the_number_comes_from(tmp_path):
    t = table()
    t.set("ours-1", "a", 0.25)
    t.set("baseline", "b", float("nan"))
    with pytest.raises(KeyError):
        t.set("not-a-row", "a", 1.0)
    md_path, json_path = t.write(tmp_path)
    md = md_path.read_text()
    assert "| A ↑ ours | A paper | B ↓ ours | B paper |" in md
    assert "| ours-1 | 0.250 | 0.500 | – | see paper |" in md
    assert "| baseline | – | not in paper | – | not in paper |" in md
    rows = {r["row"]: r for r in json.loads(json_path.read_text())["rows"]}
    assert rows["ours-1"]["paper"] == {"a": 0.5, "b": SEE_PAPER} and rows["ours-1"]["ours"] == {"a": 0.25, "b": None}
    assert rows["baseline"]["paper"] == {"a": NOT_IN_PAPER, "b": NOT_IN_PAPER} and not rows["baseline"]["in_paper"]


def test_budgets_are_checked():
    assert TEST.check() is TEST and DEFAULT.check() is DEFAULT
    from medcbir.errors import ConfigError

    for bad in ({"patients": 2}, {"slices": 5}, {"size": 32}, {"minutes": 0}):
        with pytest.raises(ConfigError):
            DEFAULT.with_(**bad)
    assert DEFAULT.with_(minutes=None, epochs=3).epochs == 3
