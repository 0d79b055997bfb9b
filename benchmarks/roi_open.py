"""The region search structure kept with the index: what opening it costs at 1M+ regions, against
computing it when the first region query arrives (what medcbir did before it was stored).

For each size in ``--items``, an index of that many slices with ``--regions`` regions each is written with medcbir's own
``IndexWriter`` (synthetic 512-d slice embeddings; synthetic 25-d region descriptors, Gaussian
with a fixed random covariance and per-patient offsets: what is measured is where the metric and
the IVF come from, not how regions are described). Its commits store the region search structure
(:mod:`medcbir.indexer.region_index`: per-shard moments, and above 2^20 regions the IVF and each
region's list); the time those commits spent on it is reported. Then, in this process:

- **stored** (ours): ``RegionIndex.open`` of the index, twice (the second open is what every later
  process pays), and the first region query after it; the counters of moments computed from
  descriptors and of IVF trainings must stay at 0;
- **computed** (the peer: the previous behaviour): ``RegionIndex(store.regions())``, metric fitted
  on all descriptors and the IVF trained at open, and the first region query after it;
- recall@10 of both IVFs against exact search of the same scaled regions (200 stored regions as
  queries), and the region maintenance a 10-item commit costs after that (no retraining).

Goal: opening the stored structure ≥ 10× faster than computing it.

Run: ``.venv/bin/python benchmarks/roi_open.py [--items 20000,100000 --regions 64]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402

GOAL = 10.0
DIM_SLICE = 512


def log(msg: str) -> None:
    print(f"[roi_open] {msg}", file=sys.stderr, flush=True)


def batch(lo: int, hi: int, per: int, mixing: np.ndarray, rng):
    from medcbir.encoders.regions import DIM, RegionSet
    from medcbir.imaging import ItemMeta

    metas = [ItemMeta(sop_instance_uid=f"2.25.{i + 1}", frame=0, series_instance_uid=f"2.25.9{i // 100 + 1}",
                      study_instance_uid=f"2.25.8{i // 100 + 1}", modality="CT", patient_pseudonym=f"{i // 100:032x}",
                      instance_number=i % 100 + 1, rows=512, cols=512, pixel_spacing=(0.7, 0.7), source=f"synthetic/{i}.dcm")
             for i in range(lo, hi)]
    vectors = rng.standard_normal((hi - lo, DIM_SLICE)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = rng.standard_normal((hi - lo, 1, DIM)).astype(np.float32)
    descriptors = (rng.standard_normal((hi - lo, per, DIM)).astype(np.float32) @ mixing + offsets).astype(np.float32)
    boxes = rng.integers(0, 400, size=(hi - lo, per, 4)).astype(np.int32)
    return metas, vectors, [RegionSet(boxes[i], descriptors[i]) for i in range(hi - lo)]


def rss() -> int:
    """Resident bytes of this process (after a garbage collection)."""
    import gc

    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def previous_layout(store, regions, queries: np.ndarray, live: np.ndarray) -> tuple[int, int, list[float]]:
    """(RSS growth, bytes held, ms per region query) of the in-memory layout region search used before its codes were
    compacted, rebuilt here as the peer: float32 descriptors and scaled vectors kept, an
    ``IndexIVFFlat`` (float32 vectors) filled from the same stored lists, int64 item ids, int32 boxes."""
    import faiss

    from medcbir.indexer import region_index as ri

    before = rss()
    parts = store.regions()
    held = {"ids": parts.rows.astype(np.int64), "boxes": parts.boxes.astype(np.int32), "descriptors": parts.descriptors}
    held["vectors"] = regions.metric(held["descriptors"])
    structure = ri.load(store)
    quantizer = faiss.IndexFlatL2(held["vectors"].shape[1])
    quantizer.add(np.ascontiguousarray(structure.ivf.centroids, dtype=np.float32))
    flat = faiss.IndexIVFFlat(quantizer, quantizer.d, quantizer.ntotal, faiss.METRIC_L2)
    ri.fill(flat, held["vectors"], structure.ivf.lists)
    flat.nprobe = regions.index.nprobe
    del parts, structure
    grown = rss() - before
    total = sum(a.nbytes for a in held.values()) + flat.ntotal * (flat.code_size + 8) + quantizer.ntotal * quantizer.d * 4
    ours = regions.index
    regions.index = flat  # the same search code, lists, probes and queries over the float32 lists
    try:
        ms = query_ms(regions, queries, live)
    finally:
        regions.index = ours
    del held, flat, quantizer
    return grown, int(total), ms


def query_ms(regions, queries: np.ndarray, live: np.ndarray) -> list[float]:
    """ms of ``RegionIndex.search`` (top 10 items) for each query vector, after one untimed query."""
    regions.search(queries[0], 10, live)
    out = []
    for q in queries:
        t = time.perf_counter()
        regions.search(q, 10, live)
        out.append(1000 * (time.perf_counter() - t))
    return out


def percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def recall(regions, vectors: np.ndarray, rows: np.ndarray, k: int = 10) -> float:
    """recall@10 of the region index against exact search of the float32 scaled descriptors."""
    import faiss

    from medcbir.indexer import region_index as ri

    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    queries = vectors[rows]
    _, truth = exact.search(queries, k)
    live = np.ones(int(regions.item_ids.max()) + 1, dtype=bool)
    got = []
    for q, t in zip(queries, truth):
        coarse = None
        if regions.coarse is not None:
            _, coarse = regions.index.quantizer.search(ri.padded(q[None] @ regions.coarse[0] + regions.coarse[1], regions.index.d),
                                                       int(regions.index.nprobe))
        q = ri.padded(q[None], regions.index.d)[0]
        if coarse is None:
            _, found = regions.index.search(q[None], k)
        else:
            d, found = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
            regions.index.search_preassigned_c(1, faiss.swig_ptr(np.ascontiguousarray(q[None])), k, faiss.swig_ptr(coarse),
                                               faiss.swig_ptr(np.zeros(coarse.shape, np.float32)), faiss.swig_ptr(d), faiss.swig_ptr(found), False)
        got.append(len(set(found[0].tolist()) & set(t.tolist())) / k)
    del live
    return round(float(np.mean(got)), 4)


def run(args, items: int) -> dict:
    from medcbir.encoders.regions import DIM
    from medcbir.engine.region_search import RegionIndex
    from medcbir.indexer import IndexStore, IndexWriter, region_index

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="roi-open-"))
    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    mixing = (rng.standard_normal((DIM, DIM)) * np.linspace(0.2, 3.0, DIM)[:, None]).astype(np.float32)
    spent: list[float] = []
    original = region_index.maintain

    def timed(index, manifest):
        t = time.perf_counter()
        try:
            return original(index, manifest)
        finally:
            spent.append(time.perf_counter() - t)

    region_index.maintain = timed
    out: dict = {"items": items, "regions_per_image": args.regions, "load_average": list(os.getloadavg())}
    t0 = time.perf_counter()
    encoder = _results.synthetic_encoder(DIM_SLICE)
    with IndexWriter.open(index_dir, encoder, regions=True, regions_per_image=args.regions, shard_size=args.shard_size) as writer:
        for lo in range(0, items, args.shard_size):
            writer.add_embeddings(*batch(lo, min(lo + args.shard_size, items), args.regions, mixing, rng))
            writer.commit()
    out["write_s"] = round(time.perf_counter() - t0, 1)
    out["commits_region_s"] = round(sum(spent), 1)
    out["trainings_at_commit"] = region_index.COUNTERS["trained"]
    log(f"{items} items written in {out['write_s']} s, of which {out['commits_region_s']} s maintaining the region structure")

    def open_stored() -> dict:
        region_index.COUNTERS.update(moments=0, trained=0)
        with IndexStore.open(index_dir, verify="sizes") as store:
            before = rss()
            t = time.perf_counter()
            regions = RegionIndex.open(store)
            opened = time.perf_counter() - t
            grown = rss() - before
            live = store.live_mask.copy()
            exact = regions.metric(store.regions().descriptors)
            sample = np.random.default_rng(2).choice(len(regions), 200, replace=False)
            t = time.perf_counter()
            regions.search(exact[123], 10, live)
            first = time.perf_counter() - t
            row = {"open_s": round(opened, 2), "first_query_ms": round(1000 * first, 2), "regions": len(regions),
                   "stored": regions.stored, "recomputed": dict(region_index.COUNTERS), "index": type(regions.index).__name__,
                   "nlist": int(getattr(regions.index, "nlist", 0)), "nprobe": int(getattr(regions.index, "nprobe", 0))}
            row["held_bytes_per_region"] = round(regions.memory_bytes() / max(1, len(regions)), 1)
            row["rss_bytes_per_region"] = round(grown / max(1, len(regions)), 1)
            if "previous_layout" in out:  # the second open: query latency, then the peer layout's
                queries = exact[sample]
                row.update(percentiles(query_ms(regions, queries, live)))
                if regions.coarse is not None:
                    peer_rss, peer_held, peer_ms = previous_layout(store, regions, queries, live)
                    out["previous_layout"] = {"held_bytes_per_region": round(peer_held / len(regions), 1),
                                              "rss_bytes_per_region": round(peer_rss / len(regions), 1), **percentiles(peer_ms)}
            else:
                out["previous_layout"] = {}
            row["recall_at_10"] = recall(regions, exact, np.random.default_rng(1).choice(len(regions), 200, replace=False))
        return row

    out["stored_first_open"] = open_stored()
    out["stored_second_open"] = open_stored()
    log(f"stored: open {out['stored_first_open']['open_s']} s, then {out['stored_second_open']['open_s']} s")
    region_index.COUNTERS.update(moments=0, trained=0)
    with IndexStore.open(index_dir, verify="sizes") as store:
        t = time.perf_counter()
        regions = RegionIndex(store.regions())  # the previous behaviour: everything computed at open
        opened = time.perf_counter() - t
        exact = regions.metric(store.regions().descriptors)
        query = exact[123]
        t = time.perf_counter()
        regions.search(query, 10, store.live_mask.copy())
        first = time.perf_counter() - t
        out["computed_open"] = {"open_s": round(opened, 2), "first_query_ms": round(1000 * first, 2), "index": type(regions.index).__name__,
                                "nlist": int(getattr(regions.index, "nlist", 0)), "nprobe": int(getattr(regions.index, "nprobe", 0)),
                                "recall_at_10": recall(regions, exact, np.random.default_rng(1).choice(len(regions), 200, replace=False))}
    del regions
    log(f"computed at open: {out['computed_open']['open_s']} s")
    spent.clear()
    region_index.COUNTERS.update(moments=0, trained=0)
    t = time.perf_counter()
    with IndexWriter.open(index_dir, encoder, regions=True) as writer:
        writer.add_embeddings(*batch(items, items + 10, args.regions, mixing, rng))
        writer.commit()
    out["small_commit"] = {"items": 10, "wall_s": round(time.perf_counter() - t, 2), "region_s": round(sum(spent), 3),
                           "trained": region_index.COUNTERS["trained"]}
    region_index.maintain = original
    second = out["stored_second_open"]["open_s"]
    out["ratio"] = round(out["computed_open"]["open_s"] / max(second, 1e-3), 1)
    out["met"] = bool(out["ratio"] >= GOAL and second > 0)
    out["load_average_end"] = list(os.getloadavg())
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return out


def markdown(runs: list[dict]) -> str:
    return "\n\n".join(_markdown(r) for r in runs)


def _markdown(r: dict) -> str:
    s1, s2, c, sc = r["stored_first_open"], r["stored_second_open"], r["computed_open"], r["small_commit"]
    return "\n".join([
        f"{r['items']:,} synthetic slices × {r['regions_per_image']} regions = {s2['regions']:,} regions (synthetic 25-d descriptors), "
        f"written by `IndexWriter` in commits of {r.get('shard_size', 4096):,} items in {r['write_s']} s, of which "
        f"{r['commits_region_s']} s storing the region search structure ("
        + ("1 IVF training at commit, when the regions passed 2^20)." if r["trainings_at_commit"] == 1 else
           f"{r['trainings_at_commit']} IVF trainings at commit: when the regions passed 2^20, and each time they had doubled since)."),
        "",
        "| region search structure | open (s) | first region query (ms) | index | recall@10 vs exact | recomputed |",
        "|---|---|---|---|---|---|",
        f"| stored, first open (ours) | {s1['open_s']} | {s1['first_query_ms']} | {s1['index']} nlist {s1['nlist']} nprobe {s1['nprobe']} | "
        f"{s1['recall_at_10']} | {s1['recomputed']['moments']} moments, {s1['recomputed']['trained']} trainings |",
        f"| stored, second open (ours) | {s2['open_s']} | {s2['first_query_ms']} | {s2['index']} | {s2['recall_at_10']} | "
        f"{s2['recomputed']['moments']} moments, {s2['recomputed']['trained']} trainings |",
        f"| computed at open (before) | {c['open_s']} | {c['first_query_ms']} | {c['index']} nlist {c['nlist']} nprobe {c['nprobe']} | "
        f"{c['recall_at_10']} | all |",
        "",
        *([f"Memory held for region search (stored, second open; RSS growth of the open, and the bytes of the arrays and FAISS "
           f"lists it keeps): {s2['rss_bytes_per_region']} B per region by RSS, {s2['held_bytes_per_region']} B held "
           f"({r['regions_per_image'] * s2['held_bytes_per_region']:,.0f} B per image), against the previous layout rebuilt here as "
           f"the peer (float32 descriptors and scaled vectors kept, `IndexIVFFlat`, int64 ids, int32 boxes): "
           f"{r['previous_layout']['rss_bytes_per_region']} B by RSS, {r['previous_layout']['held_bytes_per_region']} B held "
           f"({r['previous_layout']['held_bytes_per_region'] / max(s2['held_bytes_per_region'], 1e-9):.1f}× ours). "
           f"Region queries (`RegionIndex.search`, top 10 items, 200 stored regions as queries, the same lists and probes): "
           f"p50 {s2['p50_ms']} ms, p95 {s2['p95_ms']} ms (ours) against p50 {r['previous_layout']['p50_ms']} ms, "
           f"p95 {r['previous_layout']['p95_ms']} ms (the peer's float32 lists).", ""]
          if r.get("previous_layout") and "p50_ms" in s2 else []),
        f"A {sc['items']}-item commit afterwards: {sc['wall_s']} s in all, {sc['region_s']} s of it on the region structure "
        f"({sc['trained']} IVF training{'' if sc['trained'] == 1 else 's'}).",
        "",
        f"Goal: opening the stored structure ≥ {GOAL:g}× faster than computing it: {r['ratio']}× "
        f"({'**met**' if r['met'] else '**missed**'}). Load average {r['load_average'][0]:.1f} at start, "
        f"{r['load_average_end'][0]:.1f} at end (2 shared cores).",
    ])


def render() -> None:
    """Rewrite the recorded section's text from its recorded figures (nothing measured)."""
    import json

    data = json.loads((_results.RESULTS_DIR / "roi_open.json").read_text())["results"]
    _results.rerender("roi_open", data, markdown(data["runs"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="20000", help="Comma-separated index sizes in slices (one index each).")
    ap.add_argument("--regions", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--work", default=None, help="Keep the index here (default: a temporary folder, removed).")
    ap.add_argument("--render", action="store_true", help="Only rewrite RESULTS.md's section from the recorded JSON.")
    args = ap.parse_args()
    if args.render:
        render()
        return
    runs = []
    for items in (int(v) for v in str(args.items).split(",")):
        runs.append(run(args, items))
        runs[-1]["shard_size"] = args.shard_size
    largest = max(runs, key=lambda r: r["items"])
    result = {**largest, "runs": runs}  # the summary line reads the largest index
    command = f"python benchmarks/roi_open.py --items {args.items} --regions {args.regions}"
    path = _results.record("roi_open", result, markdown(runs), command)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
