"""``medcbir index | delete | compact | verify | quarantine``: thin commands over :mod:`medcbir.indexer`."""

from __future__ import annotations

import json

import click

from medcbir.device import Device
from medcbir.engine import Engine
from medcbir.engine.region_search import METRIC, RegionIndex
from medcbir.errors import ConfigError, IndexCorrupt
from medcbir.indexer import compact as compact_index, delete as delete_items, faiss_index, index_archive, verify as verify_index
from medcbir.indexer.background import run_due
from medcbir.indexer.compression import parse_budget
from medcbir.indexer.follow import verify_sources
from medcbir.indexer.manifest import read_manifest
from medcbir.indexer.quarantine import read_log
from medcbir.indexer.recovery import repair as repair_index
from medcbir.indexer.region_refresh import refresh_regions
from medcbir.indexer.retrain import retrain as retrain_index
from medcbir.indexer.store import seal_of
from medcbir.pacs.dicomweb import DicomwebSource


def _summary_lines(summary) -> list[str]:
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.skipped.items())) or "none"
    lines = [
        f"indexed          {summary.indexed}",
        f"already present  {summary.already_present}",
        f"skipped          {sum(summary.skipped.values())} ({skipped})",
    ]
    if summary.gone_sources:
        lines.append(f"source gone      {summary.gone_items} item(s) of {summary.gone_sources} file(s) tombstoned")
    if summary.changed_sources:
        lines.append(f"source changed   {summary.changed_items} item(s) of {summary.changed_sources} file(s) replaced by their new content")
    if summary.dropped_items:
        known = summary.dropped_items - summary.dropped_unknown
        note = [f"{known - summary.reembedded} not found in this archive"] if summary.reembedded < known else []
        if summary.dropped_unknown:
            note.append(f"{summary.dropped_unknown} with keys the damage made unreadable: among `indexed` when their files are here")
        lines.append(f"re-embedded      {summary.reembedded} of the {summary.dropped_items} item(s) a repair dropped"
                     + (f" ({'; '.join(note)})" if note else ""))
    return lines + [
        f"shards written   {summary.shards}",
        f"items in index   {summary.live_items} live, {summary.total_items - summary.live_items} tombstoned  (spec {summary.index_spec})",
        f"elapsed          {summary.elapsed:.1f} s  ({summary.items_per_s:.1f} items/s)",
    ]


def _source(archive: str, workers: int):
    if archive.startswith(("dicomweb+http://", "dicomweb+https://")):
        return DicomwebSource(archive, **({"workers": workers} if workers else {}))
    return archive


