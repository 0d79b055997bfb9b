"""Explanation quality that can tell methods apart (issue 19): margins over trivial maps + sanity checks.

On the phantom (liver masks from ``masks.h5``), an index built with a seeded random-init ResNet-18
and one with a SimSiam encoder trained briefly on other phantom patients (cached in
``benchmarks/work/``), or ``--index`` an existing index with its ``--masks-file``:

- query targets: each of N query slices is paired with its nearest neighbour from another
  patient that has a liver mask; the neighbour's map explains its similarity to the query;
- every method and the four trivial maps (noise, centre, intensity, Sobel edges) are scored with
  the same code (``medcbir.explain.evaluation.evaluate_methods``); a method's margin is its score
  minus the best trivial map's (sign flipped for ↓ metrics: positive = better than every
  trivial map);
- sanity checks (Adebayo et al. 2018): Spearman rank correlation between each method's maps on
  the real encoder and on copies with the top 1 / ¼ / ½ / all parametrised layers re-initialised,
  and on an encoder trained briefly on pixel-shuffled images; ≥ 0.5 after full randomisation is flagged;
- the same with own-embedding targets, to show which columns cannot move there.

Usage: .venv/bin/python benchmarks/explain_quality.py [--n 8] [--masks 500]
       .venv/bin/python benchmarks/explain_quality.py --index INDEX --masks-file masks.h5 --organ liver
(the CLI equivalent for any archive with masks: ``medcbir explain-eval INDEX --masks-file masks.h5
--organ liver --methods relax,gradcam,occlusion,smoothgrad --sanity --json scores.json``)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

METHODS = ("relax", "occlusion", "gradcam", "smoothgrad")
SHOWN = (("rank_accuracy", "RRA↑"), ("mass_accuracy", "RMA↑"), ("deletion_auc", "Del↓"), ("insertion_auc", "Ins↑"), ("adc", "ADC↓"), ("pic", "PIC↑"))
HEAD = dict(SHOWN) | {"pointing_game": "PG↑", "pointwise": "PL↑", "auprc": "AUPRC↑"}


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _signed(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def random_checkpoint(work: Path, size: int) -> Path:
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    return save_checkpoint(work / "random.pt", new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), size=size), seed=0))


def trained_checkpoint(args) -> Path:
    """SimSiam + HU views on a phantom of *other* patients (seed 1), cached in benchmarks/work/."""
    from medcbir.train.trainer import TrainConfig, train

    out = _results.HERE / "work" / f"explain-quality-simsiam-{args.size}px-{args.train_epochs}ep.pt"
    if not out.exists():
        archive = _results.cached_phantom("explain-quality-train", args.patients, args.slices, 256, seed=1)
        print(f"training SimSiam {args.train_epochs} epochs on {archive}", file=sys.stderr, flush=True)
        config = TrainConfig(
            archive=archive, out=out, method="simsiam", epochs=args.train_epochs, batch_size=32, size=args.size,
            views="hu-narrow,hu-wide", lr=0.2, seed=0, crop_scale=0.2, progress=False,
        )
        train(config)
    return out


def build_index(work: Path, archive: Path, checkpoint: Path) -> Path:
    from medcbir.indexer import index_archive

    index_archive(archive, work, str(checkpoint), workers=1, progress=False)
    return work


def _method_rows(result: dict, margins: bool) -> list[str]:
    rows = []
    for name, r in result["methods"].items():
        cells = [f"{_fmt(r[k])} ({_signed(r['margin'][k])})" if margins else _fmt(r[k]) for k, _ in SHOWN]
        rows.append(f"| **{name}** | " + " | ".join(cells) + " |")
    for name, r in result["trivial"].items():
        rows.append(f"| _{name}_ (trivial) | " + " | ".join(_fmt(r[k]) for k, _ in SHOWN) + " |")
    return rows


def section(label: str, query: dict, own: dict, args) -> list[str]:
    lines = [
        f"### {label}",
        "",
        f"Query targets: {query['n']} neighbour slices, each explained w.r.t. its query's embedding (query and neighbour "
        f"from different patients, both with a liver mask; mean cosine {query['target_similarity']:.3f}). Cell = score (margin).",
        "",
        "| map | " + " | ".join(h for _, h in SHOWN) + " |",
        "|" + "---|" * (len(SHOWN) + 1),
        *_method_rows(query, True),
    ]
    lines += [f"\nn/a {HEAD[k]} (query targets): {reason}" for k, reason in query["not_applicable"].items()]
    sanity = query.get("sanity", {})
    if sanity:
        stages = [p["layers"] for p in next(iter(sanity.values()))["parameter"]]
        lines += [
            "",
            f"Sanity checks: Spearman ρ (SSIM) between the maps of the real encoder and of a copy with its top k of {stages[-1]} "
            f"conv/linear layers re-initialised (cascading from the top), and of an encoder trained {args.sanity_steps} steps on "
            "pixel-shuffled slices (data randomisation). Lower = the maps depend more on what the encoder learnt.",
            "",
            "| map | " + " | ".join(f"top {s}" for s in stages) + " | data | flagged (ρ ≥ 0.5) |",
            "|" + "---|" * (len(stages) + 3),
        ]
        for name, r in sanity.items():
            cells = [f"{p['spearman']:.2f} ({p['ssim']:.2f})" for p in r["parameter"]]
            cells.append(f"{r['data']['spearman']:.2f} ({r['data']['ssim']:.2f})" if r.get("data") else "–")
            tag = f"**{name}**" if name in query["methods"] else f"_{name}_ (trivial)"
            lines.append(f"| {tag} | " + " | ".join(cells) + f" | {'yes' if r['flagged'] else 'no'} |")
    lines += [
        "",
        f"Own-embedding targets ({own['n']} slices), for comparison: score (margin).",
        "",
        "| map | " + " | ".join(h for _, h in SHOWN) + " |",
        "|" + "---|" * (len(SHOWN) + 1),
        *_method_rows(own, True),
    ]
    lines += [f"\nn/a {HEAD[k]} (own targets): {reason}" for k, reason in own["not_applicable"].items()]
    return lines


def summary(runs: dict) -> list[str]:
    lines = [
        "| encoder | method | RRA margin | Del margin | ADC margin | ρ all layers randomised | ρ data randomised | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, run in runs.items():
        q = run["query"]
        for name, r in q["methods"].items():
            s = q.get("sanity", {}).get(name)
            rho = f"{s['parameter'][-1]['spearman']:.2f}" if s else "–"
            rho_d = f"{s['data']['spearman']:.2f}" if s and s.get("data") else "–"
            flag = ("yes" if s["flagged"] else "no") if s else "–"
            m = r["margin"]
            lines.append(f"| {label} | {name} | {_signed(m['rank_accuracy'])} | {_signed(m['deletion_auc'])} | {_signed(m['adc'], 2)} | {rho} | {rho_d} | {flag} |")
    return lines


def markdown(runs: dict, args, seconds: float, load: tuple) -> str:
    lines = [
        f"Phantom liver masks (`masks.h5`), {args.n} query–neighbour pairs at {args.size} px; RELAX {args.masks} masks, occlusion "
        f"window {args.size // 8} px, SmoothGrad defaults. Margin = score − best of the four trivial maps (noise, centre, intensity, "
        "Sobel edges) for ↑ metrics, best − score for ↓ metrics: positive = better than every trivial map. "
        "`n/a` = the metric cannot rank maps here (reason below the table).",
        "",
        *summary(runs),
        "",
    ]
    for label, run in runs.items():
        lines += section(label, run["query"], run["own"], args) + [""]
    lines.append(
        f"Total {seconds:.0f} s (training included) on a shared machine: load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(1/5/15 min) at the end, ~8 other engineers on the 2 cores; one torch thread. Timings (s/img in the JSON) are noisy."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=None, help="an existing index (default: build them on the phantom)")
    ap.add_argument("--masks-file", type=Path, default=None)
    ap.add_argument("--organ", default="liver")
    ap.add_argument("--encoder", default=None, help="with --index: checkpoint with the index's fingerprint")
    ap.add_argument("--encoders", default="random,trained", help="phantom run: which encoders (random, trained)")
    ap.add_argument("--train-epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--masks", type=int, default=500, help="RELAX masks")
    ap.add_argument("--sanity-steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-record", action="store_true", help="print only (do not write results/ and RESULTS.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medcbir.explain.evaluation.run import evaluate_methods
    from medcbir.explain.evaluation.tables import format_table

    def run(index, masks_file, encoder=None) -> dict:
        common = dict(organ=args.organ, methods=METHODS, n=args.n, encoder=encoder, angles=(), n_masks=args.masks, seed=0,
                      progress=lambda m: print(f"  {m} ...", file=sys.stderr, flush=True))
        query = evaluate_methods(index, masks_file, targets="query", exclude="same-patient", sanity=True, sanity_steps=args.sanity_steps, **common)
        print(format_table(query), flush=True)
        own = evaluate_methods(index, masks_file, targets="own", **common)
        print(format_table(own), flush=True)
        return {"query": query, "own": own}

    t0 = time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.index is not None:
            runs[args.encoder or "the index's encoder"] = run(args.index, args.masks_file, args.encoder)
        else:
            archive = _results.cached_phantom("explain-quality", args.patients, args.slices, 256)
            for which in [e.strip() for e in args.encoders.split(",") if e.strip()]:
                if which == "random":
                    ckpt, label = random_checkpoint(Path(tmp), args.size), "random init (seed 0)"
                elif which == "trained":
                    ckpt, label = trained_checkpoint(args), f"SimSiam + HU views, {args.train_epochs} epochs on other patients"
                else:
                    raise SystemExit(f"unknown encoder {which!r} (random, trained)")
                print(f"{label}: indexing", file=sys.stderr, flush=True)
                index = build_index(Path(tmp) / f"index-{which}", archive, ckpt)
                runs[label] = run(index, archive / "masks.h5")
    seconds = time.perf_counter() - t0
    load = os.getloadavg()
    if args.no_record:
        return

    def strip(result):
        out = {k: v for k, v in result.items() if k not in ("methods", "trivial")}
        for k in ("methods", "trivial"):
            out[k] = {m: {kk: vv for kk, vv in v.items() if kk != "per_image"} for m, v in result[k].items()}
        return out

    data = {"runs": {label: {t: strip(r) for t, r in run_.items()} for label, run_ in runs.items()}, "seconds": seconds, "loadavg": load,
            "n": args.n, "size": args.size, "relax_masks": args.masks, "sanity_steps": args.sanity_steps}
    command = ".venv/bin/python benchmarks/explain_quality.py" + (f" --n {args.n}" if args.n != 8 else "") + (f" --masks {args.masks}" if args.masks != 500 else "")
    _results.record("explain_quality", _results_clean(data), markdown(runs, args, seconds, load), command)


def _results_clean(value):
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _results_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_results_clean(v) for v in value]
    return value


if __name__ == "__main__":
    main()
