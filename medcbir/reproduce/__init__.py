"""``medcbir reproduce``: each seed paper's protocol as one command.

A reproduction trains what its paper trains (within a stated CPU :class:`Budget`), runs the
paper's evaluation with medcbir's own code (``train``, ``index``, ``evaluate``, ``explain``,
``explain-eval`` internals) and writes, into its output folder, the paper's table (Markdown +
JSON: our numbers beside the paper's), figures (PNG) and a README saying what differs.

One module per paper; :data:`PAPERS` maps each name to its module, which provides ``TITLE``,
``CITATION``, ``empty_table()`` (the paper's rows and columns) and ``run(ctx) -> Outcome``.

Example:
    >>> from medcbir.reproduce import reproduce, TEST
    >>> summary = reproduce("wickstrom", "phantom/", "out/", budget=TEST)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from medcbir.errors import ConfigError
from medcbir.reproduce.budget import DEFAULT, TEST, Budget
from medcbir.reproduce.report import write_readme
from medcbir.reproduce.steps import prepare_archive

PAPERS: dict[str, str] = {
    "wickstrom": "medcbir.reproduce.wickstrom",
    "zhang": "medcbir.reproduce.zhang",
    "saranchuk": "medcbir.reproduce.saranchuk",
    "eskandari": "medcbir.reproduce.eskandari",
    "aggarwal": "medcbir.reproduce.aggarwal",
}


@dataclass
class Context:
    """What a paper's ``run`` gets: where the archive is, where to write, how much to spend."""

    archive: Path
    out: Path
    budget: Budget
    archive_info: dict

    @property
    def work(self) -> Path:
        path = self.out / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def labels(self) -> Path:
        return self.archive / "labels.csv"

    @property
    def masks(self) -> Path:
        return self.archive / "masks.h5"


@dataclass
class Outcome:
    """What a paper's ``run`` returns; :func:`reproduce` writes it."""

    table: object
    figures: list[Path]
    protocol: list[str]
    differences: dict[str, str]
    commands: list[str]
    trained: list = field(default_factory=list)
    details: dict = field(default_factory=dict)


def paper_module(name: str):
    """The module of a reproduction (ConfigError naming the choices for an unknown one)."""
    if name not in PAPERS:
        raise ConfigError(f"unknown paper {name!r}; choose from {', '.join(PAPERS)}")
    return importlib.import_module(PAPERS[name])


def reproduce(paper: str, archive, out, budget: Budget = DEFAULT, phantom: bool = False, progress=None) -> dict:
    """Run one paper's protocol and write its table, figures and README into ``out``.

    Args:
        paper: a key of :data:`PAPERS`.
        archive: DICOM folder with ``labels.csv`` and ``masks.h5``; a phantom v2 archive is
            written there when it does not exist or when ``phantom`` is set.
        out: output folder (``table.md``, ``table.json``, ``*.png``, ``README.md``, ``result.json``,
            and ``work/`` with checkpoints and indexes).
        budget: the CPU budget (:data:`DEFAULT`, :data:`TEST` or your own).
        phantom: (re)write a phantom archive at ``archive`` first.
        progress: optional callable(str) told when each step starts.

    Returns:
        ``{"paper", "out", "table", "figures", "readme", "seconds"}`` (paths as strings).
    """
    module = paper_module(paper)
    budget = budget.check()
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    say(f"{paper}: archive {archive}")
    info = prepare_archive(Path(archive), budget, phantom)
    ctx = Context(Path(archive), out, budget, info)
    outcome: Outcome = module.run(ctx, say)
    md, js = outcome.table.write(out)
    seconds = time.perf_counter() - t0

    trained = [t.to_dict() for t in outcome.trained]
    readme = write_readme(out, title=module.TITLE, citation=module.CITATION, protocol=outcome.protocol, differences=outcome.differences,
                          table_md=outcome.table.markdown(), figures=outcome.figures, trained=trained, archive=info,
                          budget=budget.to_dict(), seconds=seconds, commands=outcome.commands)
    result = {"paper": paper, "title": module.TITLE, "citation": module.CITATION, "budget": budget.to_dict(), "archive": info,
              "trained": trained, "table": outcome.table.to_dict(), "details": outcome.details, "seconds": round(seconds, 1),
              "figures": [str(f) for f in outcome.figures]}
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return {"paper": paper, "out": str(out), "table": str(md), "table_json": str(js), "figures": [str(f) for f in outcome.figures],
            "readme": str(readme), "seconds": seconds, "markdown": outcome.table.markdown()}


__all__ = ["DEFAULT", "PAPERS", "TEST", "Budget", "Context", "Outcome", "paper_module", "reproduce"]
