"""A paper's table with our numbers next to the paper's, written as Markdown and JSON.

The paper's cells hold what was read in the paper's text: its figures (as printed, e.g.
``"89.1 ± 1.3"``) or, where the paper gives no figure for a cell, :data:`NOT_REPORTED`. Every
paper cell names its :class:`Source` — the text it was read in and the place in it (a table,
section, figure or appendix) — so a reader can check it; nothing is quoted from memory. Rows the
paper does not have (our baselines) say :data:`NOT_IN_PAPER`. :meth:`Table.check` refuses a paper
row with a missing cell and a paper cell without such a source.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

NOT_REPORTED = "not reported"
NOT_IN_PAPER = "not in paper"

# a place in a paper's text: "Table 1", "Section 3.2", "Fig. 5.6", "Appendix B", "abstract", ...
PLACE = re.compile(r"\b(?:(?:Tables?|Sections?|Secs?\.|Figs?\.|Figures?|Chapters?|Appendix|Eqs?\.)\s*[A-Z]?\d|abstract\b|Appendix\s+[A-Z]\b)",
                   re.IGNORECASE)
# the text a figure was read in: a web page, or a file of the seed-paper collection (papers/NAME.txt)
TEXT = re.compile(r"^(?:https?://\S+|papers/[\w.-]+\.txt)$")


@dataclass(frozen=True)
class Column:
    """One metric: its key in our results, its header, and which direction is better."""

    key: str
    header: str
    better: str = "high"  # "high", "low" or "" (not a quality, e.g. seconds)


@dataclass(frozen=True)
class Source:
    """Where a paper's figure or claim was read: whose paper, the place in it, and the text it was read in.

    Args:
        cite: short citation of the paper the words are from ("Wickstrøm et al. 2023").
        where: the place in that paper: a table, section, figure, chapter, appendix or the abstract,
            with whatever narrows it down ("Table 1 (Decathlon test set)").
        text: the text it was read in: ``papers/<file>.txt`` of the seed-paper collection, or a URL.
    """

    cite: str
    where: str
    text: str

    def problem(self) -> str:
        """What is wrong with this source ("" when it names a paper, a place in it and a text)."""
        if not self.cite.strip():
            return "no citation"
        if not PLACE.search(self.where):
            return f"{self.where!r} names no table, section, figure, chapter, appendix or abstract"
        if not TEXT.match(self.text):
            return f"{self.text!r} is neither papers/<file>.txt nor an http(s) URL"
        return ""

    def describe(self) -> str:
        return f"{self.cite}, {self.where} — text: {self.text}"

    def to_dict(self) -> dict:
        return {"cite": self.cite, "where": self.where, "text": self.text}


@dataclass(frozen=True)
class Claim:
    """A short quotation of the paper (not a figure of the table), with the name of its source."""

    quote: str
    source: str
    by: str = ""  # another paper's words, quoted for context (e.g. the metric's source paper); "" = this paper

    def to_dict(self) -> dict:
        return {"quote": self.quote, "source": self.source, "by": self.by}


@dataclass
class Table:
    """Rows × columns of our numbers, with the paper's cells beside them.

    Args:
        paper: the reproduction's name (``wickstrom``, ...).
        title: what the table shows.
        columns: the paper's metrics.
        rows: the paper's rows, in order (methods or training recipes).
        extra_rows: rows the paper does not have (baselines, trivial maps).
        paper_cells: ``{row: {column key: figure as printed, or NOT_REPORTED}}``: every column of
            every paper row.
        paper_sources: ``{row: {column key: source name}}``: every paper cell's source.
        sources: ``{source name: Source}``.
        claims: quotations of the paper (its headline claims) shown under the table, each sourced.
        reference: the paper and the text its cells were read in.
        paper_notes: what we say about the paper's figures (setting, scale, what differs from ours).
        notes: what the run says (written by the reproduction, not about the paper's figures).
    """

    paper: str
    title: str
    columns: list[Column]
    rows: list[str]
    extra_rows: list[str] = field(default_factory=list)
    paper_cells: dict = field(default_factory=dict)
    ours: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    paper_sources: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    reference: str = ""
    paper_notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError unless every paper row has every column, each cell with a source naming a place in the paper."""
        keys = {c.key for c in self.columns}
        for name, src in self.sources.items():
            problem = src.problem() if isinstance(src, Source) else "not a Source"
            if problem:
                raise ValueError(f"{self.paper}: source {name!r}: {problem}")
        for row, cells in self.paper_cells.items():
            if row not in self.rows:
                raise ValueError(f"{self.paper}: paper cell for {row!r}, which is not one of the paper's rows")
            for key, value in cells.items():
                if key not in keys:
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r}: no such column")
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r} = {value!r}: give the figure as printed in the paper (text)")
        for row in self.rows:
            for key in (c.key for c in self.columns):
                if key not in self.paper_cells.get(row, {}):
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r} is missing (a figure of the paper, or {NOT_REPORTED!r})")
                src = self.paper_sources.get(row, {}).get(key)
                value = self.paper_cells[row][key]
                if src is None:
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r} = {value!r} has no source")
                if src not in self.sources:
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r} cites unknown source {src!r}")
        for claim in self.claims:
            if claim.source not in self.sources:
                raise ValueError(f"{self.paper}: claim {claim.quote[:40]!r}… cites unknown source {claim.source!r}")

    def set(self, row: str, key: str, value) -> None:
        if row not in self.rows and row not in self.extra_rows:
            raise KeyError(f"{row!r} is not a row of the {self.paper} table")
        self.ours.setdefault(row, {})[key] = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value

    def paper_cell(self, row: str, key: str) -> str:
        if row in self.extra_rows:
            return NOT_IN_PAPER
        return self.paper_cells[row][key]

    def paper_source(self, row: str, key: str) -> str | None:
        """The source name of a paper cell (None for our rows, "not in paper")."""
        if row in self.extra_rows:
            return None
        return self.paper_sources[row][key]

    def not_reported(self) -> list[str]:
        """``row / column`` of every paper cell that says "not reported"."""
        return [f"{r} / {c.header}" for r in self.rows for c in self.columns if self.paper_cell(r, c.key) == NOT_REPORTED]

    def to_dict(self) -> dict:
        self.check()
        return {
            "paper": self.paper,
            "title": self.title,
            "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in self.columns],
            "rows": [{"row": r, "in_paper": r in self.rows, "ours": {c.key: self.ours.get(r, {}).get(c.key) for c in self.columns},
                      "paper": {c.key: self.paper_cell(r, c.key) for c in self.columns},
                      "paper_source": {c.key: self.paper_source(r, c.key) for c in self.columns}} for r in self.rows + self.extra_rows],
            "paper_sources": {name: src.to_dict() for name, src in self.sources.items()},
            "paper_claims": [c.to_dict() for c in self.claims],
            "paper_not_reported": self.not_reported(),
            "reference": self.reference,
            "paper_notes": list(self.paper_notes),
            "notes": list(self.notes),
        }

    def markdown(self) -> str:
        self.check()
        number = {name: i for i, name in enumerate(self.sources, 1)}
        arrow = {"high": " ↑", "low": " ↓", "": ""}
        head = ["row"] + [f"{c.header}{arrow[c.better]} ours | {c.header} paper" for c in self.columns]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(self.columns))]
        for r in self.rows + self.extra_rows:
            cells = [r]
            for c in self.columns:
                cells.append(_fmt(self.ours.get(r, {}).get(c.key)))
                src = self.paper_source(r, c.key)
                cells.append(_fmt(self.paper_cell(r, c.key)) + (f" [{number[src]}]" if src else ""))
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        lines += [""] + self._paper_block(number)
        return "\n".join(lines).rstrip() + "\n"

    def _paper_block(self, number: dict) -> list[str]:
        total = len(self.rows) * len(self.columns)
        absent = len(self.not_reported())
        head = f"Paper cells: {total - absent} of {total} quote the paper's own figures, as printed"
        if absent:
            head += f"; {absent} say \"{NOT_REPORTED}\" (the paper gives no such figure)"
        lines = [head + "; each names its source [n]." + (f" Paper: {self.reference}." if self.reference else "")]
        for claim in self.claims:
            who = (f"Context from {claim.by} (not this paper's figures, not in the cells)" if claim.by
                   else "Paper's words (a claim, not a figure of the table)")
            lines.append(f"- {who}: \"{claim.quote}\" [{number[claim.source]}]")
        lines += [f"- {n}" for n in self.paper_notes]
        lines += [f"- [{number[name]}] {src.describe()}" for name, src in self.sources.items()]
        return lines

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
