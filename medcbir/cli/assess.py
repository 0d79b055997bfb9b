"""``medcbir assess``: the label-free quality of an index (agreement@K), without labels."""

from __future__ import annotations

import json

import click

from medcbir.engine import Engine
from medcbir.engine.assess import assess as run


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per query (K).")
@click.option("--queries", "n_queries", type=click.IntRange(min=1), default=2000, show_default=True, help="A seeded sample of this many queries (all items when fewer).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--verify", type=click.Choice(["checksums", "sizes", "none"]), default="sizes", show_default=True, help="How much of the index to check at open.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def assess(index, k, n_queries, seed, verify, as_json):
    """Label-free quality of INDEX: do its cross-patient neighbours agree with the series (agreement@K)?"""
    with Engine.open(index, verify=verify) as engine:
        result = run(engine, k=k, queries=n_queries, seed=seed)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    judged = f"{result['coverage']:.0%} of queries judged"
    click.echo(
        f"agreement@{result['k']} {result['agreement_at_k']:.3f} over {result['n_queries']} queries of {result['items']} items "
        f"({result['patients']} patients by {result['exclude']}; {judged}; encoder {result['fingerprint'][:12]})"
    )
    if result["coverage"] == 0:
        click.echo("no query had neighbours in series with slice positions: the score says nothing about this index")
