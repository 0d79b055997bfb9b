"""``medcbir demo``: the whole flow on a synthetic CT archive, on CPU, in a few minutes.

phantom archive → scan → SimCLR with positional positives (the default recipe) → ONNX export → index (ONNX
encoder) → one query → evaluate → RELAX explanation of the query and its neighbours → HTML report.
Every stage is the same API the other commands call; the demo only chains them and prints a
short summary per stage.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from medcbir.imaging.labels import read_labels
from medcbir.train.recipe import RECIPE

# The demo trains with the default recipe (README, "Training recipe"), at a higher learning rate
# than the trainer's default because it trains for about a minute.
DEMO_LR = 0.2
DEMO_METHOD_OPTIONS = {"proj_dim": 128}


def _stage(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(t0: float, text: str) -> None:
    click.echo(f"   {text}  ({time.perf_counter() - t0:.1f} s)")


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), required=False)
@click.option("--patients", default=8, show_default=True, help="Phantom patients (2 are held out as queries/test).")
@click.option("--slices", default=24, show_default=True, help="Axial slices per patient.")
@click.option("--size", default=64, show_default=True, help="Model input size in pixels (the phantom is written at 2× this).")
@click.option("--epochs", default=30, show_default=True, help="Training epochs (30: the trained encoder beats thumbnail:16 and random on the demo archive; 12 did not).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--masks", default=1000, show_default=True, help="RELAX masks for the explanation.")
@click.option("-k", default=5, show_default=True, help="Neighbours to retrieve and explain.")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, patients: int, slices: int, size: int, epochs: int, batch_size: int, masks: int, k: int, seed: int) -> None:
    """Run the whole flow on a synthetic CT archive and write an HTML report (default OUT: ./demo-out)."""
    from medcbir.errors import ConfigError

    if patients < 3:
        raise ConfigError("--patients must be at least 3 (training, index and query patients)")
    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "archive"

    t0 = _stage("1/8 phantom: synthetic CT archive (real DICOM)")
    from medcbir.imaging.phantom import make_archive

    summary = make_archive(archive, patients=patients, slices=slices, seed=seed, size=2 * size)
    _done(t0, f"{summary.files} slices of {patients} patients in {archive}")

    t0 = _stage("2/8 scan")
    from medcbir.imaging import FolderSource

    source = FolderSource(archive, quarantine=out / "scan-quarantine.log")
    n = sum(1 for _ in source.decoded(None, None))
    report = source.report
    _done(t0, f"{n} items; modalities {dict(report.by_modality)}; skipped {dict(report.skipped) or 'none'}")

    t0 = _stage("3/8 train: SimCLR, archive augmentations, positional positives across patients (the default recipe)")
    from medcbir.train.trainer import TrainConfig, train

    checkpoint = out / "encoder.pt"
    result = train(
        TrainConfig(
            archive=archive,
            out=checkpoint,
            **RECIPE,
            epochs=epochs,
            batch_size=batch_size,
            size=size,
            seed=seed,
            labels=archive / "labels.csv",
            progress=False,
            # A few epochs on a few hundred slices: the paper's 0.05·batch/256 barely moves the
            # weights in that budget (benchmarks/train_quality.py), and half-size heads keep the
            # checkpoint small; both are demo choices, not the trainer's defaults.
            lr=DEMO_LR,
            method_options=dict(DEMO_METHOD_OPTIONS),
        )
    )
    _done(t0, f"{result.summary_line()} -> {checkpoint}")

    t0 = _stage("4/8 export-onnx (with a torch vs ONNX Runtime parity check)")
    from medcbir.train.onnx_export import export_onnx

    onnx_path = out / "encoder.onnx"
    parity = export_onnx(checkpoint, onnx_path, archive=archive)
    _done(t0, f"{onnx_path}, max |embedding difference| = {parity.max_abs_diff:.2e}")

    t0 = _stage("5/8 index (ONNX encoder, HDF5 shards + FAISS)")
    from medcbir.encoders.runtime import open_encoder
    from medcbir.indexer import index_archive

    index_dir = out / "index"
    isum = index_archive(archive, index_dir, open_encoder(onnx_path), progress=False)
    skipped = ", ".join(f"{n} {r}" for r, n in isum.skipped.items()) or "none"
    _done(t0, f"{isum.indexed} items in {isum.shards} shard(s), {isum.index_spec}, {isum.items_per_s:.0f} items/s; skipped: {skipped} -> {index_dir}")

    t0 = _stage(f"6/8 search: top-{k} for one slice, other patients only")
    from medcbir.engine import Engine

    engine = Engine.open(index_dir)
    labels = _labels(archive)
    query = _pick_query(archive, labels)
    [neighbours] = engine.search([str(query)], k=k, exclude="same-patient")
    click.echo(f"   query {query.relative_to(out)}  label={labels.get((_sop_of(query), 0), '?')}")
    for nb in neighbours:
        click.echo(
            f"   #{nb.rank} score={nb.score:.3f} label={labels.get((nb.meta['sop_instance_uid'], int(nb.meta.get('frame', 0))), '?'):13s}"
            f" sop={nb.meta['sop_instance_uid'][-18:]}"
        )
    _done(t0, f"{len(neighbours)} neighbours")

    t0 = _stage(f"7/8 evaluate: leave-one-out MAP@{k}, excluding each query's own patient")
    from medcbir.engine import evaluate

    from medcbir.engine.baselines import evaluate_baselines

    metrics = evaluate(engine, archive / "labels.csv", k=k, exclude="same-patient")
    baselines = evaluate_baselines(engine, archive / "labels.csv", k=k, exclude="same-patient", names=("thumbnail:16", "random"))
    for name, row in [("trained", metrics), *baselines.items()]:
        click.echo(f"   {name:13s} MAP@{k}={row['map_at_k']:.3f} AP@{k}={row['ap_at_k']:.3f} kNN acc={row['knn_accuracy']:.3f}")
    _done(
        t0,
        f"MAP@{k}={metrics['map_at_k']:.3f} AP@{k}={metrics['ap_at_k']:.3f} "
        f"P@{k}={metrics['precision_at_k']:.3f} kNN acc={metrics['knn_accuracy']:.3f} over {metrics['n_queries']} queries "
        f"(thumbnail:16 {baselines['thumbnail:16']['map_at_k']:.3f}, random {baselines['random']['map_at_k']:.3f}, same items and protocol)",
    )

    t0 = _stage(f"8/8 explain: RELAX ({masks} masks) for the query and its {k} neighbours, one batched pass")
    from medcbir.explain import explain_to_report

    html, png = explain_to_report(index_dir, query, out / "report.html", k=k, method="relax", n_masks=masks, seed=seed)
    _done(t0, f"report {html} (panel {png})")

    click.secho(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s; open {Path(html).resolve()}", bold=True)


def _labels(archive: Path) -> dict[tuple[str, int], str]:
    return read_labels(archive / "labels.csv").by_item()


def _sop_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _pick_query(archive: Path, labels: dict[tuple[str, int], str]) -> Path:
    """A liver-level slice of the last patient: the reference paper's use case."""
    files = sorted(p for p in archive.rglob("*.dcm"))
    last_patient = files[-1].relative_to(archive).parts[0]
    mine = [p for p in files if p.relative_to(archive).parts[0] == last_patient]
    for wanted in ("liver-kidney", "liver-dome"):
        for path in mine:
            if labels.get((_sop_of(path), 0)) == wanted:
                return path
    return mine[len(mine) // 2]
