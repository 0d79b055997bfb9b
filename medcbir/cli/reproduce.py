"""``medcbir reproduce``: one seed paper's protocol, end to end (parse, call medcbir.reproduce, print)."""

from __future__ import annotations

from pathlib import Path

import click

from medcbir.reproduce import DEFAULT, TEST, reproduce as run

PAPER_NAMES = ("wickstrom", "zhang", "saranchuk", "aggarwal", "eskandari")


@click.command()
@click.argument("paper", type=click.Choice(PAPER_NAMES))
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder: table.md/.json, figures (PNG), README.md.")
@click.option("--phantom", is_flag=True, help="(Re)write a phantom v2 archive at ARCHIVE first (done anyway when ARCHIVE does not exist).")
@click.option("--test-mode", is_flag=True, help="A tiny budget (seconds): every step runs, the numbers mean nothing.")
@click.option("--minutes", type=click.FloatRange(min=0.01), default=None, help="Wall-clock cap per training row [default: 4].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per training row [default: 12].")
@click.option("--size", type=click.IntRange(min=64), default=None, help="Encoder input side in pixels [default: 64].")
@click.option("--patients", type=click.IntRange(min=3), default=None, help="Phantom patients when one is written [default: 8].")
@click.option("--slices", type=click.IntRange(min=10), default=None, help="Phantom slices per patient [default: 24].")
@click.option("--explain-n", type=click.IntRange(min=1), default=None, help="Images / query–neighbour pairs the explanation metrics use [default: 8].")
@click.option("--seed", type=int, default=None, help="Seed of the phantom, training and explanations [default: 0].")
@click.option("--json", "as_json", is_flag=True, help="Print the result (table, files, seconds) as JSON.")
def reproduce(paper, archive, out, phantom, test_mode, minutes, epochs, size, patients, slices, explain_n, seed, as_json=False):
    """Run PAPER's protocol on ARCHIVE (phantom v2 by default) and write its table, figures and README into --out."""
    budget = (TEST if test_mode else DEFAULT).with_(minutes=minutes, epochs=epochs, size=size, patients=patients, slices=slices,
                                                     explain_n=explain_n, seed=seed)
    result = run(paper, archive, out, budget=budget, phantom=phantom, progress=lambda m: click.echo(m, err=True))
    if as_json:
        import json

        click.echo(json.dumps(result, default=str))
        return
    click.echo(result["markdown"])
    click.echo(f"table: {result['table']} (+ {Path(result['table_json']).name}); figures: {', '.join(result['figures'])}")
    click.echo(f"README: {result['readme']}  ({result['seconds']:.0f} s)")