def _budget(ctx, param, value):
    """``--memory-budget``: bytes per item, a bad size being a usage error (exit 2)."""
    try:
        return parse_budget(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@click.command("index")
@click.argument("archive")
@click.option("--encoder", "encoder", default="default", show_default=True, help="Encoder checkpoint, ONNX file, 'default', or your own model: an encoder spec (.json), hf:DIR, or model.onnx with model.onnx.json beside it.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Index folder (created or resumed).")
@click.option("--shard-size", default=4096, show_default=True, type=click.IntRange(min=1), help="Items per HDF5 shard.")
@click.option("--index-spec", default="auto", show_default=True, help="'auto' or a FAISS factory string (e.g. IVF1024,PQ64,Refine(Flat)).")
@click.option("--target-recall", default=None, type=click.FloatRange(min=0.0, max=1.0, min_open=True), help="recall@10 the index must reach on its own items (default 0.95); auto picks the cheapest spec reaching it.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes (0 = auto).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Images per encoder forward.")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None, help="Pseudonym key file (default INDEX/pseudonym.key).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True, help="Encoder precision.")
@click.option("--delete-series", multiple=True, metavar="UID", help="Tombstone this series after indexing (repeatable).")
@click.option("--delete-study", multiple=True, metavar="UID", help="Tombstone this study after indexing (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Decode and embed on Ray: alone, a local runtime; 'auto', HOST:PORT or ray://HOST:PORT joins a cluster.")
@click.option("--ray-workers", default=1, show_default=True, type=click.IntRange(min=1), help="Embedding actors (with --ray).")
@click.option("--gpus-per-worker", default=None, type=click.FloatRange(min=0), help="GPUs per actor (default: 1 if the cluster has GPUs, else 0).")
@click.option("--no-maintenance", "maintain", is_flag=True, flag_value=False, default=True,
              help="Do not compact or retrain afterwards even when due.")
@click.option("--no-regions", "regions", flag_value=False, default=None,
              help="Do not store regions (a new index; region search with --roi then needs another index).")
@click.option("--regions-per-image", default=None, type=click.IntRange(min=1), metavar="N",
              help="Structures stored per image of a new index (default 64; up to half as many parts of structures too large to be one, and 8 organ-sized zones, come on top).")
@click.option("--memory-budget", default=None, metavar="BYTES", callback=_budget,
              help="RAM per indexed image for search (e.g. 1KB): auto then chooses among the chains that fit "
                   "(learned projection, codes, 8-bit/float16 re-rank store) by measured recall.")
@click.option("--refresh-regions", "refresh", is_flag=True,
              help="Re-describe the regions of the existing index --out from ARCHIVE's files by this medcbir's region "
                   "recipe (or add regions to an index built with --no-regions), in place: the slices are not embedded "
                   "again; resumable, shard by shard.")
@click.option("--shard-dtype", type=click.Choice(["float32", "float16", "sq8", "sq6", "tc4", "tc6", "tc8", "auto"]), default=None,
              help="How a new index's shards store embeddings (default float32; sq8/sq6: 8/6-bit codes per dimension; "
                   "tc4/tc6/tc8: transform codes, 4/6/8 bits per dimension on average under a codebook fitted on the "
                   "index's first shard; auto: the smallest of tc4, tc6, tc8, sq8, float16 measured to cost no recall).")
def index(archive, encoder, out, shard_size, index_spec, target_recall, workers, batch_size, key_file, device, precision,
          delete_series, delete_study, as_json, no_progress, ray_address, ray_workers, gpus_per_worker, maintain, regions,
          regions_per_image, memory_budget, shard_dtype, refresh=False) -> None:
    """Embed ARCHIVE (a folder, or dicomweb+http://HOST/dicom-web) into the index --out; resumable."""
    if refresh:
        _refresh_regions(archive, out, workers=workers, key_file=key_file, regions_per_image=regions_per_image,
                         progress=not no_progress and not as_json, as_json=as_json,
                         refused={"--no-regions": regions is False, "--ray": ray_address is not None,
                                  "--delete-series/--delete-study": bool(delete_series or delete_study),
                                  "--memory-budget": memory_budget is not None, "--shard-dtype": shard_dtype is not None,
                                  "--encoder": encoder != "default", "--index-spec": index_spec != "auto",
                                  "--target-recall": target_recall is not None})
        return
    if ray_address is None and (ray_workers != 1 or gpus_per_worker is not None):
        raise ConfigError("--ray-workers and --gpus-per-worker need --ray")
    budget = memory_budget  # bytes per item (parsed by the option)
    dev = Device.auto(prefer=None if device == "auto" else device, precision=precision)
    summary = index_archive(
        _source(archive, workers), out, encoder, shard_size=shard_size, index_spec=index_spec, workers=workers,
        device=dev, progress=not no_progress and not as_json, batch_size=batch_size, key_file=key_file,
        target_recall=target_recall,
        ray=ray_address, ray_workers=ray_workers, gpus_per_worker=gpus_per_worker, regions=regions, regions_per_image=regions_per_image,
        memory_budget=budget, shard_dtype=shard_dtype,
    )
    deleted = delete_items(out, series=delete_series, study=delete_study) if (delete_series or delete_study) else 0

    maintenance = run_due(out) if maintain else {}  # compaction / retraining if the index grew enough
    if as_json:
        click.echo(json.dumps({**summary.to_dict(), "deleted": deleted, "maintenance": maintenance}))
        return
    for line in _summary_lines(summary):
        click.echo(line)
    if delete_series or delete_study:
        click.echo(f"tombstoned       {deleted}")
    for job, result in maintenance.items():
        click.echo(f"{job:<17}{json.dumps(result, default=str)}")


def _refresh_regions(archive, out, *, workers, key_file, regions_per_image, progress, as_json, refused) -> None:
    """``index ARCHIVE --out INDEX --refresh-regions``: :func:`medcbir.indexer.region_refresh.refresh_regions`."""
    given = [name for name, on in refused.items() if on]
    if given:
        raise ConfigError(f"--refresh-regions re-describes the regions of an existing index; {', '.join(given)} "
                          "do(es) not apply to it")
    read_manifest(out)  # an index that is not there: the usual one-line error
    source = _source(archive, workers)
    summary = refresh_regions(out, source, workers=workers,
                              key_file=key_file, regions_per_image=regions_per_image, progress=progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    was = f"was {summary.previous}" if summary.previous else "the index had none"
    click.echo(f"regions          {summary.version} ({was})")
    click.echo(f"shards           {summary.refreshed} rewritten with new regions, {summary.resumed} done by an earlier run, of {summary.shards}")
    click.echo(f"items            {summary.items} described ({summary.regions} regions), {summary.tombstoned} tombstoned (no regions)")
    skipped = sum(summary.skipped.values())
    detail = ", ".join(f"{reason} {n} ({len(summary.sources.get(reason, []))} source(s))" for reason, n in sorted(summary.skipped.items()))
    click.echo(f"skipped          {skipped} item(s) without regions" + (f": {detail}" if detail else ""))
    for reason, names in sorted(summary.sources.items()):
        for name in names[:20]:
            click.echo(f"  {reason:<10} {name}")
        if len(names) > 20:
            click.echo(f"  {reason:<10} ... and {len(names) - 20} more (--json lists them all)")
    click.echo(f"elapsed          {summary.elapsed:.1f} s  ({summary.items_per_s:.1f} items/s)")
    if not summary.complete:
        click.echo("not complete: shards were replaced meanwhile (compaction); run it again to finish")


@click.command("delete")
@click.argument("index_dir", metavar="INDEX")
@click.option("--series", multiple=True, metavar="UID", help="SeriesInstanceUID to tombstone (repeatable).")
@click.option("--study", multiple=True, metavar="UID", help="StudyInstanceUID to tombstone (repeatable).")
@click.option("--sop", multiple=True, metavar="UID", help="SOPInstanceUID to tombstone (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='Print {"tombstoned": N}.')
def delete(index_dir, series, study, sop, as_json=False) -> None:
    """Tombstone series, studies or instances in INDEX (search skips them; `compact` removes them)."""
    if not (series or study or sop):
        raise ConfigError("give at least one --series, --study or --sop")
    n = delete_items(index_dir, series=series, study=study, sop=sop)
    click.echo(json.dumps({"tombstoned": n}) if as_json else f"tombstoned {n} item(s)")


@click.command("compact")
@click.argument("index_dir", metavar="INDEX")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, help="Items per full shard (default: the index's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compact(index_dir, shard_size, as_json=False) -> None:
    """Merge INDEX's small shards and drop tombstoned items (online: writers and readers go on)."""
    result = compact_index(index_dir, shard_size=shard_size)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    if result.get("skipped"):
        click.echo(f"skipped: {result['skipped']}; run it again")
        return
    click.echo(f"removed {result['removed']} item(s), rewrote {result['rewritten']} shard(s); "
               f"{result['items']} item(s) in {result['shards']} shard(s), generation {result['generation']}")


@click.command("retrain")
@click.argument("index_dir", metavar="INDEX")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Training items (default 100,000).")
@click.option("--seed", type=int, default=None, help="Sample seed (default: the generation).")
@click.option("--memory-budget", default=None, metavar="BYTES", callback=_budget,
              help="RAM per indexed image for search (e.g. 1KB; default: the index's recorded budget, if any).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def retrain(index_dir, sample, seed, memory_budget=None, as_json=False) -> None:
    """Train INDEX's IVF/PQ again on a fresh uniform sample of all live items and swap it in.

    An exact index (searched by brute force) has nothing to train: that is a no-op, exit 0, so
    a cron job may run it on every index."""
    budget = memory_budget
    snapshot = read_manifest(index_dir)
    if not snapshot.get("trained") or faiss_index.is_flat(snapshot["index_spec"]):
        message = f"index {index_dir} is exact ({snapshot['index_spec']}): nothing to retrain"
        click.echo(json.dumps({"retrained": False, "reason": message}) if as_json else message)
        return
    result = retrain_index(index_dir, sample_size=sample, seed=seed, memory_budget=budget)
    if as_json:
        click.echo(json.dumps({"retrained": not result.get("skipped"), **result}, default=str))
        return
    if result.get("skipped"):
        click.echo(f"skipped: {result['skipped']}; run it again")
        return
    click.echo(f"retrained on {result['sample']} of {result['items']} item(s) in {result['seconds']:.1f} s; "
               f"generation {result['generation']}")


def _structure(regions) -> dict:
    """How the region search structure was had at open (``load_s``): ``stored`` (read from the
    index's files) or ``computed`` (an index that does not store it yet: its next commit does),
    the distance regions are compared by (``metric``), the search index (``Flat``, or ``IVF`` with
    its lists and probes), and the bytes it holds in memory (``ram_bytes``, and per indexed image)."""
    import numpy as np

    index = regions.index
    kind = {"index": "IVF", "nlist": int(index.nlist), "nprobe": int(index.nprobe)} if hasattr(index, "nlist") else {"index": "Flat"}
    items = len(np.unique(regions.item_ids)) if len(regions) else 0
    return {"structure": "stored" if regions.stored else "computed", "metric": METRIC, **kind,
            "ram_bytes": regions.memory_bytes(), "ram_bytes_per_image": round(regions.memory_bytes() / max(1, items), 1)}


def _region_latency(index_dir) -> dict:
    """p50/p95 ms of region queries (stored regions as queries) beside slice queries, on this
    machine, and how long the region search structure took to open (``load_s``)."""
    import time

    import numpy as np

    with Engine.open(index_dir, verify="none") as engine:
        if not len(engine.ids):
            return {}
        start = time.perf_counter()
        regions = RegionIndex.of(engine)
        load_s = time.perf_counter() - start
        if not len(regions):
            return {"load_s": round(load_s, 3), **_structure(regions)}
        rng = np.random.default_rng(0)
        picks = rng.choice(len(regions), size=min(50, len(regions)), replace=False)
        region_ms, slice_ms = [], []
        live = engine.live.copy()
        for row in picks:
            t = time.perf_counter()
            regions.search(regions.vectors_of([row])[0], 10, live)
            region_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            engine.search(engine.embeddings(np.array([int(regions.item_ids[row])])), 10)
            slice_ms.append(1000 * (time.perf_counter() - t))
    return {"load_s": round(load_s, 3), **_structure(regions),
            "query_ms_p50": round(float(np.percentile(region_ms, 50)), 3),
            "query_ms_p95": round(float(np.percentile(region_ms, 95)), 3),
            "slice_query_ms_p50": round(float(np.percentile(slice_ms, 50)), 3)}


@click.command("verify")
@click.argument("index_dir", metavar="INDEX")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok", "items", "shards", "deleted", "problems", "encoder", ...}.')
@click.option("--repair", is_flag=True,
              help="Drop damaged shards' items (the next `index` run embeds them again), rebuild damaged FAISS files, "
                   "or fall back to the newest intact kept generation when the manifest is damaged; reports what it did.")
@click.option("--sources", "sources", is_flag=True,
              help="Also check that every indexed file (or DICOMweb instance) is still there, unchanged; changes nothing. "
                   "Exit 1 when some are missing or changed.")
@click.pass_context
def verify(ctx, index_dir, as_json, repair, sources) -> None:
    """Recompute every checksum of INDEX and check its consistency; exit 1 if anything is wrong."""
    repaired = None
    if repair:
        repaired = repair_index(index_dir)
        if not as_json:
            click.echo(("repaired: " if repaired.changed else "") + repaired.summary())
            for line in repaired.rejected:
                click.echo(f"  rejected {line}")
    report = verify_index(index_dir)
    found = _check_sources(index_dir) if sources and report.ok else None
    if as_json:
        data = report.to_dict()
        out = {k: data[k] for k in ("ok", "items", "shards", "deleted", "problems", "generation", "index_spec",
                                    "recall_at_10", "target_recall", "search_params", "dropped", "encoder", "regions")}
        if report.ok and report.regions:
            out["regions"] = {**report.regions, **_region_latency(index_dir)}
        if repaired is not None:
            out["repair"] = repaired.to_dict()
        if found is not None:
            out["sources"] = found.to_dict()
        click.echo(json.dumps(out))
    else:
        status = "ok" if report.ok else "BROKEN"
        click.echo(f"{status}: {report.items} item(s) in {report.shards} shard(s), {report.deleted} deleted, "
                   f"generation {report.generation}, spec {report.index_spec}"
                   + (f", recall@10 {report.recall_at_10:.3f} (target {report.target_recall})" if report.recall_at_10 is not None else ""))
        if report.dropped:
            click.echo(f"  {report.dropped} item(s) dropped by a repair wait to be embedded again by the next `medcbir index` run")
        if found is not None:
            click.echo(f"sources {'ok' if found.ok else 'CHANGED'}: {found.summary()}")
    if not report.ok:
        if not as_json:
            for problem in report.problems:
                click.echo(f"  {problem}")
        # main() prints it as the one `error: <file>: <problem>` line on stderr, exit 1.
        raise IndexCorrupt(report.problems[0])
    if found is not None and not found.ok:
        ctx.exit(1)


def _check_sources(index_dir):
    """``verify --sources``: the index's files looked at where they were, DICOMweb servers listed."""
    def instances(base: str):
        server = DicomwebSource(base)
        return (server.uri(*k) for k in server.instances())

    return verify_sources(index_dir, instances)


@click.command("quarantine")
@click.argument("index_dir", metavar="INDEX")
@click.option("--json", "as_json", is_flag=True, help='Print {"files", "by_reason", "entries": [{"path", "reason", "detail"}], "revealed"}.')
@click.option("--reveal", is_flag=True, help="Show the files' paths, opened with the archive key (they may name patients).")
@click.option("--key-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The archive's pseudonym key for --reveal (default: the index's).")
def quarantine(index_dir, as_json, reveal, key_file) -> None:
    """List the files INDEX's indexing runs skipped: one entry per file (the latest reason), counts per reason.

    Paths are shown sealed (as the index records them) unless --reveal opens them with the key.
    """
    from pathlib import Path

    manifest = read_manifest(index_dir)
    entries = read_log(index_dir)
    opened = None
    if reveal:
        seal = seal_of(Path(index_dir), manifest, Path(key_file).read_bytes() if key_file else None)
        if seal is None:
            raise ConfigError("--reveal needs the archive key that sealed the paths (INDEX/pseudonym.key or --key-file) "
                              "and an index that recorded its archive root")
        opened = seal.open
    rows = []
    for e in entries:
        path = opened(e.path) if opened else e.path
        rows.append({"path": path, "reason": e.reason, "detail": e.detail.replace(e.path, path)})
    by_reason: dict[str, int] = {}
    for row in rows:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    if as_json:
        click.echo(json.dumps({"files": len(rows), "by_reason": dict(sorted(by_reason.items())), "entries": rows, "revealed": bool(reveal)}))
        return
    click.echo(f"{len(rows)} file(s) skipped" + (": " + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) if rows else ""))
    for row in sorted(rows, key=lambda r: (r["reason"], r["path"])):
        click.echo(f"  {row['reason']:<20} {row['path']}" + (f"  ({row['detail']})" if row["detail"] else ""))
