"""``medcbir demo``: the whole flow on a synthetic CT archive, on CPU, in a few minutes.

phantom archive → scan → ``medcbir train`` (adaptation of the default encoder to the archive, kept
only where the label-free score shows it helps) → ONNX export → index (ONNX encoder, with regions)
→ one query → evaluate beside the start and the baselines → a region query (a box on a structure of
the query slice: its lesion when the archive has ``lesion-boxes.csv``, else its most prominent
proposed region) with each neighbour's matched box and region-match RELAX map → RELAX explanation of
the query and its neighbours → HTML report holding both.
Every stage is the same API the other commands call; the demo only chains them and prints a
short summary per stage (on stderr with ``--json``, whose stdout is one JSON summary of what the
demo did: archive, index, query, neighbours, evaluation, region match, explanation and report paths).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import click
import numpy as np

from medcbir.encoders.regions import extract_regions
from medcbir.engine import Engine, evaluate
from medcbir.engine.baselines import evaluate_baselines
from medcbir.errors import ConfigError
from medcbir.explain.region_files import region_section_html
from medcbir.explain.status import CAVEAT, region_method_status
from medcbir.imaging import FolderSource, read_dicom
from medcbir.imaging.labels import read_labels
from medcbir.imaging.phantom import make_archive
from medcbir.indexer import index_archive


class _Say:
    """The demo's stage lines: stdout, or stderr when stdout carries the ``--json`` summary."""

    def __init__(self, err: bool) -> None:
        self.err = err

    def __call__(self, text: str, **style) -> None:
        click.secho(text, err=self.err, **style)

    def stage(self, title: str) -> float:
        self(f"\n== {title}", bold=True)
        return time.perf_counter()

    def done(self, t0: float, text: str) -> None:
        self(f"   {text}  ({time.perf_counter() - t0:.1f} s)")


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), required=False)
@click.option("--patients", default=8, show_default=True, help="Phantom patients (2 are held out as queries/test).")
@click.option("--slices", default=24, show_default=True, help="Axial slices per patient.")
@click.option("--size", default=64, show_default=True, help="The phantom is written at 2× this many pixels.")
@click.option("--masks", default=500, show_default=True, help="RELAX masks for the explanation.")
@click.option("-k", default=5, show_default=True, help="Neighbours to retrieve and explain.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary of what the demo did on stdout (the stage lines go to stderr).")
def demo(out: Path, patients: int, slices: int, size: int, masks: int, k: int, seed: int, as_json: bool = False) -> None:
    """Run the whole flow on a synthetic CT archive and write an HTML report (default OUT: ./demo-out)."""

    say = _Say(err=as_json)
    _stage, _done = say.stage, say.done

    if patients < 3:
        raise ConfigError("--patients must be at least 3 (training, index and query patients)")
    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "archive"

    t0 = _stage("1/9 phantom: synthetic CT archive (real DICOM)")

    summary = make_archive(archive, patients=patients, slices=slices, seed=seed, size=2 * size)
    _done(t0, f"{summary.files} slices of {patients} patients in {archive}")

    t0 = _stage("2/9 scan")

    source = FolderSource(archive, quarantine=out / "scan-quarantine.log")
    n = sum(1 for _ in source.decoded(None, None))
    report = source.report
    _done(t0, f"{n} items; modalities {dict(report.by_modality)}; skipped {dict(report.skipped) or 'none'}")

    t0 = _stage("3/9 train: adapt the default encoder to the archive; keep a stage only if the label-free score shows it helps")
    from medcbir.train.adapt import AdaptConfig, adapt

    checkpoint = out / "encoder.pt"
    result = adapt(AdaptConfig(archive=archive, out=checkpoint, seed=seed, labels=archive / "labels.csv", workers=1))
    say(f"   {result.summary_line()}")
    for row in result.stages:
        if row.agreement is not None:
            gain = "" if row.gain is None else f", gain {row.gain:+.3f} (lower bound {row.lower_bound:+.3f})"
            shown = "" if row.labelled_map is None else f"; MAP@5 on held-out patients {row.labelled_map:.3f} (labels: shown, not used)"
            say(f"   {row.name:11s} agreement@5 {row.agreement:.3f}{gain}{shown}")
    _done(t0, f"{result.images} images, {result.folds} patient-disjoint folds -> {checkpoint} ({result.dim}-d)")

    t0 = _stage("4/9 export-onnx (with a torch vs ONNX Runtime parity check)")
    from medcbir.train.onnx_export import export_onnx

    onnx_path = out / "encoder.onnx"
    parity = export_onnx(checkpoint, onnx_path, archive=archive)
    _done(t0, f"{onnx_path}, max |embedding difference| = {parity.max_abs_diff:.2e}")

    t0 = _stage("5/9 index (ONNX encoder, HDF5 shards + FAISS)")
    from medcbir.encoders.runtime import open_encoder

    index_dir = out / "index"
    isum = index_archive(archive, index_dir, open_encoder(onnx_path), progress=False)
    skipped = ", ".join(f"{n} {r}" for r, n in isum.skipped.items()) or "none"
    _done(t0, f"{isum.indexed} items in {isum.shards} shard(s), {isum.index_spec}, {isum.items_per_s:.0f} items/s; skipped: {skipped} -> {index_dir}")

    t0 = _stage(f"6/9 search: top-{k} for one slice, other patients only")

    engine = Engine.open(index_dir)
    labels = _labels(archive)
    query = _pick_query(archive, labels)
    [neighbours] = engine.search([str(query)], k=k, exclude="same-patient")
    say(f"   query {query.relative_to(out)}  label={labels.get((_sop_of(query), 0), '?')}")
    for nb in neighbours:
        say(
            f"   #{nb.rank} score={nb.score:.3f} label={labels.get((nb.meta['sop_instance_uid'], int(nb.meta.get('frame', 0))), '?'):13s}"
            f" sop={nb.meta['sop_instance_uid'][-18:]}"
        )
    _done(t0, f"{len(neighbours)} neighbours")

    t0 = _stage(f"7/9 evaluate: leave-one-out MAP@{k}, excluding each query's own patient")


    metrics = evaluate(engine, archive / "labels.csv", k=k, exclude="same-patient")
    baselines = evaluate_baselines(engine, archive / "labels.csv", k=k, exclude="same-patient", names=("classic", "thumbnail:16", "random"))
    baselines = {("default (start)" if name == "classic" else name): row for name, row in baselines.items()}
    for name, row in [(f"kept: {result.kept}", metrics), *baselines.items()]:
        say(f"   {name:16s} MAP@{k}={row['map_at_k']:.3f} AP@{k}={row['ap_at_k']:.3f} kNN acc={row['knn_accuracy']:.3f}")
    _done(
        t0,
        f"MAP@{k}={metrics['map_at_k']:.3f} AP@{k}={metrics['ap_at_k']:.3f} "
        f"P@{k}={metrics['precision_at_k']:.3f} kNN acc={metrics['knn_accuracy']:.3f} over {metrics['n_queries']} queries "
        f"(default {baselines['default (start)']['map_at_k']:.3f}, thumbnail:16 {baselines['thumbnail:16']['map_at_k']:.3f}, "
        f"random {baselines['random']['map_at_k']:.3f}, same items and protocol)",
    )

    t0 = _stage(f"8/9 region: a box on a structure of the query slice, its top-{k} regions in other patients, and why each matched")
    from medcbir.explain.regions import explain_region_match

    box, chosen = _pick_region(archive, query)
    region = explain_region_match(engine, str(query), box, k, exclude="same-patient", method="relax", n_masks=masks, seed=seed)
    region_status = region_method_status(index_dir, "relax")["text"]
    say(f"   query box {','.join(map(str, region.query_box))} ({chosen})")
    for i, nb in enumerate(region.neighbours):
        say(f"   #{nb.rank} region score={nb.score:.3f} matched={','.join(str(int(v)) for v in nb.region):15s}"
            f" map in region={region.share_in_region(i):.0%} sop={nb.meta['sop_instance_uid'][-18:]}")
    say(f"   {region_status}. {CAVEAT}")
    _done(t0, f"{len(region.neighbours)} region matches explained (RELAX, {masks} masks each)")

    t0 = _stage(f"9/9 explain: RELAX ({masks} masks) for the query and its {k} neighbours, one batched pass; the report")
    from medcbir.explain import explain_to_report

    section = region_section_html(region, region_status, CAVEAT, title=f"Region query: {chosen}, and why each region matched")
    html, png = explain_to_report(index_dir, query, out / "report.html", k=k, method="relax", n_masks=masks, seed=seed,
                                  sections=[section])
    _done(t0, f"report {html} (panel {png}; with the region match)")

    seconds = time.perf_counter() - t_all
    say(f"\ndemo finished in {seconds:.0f} s; open {Path(html).resolve()}", bold=True)
    if as_json:
        query_sop = _sop_of(query)
        click.echo(json.dumps({
            "out": str(out.resolve()),
            "archive": {"path": str(archive.resolve()), "files": int(summary.files), "patients": patients, "slices": slices,
                        "size": 2 * size, "labels": str((archive / "labels.csv").resolve())},
            "scan": {"items": n, "modalities": dict(report.by_modality), "skipped": dict(report.skipped)},
            "encoder": {"kept": result.kept, "reason": result.reason, "checkpoint": str(checkpoint.resolve()),
                        "onnx": str(onnx_path.resolve()), "fingerprint": result.fingerprint, "dim": result.dim,
                        "onnx_max_abs_diff": float(parity.max_abs_diff)},
            "index": {"path": str(index_dir.resolve()), "items": isum.indexed, "shards": isum.shards, "index_spec": isum.index_spec,
                      "skipped": dict(isum.skipped)},
            "query": {"file": str(query.resolve()), "sop_instance_uid": query_sop, "label": labels.get((query_sop, 0))},
            "neighbours": [{"rank": nb.rank, "score": float(nb.score), "id": int(nb.id), "sop_instance_uid": nb.meta["sop_instance_uid"],
                            "frame": int(nb.meta.get("frame", 0)),
                            "label": labels.get((nb.meta["sop_instance_uid"], int(nb.meta.get("frame", 0))))} for nb in neighbours],
            "evaluation": {"k": k, "exclude": "same-patient", "kept": _metrics(metrics),
                           "baselines": {name: _metrics(row) for name, row in baselines.items()}},
            "region": {"box": list(region.query_box), "chosen": chosen, "method": "relax", "n_masks": masks,
                       "status": region_status,
                       "neighbours": [{"rank": nb.rank, "score": float(nb.score), "sop_instance_uid": nb.meta["sop_instance_uid"],
                                       "frame": int(nb.meta.get("frame", 0)), "region": [int(v) for v in nb.region],
                                       "share_in_region": round(region.share_in_region(i), 4)}
                                      for i, nb in enumerate(region.neighbours)]},
            "explanation": {"method": "relax", "n_masks": masks, "seed": seed, "neighbours": len(neighbours),
                            "report": str(Path(html).resolve()), "panel": str(Path(png).resolve())},
            "report": str(Path(html).resolve()),
            "seconds": round(seconds, 1),
        }, indent=2))


