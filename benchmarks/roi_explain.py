"""Explaining a region match (issue 24, third goal): do the maps find the lesion better than a trivial map?

On phantom v3 archives (``make_archive(..., version=3)``; lesions of four kinds, ``lesion-boxes.csv``,
``masks.h5`` with ``lesion-id``), indexed with regions:

- a few dozen box queries from ``lesion-boxes.csv`` (boxes at least ``--min-side`` px on their
  shorter side, the kinds taken in turn), each searched by region (top ``-k``, other patients only);
- every neighbour whose matched region holds a lesion (overlap ≥ a quarter of the smaller of box and
  lesion) is explained with RELAX and occlusion of the region match score
  (:mod:`medcbir.explain.regions`) and scored on that lesion's mask with relevance rank accuracy
  (RRA), relevance mass accuracy, pointing game and AUPRC, beside the trivial region maps (centre of
  the matched box, intensity, edges, noise; same neighbourhood), exactly as
  ``medcbir explain-eval INDEX --masks-file masks.h5 --roi-boxes lesion-boxes.csv`` does;
- the same maps scored for faithfulness to the match score, with no mask (deletion ↓ and insertion ↑
  areas: the map's top pixels take the local background, or are restored from it;
  :mod:`medcbir.explain.region_faithfulness`), beside the trivial maps' on the same neighbours;
- the goal: RRA of the region-match explanation (RELAX, what ``explain --roi`` runs) minus the best
  trivial map's > 0, on every seed; the per-neighbour paired difference with a bootstrap 95 % interval;
- time per explained neighbour: the maps alone (the scoring loop), and end to end
  (``explain_region_match``: region search + decoding + maps, ``--timing-queries`` queries).

Region data do not depend on the slice encoder, so the index is built with ``thumbnail:8`` (fast).

Run: ``.venv/bin/python benchmarks/roi_explain.py [--patients 16 --slices 48 --seeds 0 1 2 --queries 48]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.engine import Engine  # noqa: E402
from medcbir.explain.region_evaluation import REGION_KEYS, evaluate_region_explanations, read_boxes, spread  # noqa: E402
from medcbir.explain.regions import RELAX_MASKS, explain_region_match  # noqa: E402
from medcbir.imaging.phantom import make_archive  # noqa: E402
from medcbir.indexer import index_archive  # noqa: E402

METHODS = ("relax", "occlusion")
GOAL_METHOD = "relax"
BOOTSTRAP = 2000


def paired_interval(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of the mean of paired differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def measure(seed: int, args, work: Path) -> dict:
    archive, index = work / f"v3-{seed}", work / f"index-{seed}"
    t0 = time.perf_counter()
    make_archive(archive, patients=args.patients, slices=args.slices, seed=seed, size=args.size, version=3)
    index_archive(archive, index, "thumbnail:8", workers=1, progress=False)
    build = time.perf_counter() - t0
    rows = [r for r in read_boxes(archive / "lesion-boxes.csv") if min(r["box"][2], r["box"][3]) >= args.min_side]
    with Engine.open(index) as engine:
        result = evaluate_region_explanations(engine, rows, archive / "masks.h5", METHODS, n=args.queries, k=args.k, exclude="same-patient",
                                              n_masks=args.masks, seed=0)
        timed = spread(rows, args.timing_queries)
        t0 = time.perf_counter()
        explained = 0
        for row in timed:
            shown = explain_region_match(engine, f"{row['sop_instance_uid']}:{row['frame']}", row["box"], args.k, exclude="same-patient",
                                         method=GOAL_METHOD, n_masks=args.masks)
            explained += len(shown.neighbours)
        end_to_end = (time.perf_counter() - t0) / max(1, explained)
    out = {"seed": seed, "boxes": len(rows), "build_seconds": round(build, 1), "queries": result["queries"],
           "neighbours": result["neighbours"], "scored": result["scored"], "skipped": result["skipped"],
           "lesion_hit_rate": round(result["scored"] / max(1, result["neighbours"]), 3),
           "end_to_end_seconds_per_neighbour": round(end_to_end, 4), "methods": {}, "trivial": {}}
    for name, row in result["methods"].items():
        best_name = row["best_trivial"]["rank_accuracy"]
        diff = np.asarray(row["per_neighbour"]["rank_accuracy"]) - np.asarray(result["trivial"][best_name]["per_neighbour"]["rank_accuracy"])
        best_del = row["best_trivial"]["deletion_auc"]
        del_diff = np.asarray(result["trivial"][best_del]["per_neighbour"]["deletion_auc"]) - np.asarray(row["per_neighbour"]["deletion_auc"])
        out["methods"][name] = {**{k: round(row[k], 4) for k in REGION_KEYS}, "margin": {k: round(v, 4) for k, v in row["margin"].items()},
                                "best_trivial": row["best_trivial"], "rra_margin_interval": [round(v, 4) for v in paired_interval(diff, seed)],
                                "deletion_margin_interval": [round(v, 4) for v in paired_interval(del_diff, seed)],
                                "seconds_per_neighbour": round(row["seconds_per_neighbour"], 4)}
    for name, row in result["trivial"].items():
        out["trivial"][name] = {k: round(row[k], 4) for k in REGION_KEYS}
    return out


def summarise(runs: list[dict]) -> dict:
    margins = [r["methods"][GOAL_METHOD]["margin"]["rank_accuracy"] for r in runs]
    return {
        "goal": "RRA margin of the region-match explanation (relax) over the best trivial map > 0 on every seed",
        "goal_method": GOAL_METHOD,
        "rra_margin_mean": round(float(np.mean(margins)), 4),
        "rra_margin_worst": round(float(np.min(margins)), 4),
        "met": bool(min(margins) > 0),
        "by_method": {m: {"rra": round(float(np.mean([r["methods"][m]["rank_accuracy"] for r in runs])), 4),
                          "rra_margin": round(float(np.mean([r["methods"][m]["margin"]["rank_accuracy"] for r in runs])), 4),
                          "rma_margin": round(float(np.mean([r["methods"][m]["margin"]["mass_accuracy"] for r in runs])), 4),
                          "deletion_margin": round(float(np.mean([r["methods"][m]["margin"]["deletion_auc"] for r in runs])), 4),
                          "insertion_margin": round(float(np.mean([r["methods"][m]["margin"]["insertion_auc"] for r in runs])), 4),
                          "deletion_margin_worst": round(float(np.min([r["methods"][m]["margin"]["deletion_auc"] for r in runs])), 4),
                          "insertion_margin_worst": round(float(np.min([r["methods"][m]["margin"]["insertion_auc"] for r in runs])), 4),
                          "seconds_per_neighbour": round(float(np.mean([r["methods"][m]["seconds_per_neighbour"] for r in runs])), 4)}
                      for m in METHODS},
        "best_trivial_names": sorted({r["methods"][GOAL_METHOD]["best_trivial"]["rank_accuracy"] for r in runs}),
        "best_trivial_rra": round(float(np.mean([max(r["trivial"][t]["rank_accuracy"] for t in r["trivial"]) for r in runs])), 4),
        "end_to_end_seconds_per_neighbour": round(float(np.mean([r["end_to_end_seconds_per_neighbour"] for r in runs])), 4),
        "scored": int(sum(r["scored"] for r in runs)),
    }


#: Faithfulness areas (printed with one more decimal: the maps of one neighbour differ by little).
FAITHFUL = ("deletion_auc", "insertion_auc")


def markdown(runs: list[dict], summary: dict, args) -> str:
    heads = {"rank_accuracy": "RRA↑", "mass_accuracy": "RMA↑", "pointing_game": "PG↑", "auprc": "AUPRC↑", "deletion_auc": "Del↓", "insertion_auc": "Ins↑"}
    lines = [
        f"Phantom v3 ({args.patients} patients × {args.slices} slices, {args.size} px; seeds {', '.join(str(r['seed']) for r in runs)}). "
        f"Per seed {args.queries} box queries from `lesion-boxes.csv` (shorter side ≥ {args.min_side} px, kinds in turn), top-{args.k} region "
        f"neighbours of other patients; {summary['scored']} neighbours whose matched region holds a lesion were explained "
        f"(RELAX {args.masks} masks, occlusion) and scored on that lesion's mask beside the trivial region maps (same neighbourhood).",
        "",
        "| seed | map | " + " | ".join(heads.values()) + " | RRA margin (95 % CI) | s / neighbour |",
        "|---|---|" + "---|" * len(heads) + "---|---|",
    ]
    for r in runs:
        for name, row in r["methods"].items():
            lo, hi = row["rra_margin_interval"]
            lines.append(f"| {r['seed']} | **{name}** | " + " | ".join(f"{row[k]:.{4 if k in FAITHFUL else 3}f}" for k in heads)
                         + f" | {row['margin']['rank_accuracy']:+.3f} ({lo:+.3f}…{hi:+.3f}) vs {row['best_trivial']['rank_accuracy']} | "
                           f"{row['seconds_per_neighbour']:.3f} |")
        for name, row in r["trivial"].items():
            lines.append(f"| {r['seed']} | {name} | " + " | ".join(f"{row[k]:.{4 if k in FAITHFUL else 3}f}" for k in heads) + " | | |")
    s = summary
    verdict = "met" if s["met"] else f"missed by {-s['rra_margin_worst']:.3f} RRA on the worst seed (mean margin {s['rra_margin_mean']:+.3f})"
    lines += [
        "",
        f"Goal (RRA margin of `explain --roi`'s RELAX over the best trivial map > 0 on every seed): **{verdict}**. "
        f"Mean RRA: relax {s['by_method']['relax']['rra']:.3f}, occlusion {s['by_method']['occlusion']['rra']:.3f}, best trivial map "
        f"{s['best_trivial_rra']:.3f}. RMA margins: relax {s['by_method']['relax']['rma_margin']:+.3f}, occlusion "
        f"{s['by_method']['occlusion']['rma_margin']:+.3f}.",
        "",
        "Faithfulness to the match score (no mask; margins over the best trivial map, positive = better, mean of seeds / worst seed): "
        + "; ".join(f"{m} deletion {s['by_method'][m]['deletion_margin']:+.4f} / {s['by_method'][m]['deletion_margin_worst']:+.4f}, insertion "
                    f"{s['by_method'][m]['insertion_margin']:+.4f} / {s['by_method'][m]['insertion_margin_worst']:+.4f}" for m in METHODS)
        + ". Deletion margin of relax per seed (paired 95 % interval): " + ", ".join(
            f"{r['methods']['relax']['margin']['deletion_auc']:+.4f} ({r['methods']['relax']['deletion_margin_interval'][0]:+.4f}…"
            f"{r['methods']['relax']['deletion_margin_interval'][1]:+.4f}) vs {r['methods']['relax']['best_trivial']['deletion_auc']}" for r in runs) + ".",
        "",
        f"Time per explained neighbour (2 shared cores): maps alone relax {s['by_method']['relax']['seconds_per_neighbour']:.3f} s, "
        f"occlusion {s['by_method']['occlusion']['seconds_per_neighbour']:.3f} s; end to end (`explain_region_match`, region search + "
        f"DICOM decoding + RELAX maps, {args.timing_queries} queries × top-{args.k}) {s['end_to_end_seconds_per_neighbour']:.3f} s.",
        "",
        "Matched regions holding a lesion per seed: " + ", ".join(f"{r['scored']}/{r['neighbours']}" for r in runs)
        + " (the others have no lesion mask to score against: region search precision, not the explanation).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--queries", type=int, default=48, help="box queries per seed")
    ap.add_argument("-k", type=int, default=5, help="region neighbours per query")
    ap.add_argument("--min-side", type=int, default=8, help="box queries: shorter side at least this many pixels")
    ap.add_argument("--masks", type=int, default=RELAX_MASKS, help="RELAX masks per neighbour")
    ap.add_argument("--timing-queries", type=int, default=8, help="queries timed end to end")
    ap.add_argument("--work", type=Path, default=None, help="folder for the archives and indexes (default: a temporary one)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no JSON")
    args = ap.parse_args()
    load_before = list(os.getloadavg())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        runs = [measure(seed, args, Path(tmp)) for seed in args.seeds]
    summary = summarise(runs)
    text = markdown(runs, summary, args)
    print(text)
    if not args.no_record:
        data = {"parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": runs, "summary": summary,
                "wall_seconds": round(time.perf_counter() - t0, 1), "load_average": [load_before, list(os.getloadavg())]}
        _results.record("roi_explain", data, text, ".venv/bin/python benchmarks/roi_explain.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
