"""A paper's table with our numbers next to the paper's, written as Markdown and JSON.

The paper's cells hold only what was read in a retrieved text of the paper (numbers or short
claims, labelled "paper"), each with its source (:class:`Source`: the page it was read on and
where on it). Where no figure was verified the cell says "see paper" — never an invented or
remembered number — and the table says which cells are unverified and where to look them up
(``reference``). Rows the paper does not have (our baselines) say "not in paper".
:meth:`Table.check` refuses a paper cell without a source.
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


@dataclass(frozen=True)
class Source:
    """Where a paper's figure or claim was read: the page (URL) and the place on it."""

    url: str
    where: str  # "Table 2", "abstract", ...
    title: str = ""  # what the page is, when the URL does not say (e.g. "arXiv abstract page")

    def to_dict(self) -> dict:
        return {"url": self.url, "where": self.where, "title": self.title}


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
        paper_cells: ``{row: {column key: number or short text}}`` read in the paper.
        paper_sources: ``{row: {column key: source name}}``: every paper cell's source (required).
        sources: ``{source name: Source}``.
        claims: quotations of the paper (its headline claims) shown under the table, each sourced.
        reference: where a reader finds the paper (DOI / arXiv id), or why we cannot say.
        paper_notes: what we say about the paper's figures (what was not verified, what differs).
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
        """ValueError unless every paper cell is in a paper row and column and carries a known source."""
        keys = {c.key for c in self.columns}
        for name, src in self.sources.items():
            if not isinstance(src, Source) or not src.url.startswith(("http://", "https://")) or not src.where.strip():
                raise ValueError(f"{self.paper}: source {name!r} needs an http(s) URL and where on the page the figure was read")
        for row, cells in self.paper_cells.items():
            if row not in self.rows:
                raise ValueError(f"{self.paper}: paper cell for {row!r}, which is not one of the paper's rows")
            for key, value in cells.items():
                if key not in keys:
                    raise ValueError(f"{self.paper}: paper cell {row!r} / {key!r}: no such column")
                if value == SEE_PAPER:
                    continue
                src = self.paper_sources.get(row, {}).get(key)
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

    def paper_cell(self, row: str, key: str):
        if row in self.extra_rows:
            return NOT_IN_PAPER
        return self.paper_cells.get(row, {}).get(key, SEE_PAPER)

    def paper_source(self, row: str, key: str) -> str | None:
        """The source name of a quoted paper cell (None for "see paper" and "not in paper")."""
        if self.paper_cell(row, key) in (SEE_PAPER, NOT_IN_PAPER):
            return None
        return self.paper_sources.get(row, {}).get(key)

    def unverified(self) -> list[str]:
        """``row / column`` of every paper cell that says "see paper"."""
        return [f"{r} / {c.header}" for r in self.rows for c in self.columns if self.paper_cell(r, c.key) == SEE_PAPER]

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
            "paper_unverified": self.unverified(),
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
        missing = self.unverified()
        quoted = total - len(missing)
        if not missing:
            head = f"Paper cells: all {total} quoted from the paper, each with its source [n]."
        elif not quoted:
            head = (f"Paper cells: none of the {total} could be verified in a retrieved text of the paper, so every one says "
                    f"\"{SEE_PAPER}\" (no figure is quoted from memory).")
        else:
            head = (f"Paper cells: {quoted} of {total} quoted from the paper, each with its source [n]; the other {len(missing)} "
                    f"say \"{SEE_PAPER}\" (not verified: {'; '.join(missing)}).")
        if missing:
            head += f" Paper reference: {self.reference or 'none recorded'}."
        lines = [head]
        for claim in self.claims:
            who = (f"Context from {claim.by} (not this paper's figures, not in the cells)" if claim.by
                   else "Paper's words (a claim, not a figure of the table)")
            lines.append(f"- {who}: \"{claim.quote}\" [{number[claim.source]}]")
        lines += [f"- {n}" for n in self.paper_notes]
        for name, src in self.sources.items():
            lines.append(f"- [{number[name]}] {src.url} — {src.where}" + (f" ({src.title})" if src.title else ""))
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
