"""What storing regions costs at indexing, stage by stage, and what re-describing them in place costs.

On one phantom v3 archive per frame size (``--sizes``, 256 and 512 px), in this process:

- **indexing with regions** (ours, the default) against **indexing with ``--no-regions``** (the
  peer: the same items, encoder and workers, no region extraction): items/s of each, and the ratio;
- **per stage**, on every frame of the archive decoded once: the region image (resampling to the
  1 mm grid, body mask, noise), the proposals' top-hat structures, the organ zones and the
  descriptors, ms per slice;
- **refreshing** the regions in place (``medcbir index ARCHIVE --out INDEX --refresh-regions`` on a
  copy of the ``--no-regions`` index: every item decoded again and described, shards rewritten,
  the region search structure stored) against **re-indexing** the archive with regions from scratch
  (the run above): items/s of each.

No goal: the figures say what regions cost. Decoding uses ``--workers`` processes (1 by default:
the machine's 2 cores are shared, and one worker makes ours and the peer's runs comparable).

Run: ``.venv/bin/python benchmarks/roi_index.py [--patients 4 --slices 16 --sizes 256,512]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402


def log(msg: str) -> None:
    print(f"[roi_index] {msg}", file=sys.stderr, flush=True)


def stages(archive: Path) -> dict:
    """ms per slice of each stage of region extraction, every frame of ``archive`` decoded once."""
    from medcbir.encoders import region_descriptor, region_proposals
    from medcbir.encoders.region_image import region_image
    from medcbir.imaging import read_dicom

    items = [item for path in sorted(archive.rglob("*.dcm")) for item in read_dicom(path)]
    spent = {"image": 0.0, "proposals": 0.0, "organs": 0.0, "descriptors": 0.0}
    inner = {"structures": 0.0}  # part of "proposals": labelling the top-hat residues, each structure's box and core
    organs, structures = region_proposals._organs, region_proposals._structures

    def timed(fn, into, name):
        def call(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                into[name] += time.perf_counter() - t
        return call

    region_proposals._organs = timed(organs, spent, "organs")
    region_proposals._structures = timed(structures, inner, "structures")
    regions = 0
    try:
        for item in items:
            t = time.perf_counter()
            image = region_image(item)
            spent["image"] += time.perf_counter() - t
            t = time.perf_counter()
            found = region_proposals.propose(image)
            spent["proposals"] += time.perf_counter() - t
            t = time.perf_counter()
            region_descriptor.describe(image, found[:, :4])
            spent["descriptors"] += time.perf_counter() - t
            regions += len(found)
    finally:
        region_proposals._organs, region_proposals._structures = organs, structures
    spent["proposals"] -= spent["organs"]  # the top-hat structures alone
    ms = {name: round(1000 * value / len(items), 2) for name, value in spent.items()}
    ms["total"] = round(sum(ms.values()), 2)
    ms["of_which_structures"] = round(1000 * inner["structures"] / len(items), 2)
    return {"slices": len(items), "regions_per_slice": round(regions / len(items), 1), "ms_per_slice": ms}


def run_size(args, size: int, work: Path) -> dict:
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive
    from medcbir.indexer.region_refresh import refresh_regions

    archive = work / f"archive-{size}"
    make_archive(archive, patients=args.patients, slices=args.slices, seed=args.seed, size=size, version=3, workers=1)
    out: dict = {"size": size, "load_average": list(os.getloadavg())}
    runs = {}
    for name, regions in (("no_regions", False), ("regions", True)):  # the peer first: the page cache is warm for both
        log(f"{size} px: indexing {'with' if regions else 'without'} regions")
        summary = index_archive(archive, work / f"{name}-{size}", "default", workers=args.workers, progress=False, regions=regions)
        runs[name] = {"items": summary.indexed, "seconds": round(summary.elapsed, 2), "items_per_s": round(summary.items_per_s, 2)}
    out["index"] = runs
    out["index_ratio"] = round(runs["regions"]["items_per_s"] / runs["no_regions"]["items_per_s"], 3)
    log(f"{size} px: stages")
    out["stages"] = stages(archive)
    log(f"{size} px: refresh")
    copy = work / f"refresh-{size}"
    shutil.copytree(work / f"no_regions-{size}", copy)
    refreshed = refresh_regions(copy, archive, workers=args.workers)
    out["refresh"] = {"items": refreshed.items, "seconds": round(refreshed.elapsed, 2), "items_per_s": round(refreshed.items_per_s, 2),
                      "complete": refreshed.complete, "skipped": refreshed.skipped, "regions": refreshed.regions}
    out["refresh_ratio"] = round(refreshed.items_per_s / runs["regions"]["items_per_s"], 3)
    out["load_average_end"] = list(os.getloadavg())
    return out


def markdown(r: dict) -> str:
    lines = [
        f"Phantom v3, {r['patients']} patients × {r['slices']} slices per frame size, encoder `default` on CPU, "
        f"{r['workers']} decoding worker(s); each row from one run (2 shared cores).",
        "",
        "| frame | index with regions (ours) | `--no-regions` (peer) | ratio | refresh in place | vs re-index with regions | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["sizes"]:
        lines.append(f"| {s['size']} px | {s['index']['regions']['items_per_s']} items/s | {s['index']['no_regions']['items_per_s']} items/s | "
                     f"{s['index_ratio']}× | {s['refresh']['items_per_s']} items/s | {s['refresh_ratio']}× | "
                     f"{s['load_average'][0]:.1f}–{s['load_average_end'][0]:.1f} |")
    lines += ["", "Region extraction per slice, by stage (ms, mean over the archive's slices, one process):", "",
              "| frame | region image | proposals (top-hat structures) | of which labelling, boxes, cores | organ zones | descriptors | total | regions per slice |",
              "|---|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        ms = s["stages"]["ms_per_slice"]
        lines.append(f"| {s['size']} px | {ms['image']} | {ms['proposals']} | {ms['of_which_structures']} | {ms['organs']} | "
                     f"{ms['descriptors']} | **{ms['total']}** | {s['stages']['regions_per_slice']} |")
    lines += ["", "No goal: what regions cost. The refresh decodes every item again and describes it, but embeds nothing "
              "(its peer is indexing the archive again with regions, which embeds every slice too); with one decoding worker "
              "its decoding and describing run in one thread, where indexing overlaps them with embedding (a prefetch thread), "
              "so at 1 worker the two are close: region extraction is most of both."]
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--sizes", default="256,512", help="Comma-separated frame sizes (px).")
    ap.add_argument("--workers", type=int, default=1, help="Decoding processes of every indexing and refresh run.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="Keep the archives and indexes here (default: a temporary folder, removed).")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="roi_index-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        sizes = [run_size(args, int(v), work) for v in str(args.sizes).split(",")]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = {"patients": args.patients, "slices": args.slices, "workers": args.workers, "sizes": sizes,
              "load_average": max((s["load_average"] for s in sizes), key=lambda x: x[0]),
              "seconds": round(time.perf_counter() - started, 1)}
    command = (f"python benchmarks/roi_index.py --patients {args.patients} --slices {args.slices} --sizes {args.sizes} "
               f"--workers {args.workers}")
    path = _results.record("roi_index", result, markdown(result), command)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
