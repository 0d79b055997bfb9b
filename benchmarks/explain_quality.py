"""Explanation quality that can tell methods apart (issue 19): margins over trivial maps + sanity checks.

On the phantom (liver masks from ``masks.h5``), an index built with a seeded random-init ResNet-18
(or ``--encoder`` a checkpoint, or ``--index`` an existing index with its ``--masks-file``):

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


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _signed(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def build_index(work: Path, patients: int, slices: int, size: int) -> tuple[Path, Path]:
    from medcbir.imaging import Preprocessing
    from medcbir.indexer import index_archive
    from medcbir.train import new_encoder, save_checkpoint

    archive = _results.cached_phantom("explain-quality", patients, slices, 256)
    encoder = save_checkpoint(work / "encoder.pt", new_encoder("resnet18", Preprocessing(("ct-liver-wide",), size=size), seed=0))
    index_archive(archive, work / "index", str(encoder), workers=1, progress=False)
    return work / "index", archive


def markdown(query: dict, own: dict, args, seconds: float, load: tuple) -> str:
    head = "| map | " + " | ".join(f"{h} (margin)" for _, h in SHOWN) + " |"
    lines = [
        f"Phantom liver masks, {query['n']} neighbour slices each explained w.r.t. its query's embedding "
        f"(query and neighbour from different patients; mean cosine {query['target_similarity']:.3f}); "
        f"encoder: {args.encoder_label}; RELAX {args.masks} masks, occlusion window {args.size // 8} px. "
        "Margin = score − best trivial map (↓ metrics: best − score); positive = better than every trivial map.",
        "",
        head,
        "|" + "---|" * (len(SHOWN) + 1),
    ]
    for name, r in query["methods"].items():
        lines.append(f"| **{name}** | " + " | ".join(f"{_fmt(r[k])} ({_signed(r['margin'][k])})" for k, _ in SHOWN) + " |")
    for name, r in query["trivial"].items():
        lines.append(f"| _{name}_ (trivial) | " + " | ".join(_fmt(r[k]) for k, _ in SHOWN) + " |")
    for key, reason in query["not_applicable"].items():
        lines.append(f"\nn/a {key} (query targets): {reason}")
    sanity = query.get("sanity", {})
    if sanity:
        stages = [p["layers"] for p in next(iter(sanity.values()))["parameter"]]
        lines += [
            "",
            "Sanity checks: Spearman rank correlation (SSIM) between the maps of the real encoder and of a copy with the top "
            f"k of {stages[-1]} parametrised layers re-initialised (cascading), and of an encoder trained {args.sanity_steps} steps on "
            "pixel-shuffled slices (data randomisation). Lower = the maps depend more on what the encoder learnt.",
            "",
            "| map | " + " | ".join(f"top {s}" for s in stages) + " | data | flagged (ρ ≥ 0.5) |",
            "|" + "---|" * (len(stages) + 3),
        ]
        for name, s in sanity.items():
            cells = [f"{p['spearman']:.2f} ({p['ssim']:.2f})" for p in s["parameter"]]
            cells.append(f"{s['data']['spearman']:.2f} ({s['data']['ssim']:.2f})" if s.get("data") else "–")
            label = f"**{name}**" if name in query["methods"] else f"_{name}_ (trivial)"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if s['flagged'] else 'no'} |")
    lines += [
        "",
        f"Own-embedding targets on the same slices' queries ({own['n']} images), for comparison:",
        "",
        "| map | " + " | ".join(h for _, h in SHOWN) + " |",
        "|" + "---|" * (len(SHOWN) + 1),
    ]
    for name, r in {**own["methods"], **{f"_{k}_ (trivial)": v for k, v in own["trivial"].items()}}.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r[k]) for k, _ in SHOWN) + " |")
    for key, reason in own["not_applicable"].items():
        lines.append(f"\nn/a {key} (own targets): {reason}")
    lines.append(
        f"\nTotal {seconds:.0f} s on a shared machine (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "over 1/5/15 min at the end; ~8 other engineers share the 2 cores), one torch thread."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=None, help="an existing index (default: build one on the phantom)")
    ap.add_argument("--masks-file", type=Path, default=None)
    ap.add_argument("--organ", default="liver")
    ap.add_argument("--encoder", default=None, help="checkpoint with the index's fingerprint (default: the index's)")
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

    from medcbir.explain.evaluation import evaluate_methods, format_table

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.index is None:
            index, archive = build_index(Path(tmp), args.patients, args.slices, args.size)
            masks_file = archive / "masks.h5"
            args.encoder_label = f"seeded random-init ResNet-18 at {args.size} px (phantom {args.patients} patients × {args.slices} slices)"
        else:
            index, masks_file = args.index, args.masks_file
            args.encoder_label = args.encoder or "the index's"
        common = dict(organ=args.organ, methods=METHODS, n=args.n, encoder=args.encoder, angles=(), n_masks=args.masks, seed=0,
                      progress=lambda m: print(f"  {m} ...", file=sys.stderr, flush=True))
        print("query targets (+ sanity checks)", file=sys.stderr)
        query = evaluate_methods(index, masks_file, targets="query", exclude="same-patient", sanity=True, sanity_steps=args.sanity_steps, **common)
        print(format_table(query))
        print("own targets", file=sys.stderr)
        own = evaluate_methods(index, masks_file, targets="own", **common)
        print(format_table(own))
    seconds = time.perf_counter() - t0
    load = os.getloadavg()
    if args.no_record:
        return
    strip = lambda r: {k: {m: {kk: vv for kk, vv in v.items() if kk != "per_image"} for m, v in r[k].items()} for k in ("methods", "trivial")}  # noqa: E731
    data = {
        "query": {**{k: v for k, v in query.items() if k not in ("methods", "trivial")}, **strip(query)},
        "own": {**{k: v for k, v in own.items() if k not in ("methods", "trivial")}, **strip(own)},
        "seconds": seconds,
        "loadavg": load,
        "encoder": args.encoder_label,
    }
    command = ".venv/bin/python benchmarks/explain_quality.py" + (f" --n {args.n}" if args.n != 8 else "") + (f" --masks {args.masks}" if args.masks != 500 else "")
    _results.record("explain_quality", _results_clean(data), markdown(query, own, args, seconds, load), command)


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
