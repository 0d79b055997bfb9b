"""A paper's table with our numbers next to the paper's, written as Markdown and JSON.

The paper's cells hold only what the paper reports (numbers or short claims, labelled "paper");
where we do not quote a figure the cell says "see paper" — never an invented number. Rows the
paper does not have (our baselines) say "not in paper".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

SEE_PAPER = "see paper"
NOT_IN_PAPER = "not in paper"


@dataclass(frozen=True)
class Column:
    """One metric: its key in our results, its header, and which direction is better."""

    key: str
    header: str
    better: str = "high"  # "high", "low" or "" (not a quality, e.g. seconds)


@dataclass
class Table:
    """Rows × columns of our numbers, with the paper's cells beside them.

    Args:
        paper: the reproduction's name (``wickstrom``, ...).
        title: what the table shows.
        columns: the paper's metrics.
        rows: the paper's rows, in order (methods or training recipes).
        extra_rows: rows the paper does not have (baselines, trivial maps).
        paper_cells: ``{row: {column key: number or short text}}`` from the paper.
    """

    paper: str
    title: str
    columns: list[Column]
    rows: list[str]
    extra_rows: list[str] = field(default_factory=list)
    paper_cells: dict = field(default_factory=dict)
    ours: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, row: str, key: str, value) -> None:
        if row not in self.rows and row not in self.extra_rows:
            raise KeyError(f"{row!r} is not a row of the {self.paper} table")
        self.ours.setdefault(row, {})[key] = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value

    def paper_cell(self, row: str, key: str):
        if row in self.extra_rows:
            return NOT_IN_PAPER
        return self.paper_cells.get(row, {}).get(key, SEE_PAPER)

    def to_dict(self) -> dict:
        return {
            "paper": self.paper,
            "title": self.title,
            "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in self.columns],
            "rows": [{"row": r, "in_paper": r in self.rows, "ours": {c.key: self.ours.get(r, {}).get(c.key) for c in self.columns},
                      "paper": {c.key: self.paper_cell(r, c.key) for c in self.columns}} for r in self.rows + self.extra_rows],
            "notes": list(self.notes),
        }

    def markdown(self) -> str:
        arrow = {"high": " ↑", "low": " ↓", "": ""}
        head = ["row"] + [f"{c.header}{arrow[c.better]} ours | {c.header} paper" for c in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(self.columns))]
        for r in self.rows + self.extra_rows:
            cells = [r]
            for c in self.columns:
                cells.append(_fmt(self.ours.get(r, {}).get(c.key)))
                cells.append(_fmt(self.paper_cell(r, c.key)))
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out: Path, stem: str = "table") -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{stem}.md", out / f"{stem}.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.to_dict(), indent=2, default=float) + "\n")
        return md, js


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