def _metrics(row: dict) -> dict:
    return {key: float(row[key]) for key in ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy") if row.get(key) is not None} | (
        {"n_queries": int(row["n_queries"])} if row.get("n_queries") is not None else {})


def _labels(archive: Path) -> dict[tuple[str, int], str]:
    return read_labels(archive / "labels.csv").by_item()


def _sop_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _pick_region(archive: Path, query: Path) -> tuple[tuple[int, int, int, int], str]:
    """A box on a structure of the query slice, chosen from the data, and what it is: the largest
    lesion of the slice when the archive lists lesion boxes (phantom v3's ``lesion-boxes.csv``),
    else the slice's most prominent proposed region (the first one :func:`extract_regions` ranks,
    among those at least :data:`MIN_BOX` pixels on their shorter side, so the box shows)."""
    sop = _sop_of(query)
    table = archive / "lesion-boxes.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["sop_instance_uid"] == sop and int(r.get("frame") or 0) == 0]
        if rows:
            r = max(rows, key=lambda r: int(r["w"]) * int(r["h"]))
            return (int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"])), f"the slice's lesion ({r.get('label') or 'lesion'})"
    found = extract_regions(read_dicom(query)[0])
    if not len(found):
        raise ConfigError(f"the query slice {query.name} has no structure to box (no region proposal)")
    sides = np.minimum(found.boxes[:, 2], found.boxes[:, 3])
    pick = int(np.flatnonzero(sides >= MIN_BOX)[0]) if (sides >= MIN_BOX).any() else 0
    return tuple(int(v) for v in found.boxes[pick]), f"the slice's most prominent proposed region (rank {pick + 1} of {len(found)})"


#: the demo's region query boxes a structure at least this many pixels on its shorter side
MIN_BOX = 6


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
