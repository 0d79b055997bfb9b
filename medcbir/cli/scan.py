"""``medcbir scan ARCHIVE``: walk an archive and report what it holds and what must be skipped.

``--json`` prints one object with the keys ``archive, files, items, decoded_files, passed,
by_modality, by_transfer_syntax, skipped, quarantined, elapsed_s`` where ``by_transfer_syntax``
maps a UID to ``{"name": ..., "items": n}``, ``skipped`` maps a reason to a file count and
``quarantined`` is the number of skipped files (their paths go to ``--quarantine``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from medcbir.imaging import walk


def transfer_syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid and uid != "?" else "unknown"
    return "unknown" if name == uid else name


def scan_summary(
    archive: Path, workers: int = 0, quarantine: Path | None = None, timeout: float = 30.0, progress: bool = False, encoder: str | None = None
) -> dict:
    """Walk ``archive`` (decode every file, keep no pixels) and return the scan's JSON object.

    Args:
        archive: the archive folder (or one file).
        workers: decoding processes (0 = auto, 1 = in-process).
        quarantine: append skipped files to this log.
        timeout: per-file decoding timeout in seconds.
        progress: show files, items and items/s on stderr while walking.
        encoder: also apply this encoder's preprocessing, so what it would skip (e.g.
            ``modality-mismatch``: a modality its window policy does not cover) is counted.
    """
    preprocessing = None
    if encoder:
        from medcbir.encoders.runtime import open_encoder

        preprocessing = open_encoder(encoder).preprocessing
    t0 = time.perf_counter()
    with _progress(progress) as on_file:
        w = walk(archive, preprocessing=preprocessing, workers=workers, quarantine=quarantine, timeout=timeout, on_file=on_file)
        for _ in w:  # decoding is the check; the pixels are dropped at once
            pass
    report = w.report
    return {
        "archive": str(Path(archive).absolute()),
        "files": report.files,
        "items": report.items,
        "decoded_files": report.decoded_files,
        "passed": report.passed,
        "by_modality": dict(sorted(report.by_modality.items())),
        "by_transfer_syntax": {
            uid: {"name": transfer_syntax_name(uid), "items": n} for uid, n in sorted(report.by_transfer_syntax.items())
        },
        "skipped": dict(sorted(report.skipped.items())),
        "quarantined": len(report.quarantined),
        "elapsed_s": round(time.perf_counter() - t0, 3),
        **({"encoder": str(encoder), "preprocessing": preprocessing.to_dict()} if preprocessing is not None else {}),
    }


class _progress:
    """A live 'files, items, items/s, skipped' line on stderr (the archive size is not known up front)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.files = self.items = self.skipped = 0

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("scanning")
        self.t0 = time.perf_counter()
        self.bar.start()
        return self.update

    def update(self, path: str, n_items: int, reason: str | None) -> None:
        self.files += 1
        self.items += n_items
        self.skipped += reason is not None
        rate = self.items / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, description=f"{self.files} files, {self.items} items ({rate:.0f} items/s), {self.skipped} skipped")

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def _print_text(summary: dict, quarantine: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    rate = summary["items"] / summary["elapsed_s"] if summary["elapsed_s"] > 0 else 0.0
    console.print(
        f"[bold]{summary['archive']}[/bold]: {summary['files']} files, {summary['decoded_files']} decoded into "
        f"{summary['items']} items in {summary['elapsed_s']:.1f} s ({rate:.0f} items/s)"
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("group")
    table.add_column("value")
    table.add_column("count", justify="right")
    for modality, n in summary["by_modality"].items():
        table.add_row("modality", modality, str(n))
    for uid, entry in summary["by_transfer_syntax"].items():
        table.add_row("transfer syntax", f"{entry['name']} ({uid})", str(entry["items"]))
    for reason, n in summary["skipped"].items():
        table.add_row("skipped", reason, str(n))
    if summary["items"] or summary["skipped"]:
        console.print(table)
    if summary["skipped"] and quarantine is not None:
        console.print(f"skipped files listed in {quarantine}")


@click.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: archive, files, items, decoded_files, passed, by_modality, "
    "by_transfer_syntax (UID -> {name, items}), skipped (reason -> files), quarantined, elapsed_s.",
)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes (0 = auto, 1 = in-process).")
@click.option("--quarantine", type=click.Path(dir_okay=False, path_type=Path), help="Append skipped files (path, reason, detail) to this log.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds one file may take to decode.")
@click.option("--encoder", default=None, help="Also preprocess for this encoder (checkpoint, .onnx or a built-in name) and count what it would skip (modality-mismatch).")
def scan(archive: Path, as_json: bool, workers: int, quarantine: Path | None, timeout: float, encoder: str | None) -> None:
    """Walk ARCHIVE and report items per modality and transfer syntax, and skipped files per reason."""
    summary = scan_summary(archive, workers=workers, quarantine=quarantine, timeout=timeout, progress=sys.stderr.isatty(), encoder=encoder)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_text(summary, quarantine)
