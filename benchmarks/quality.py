"""Retrieval quality of training recipes beside the baselines (issue 10, item 3).

Protocol:

- Two phantom archives with different seeds: the encoders train on the *train* archive only and
  are evaluated on the *test* archive, whose patients they never saw.
- Every training row runs within the same CPU budget (``--budget-min`` of wall time; the run
  stops after the epoch that crosses it, the checkpoint of that epoch is evaluated) — stated in
  the output with the epochs each row reached.
- Evaluation: leave-one-out retrieval on the test archive with ``exclude same-patient``, K = 5,
  for every label file the test archive has (``labels.csv`` anatomical level, ``labels-liver.csv``
  liver present, ``labels-lesion.csv`` lesion present); MAP@5, AP@5 and 5-NN accuracy. The test
  items are decoded once per preprocessing and scored in memory with the same metric functions as
  ``medcbir evaluate`` (``medcbir.engine.metrics``); one row is cross-checked against a real
  index + ``evaluate`` in the same run.
- RR: RELAX relevance rank accuracy on the liver masks (the seed paper's metric), on up to
  ``--rr-slices`` test slices that show liver, and its margin over the best trivial map (noise,
  centre, intensity, edges: ``medcbir.explain.evaluation.relevance_rank_and_margin``), for the
  trained rows and ``random``; the masks go through the same crop and resize as the images.
- Rows: ``thumbnail:8/16/32``, ``random``, ``default``, SimSiam with one window, SimSiam with the
  Hounsfield-window views (the seed paper), the archive recipe (SimSiam + archive augmentations +
  neighbour-slice positives) and its ablations (without neighbour positives, without the archive
  augmentations), and ``seqsort``; ``--seeds`` repeats the recipe and the paper's rows.
- A plot of test MAP@5 per epoch for each trained row, the baselines as horizontal lines.

Reproduce: ``.venv/bin/python benchmarks/quality.py [--budget-min 20 --seeds 0,1,2]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.device import Device  # noqa: E402
from medcbir.engine.metrics import ap_at_k, knn_vote, map_at_k  # noqa: E402
from medcbir.imaging import read_dicom  # noqa: E402
from medcbir.imaging.phantom import make_archive  # noqa: E402

K = 5


class Budget(Exception):
    """Raised from the epoch callback when a row's budget is spent (the epoch's checkpoint is kept)."""


def _labels(path: Path) -> dict:
    with path.open(newline="") as fh:
        return {(r["sop_instance_uid"], int(r.get("frame") or 0)): r["label"] for r in csv.DictReader(fh)}


class TestSet:
    """The test archive's items, decoded once, preprocessed per recipe on demand, scored in memory."""

    def __init__(self, archive: Path) -> None:
        self.items = []
        for path in sorted(archive.rglob("*.dcm")):
            self.items.extend(read_dicom(path, key=b"q" * 32))
        self.patients = np.array([i.meta.patient_pseudonym for i in self.items])
        self.label_sets = {}
        for name in ("labels.csv", "labels-liver.csv", "labels-lesion.csv"):
            if (archive / name).is_file():
                table = _labels(archive / name)
                self.label_sets[name] = np.array([table.get((i.meta.sop_instance_uid, i.meta.frame), "") for i in self.items], dtype=object)
        self._images: dict = {}
        self.masks: dict = {}

    def organ(self, archive: Path, organ: str, limit: int, min_pixels: int = 50) -> list[int]:
        """Indices of up to ``limit`` items that show ``organ`` (``liver``, ``lesion``; spread
        over the archive), their masks loaded."""
        import h5py

        masks = self.masks.setdefault(organ, {})
        with h5py.File(archive / "masks.h5", "r") as f:
            for i, item in enumerate(self.items):
                group = f.get(item.meta.sop_instance_uid)
                if group is not None and organ in group and group[organ][...].sum() > min_pixels:
                    masks[i] = group[organ][...].astype(np.float32)
        rows = sorted(masks)
        step = max(1, len(rows) // max(1, limit))
        return rows[::step][:limit]

    def mask_like(self, prep, i: int, organ: str = "liver") -> np.ndarray:
        """Item i's organ mask through the same geometry (body crop, scale, resize) as its image."""
        from medcbir.imaging.foreground import extract
        from medcbir.imaging.preprocess import resize_keep_aspect

        item, mask = self.items[i], self.masks[organ][i]
        if prep.crop == "none":
            return resize_keep_aspect(mask, prep.size, fill=0.0) > 0.5
        return extract(mask, prep.region(item), prep.size, 0.0) > 0.5

    def relevance(self, module, rows: list[int], n_masks: int, organ: str = "liver") -> dict | None:
        """RELAX rank accuracy on an organ's masks and its margin over the best trivial map."""
        try:
            from medcbir.explain.evaluation.run import relevance_rank_and_margin
        except ImportError:
            return None
        if not rows:
            return None
        prep = module.preprocessing
        images = self.images(prep)[rows]
        masks = [self.mask_like(prep, i, organ) for i in rows]
        result = relevance_rank_and_margin(module.eval(), images, masks, methods=("relax",), n_masks=n_masks, seed=0)
        relax = result["methods"]["relax"]
        return {"rr": relax["rank_accuracy"], "margin": relax["margin"].get("rank_accuracy"), "best_trivial": relax["best_trivial"].get("rank_accuracy"), "n": result["n"]}

    def images(self, prep) -> np.ndarray:
        key = json.dumps(prep.to_dict(), sort_keys=True)
        if key not in self._images:
            self._images[key] = np.stack([prep.apply(i) for i in self.items])
        return self._images[key]

    def embed(self, module) -> np.ndarray:
        x = self.images(module.preprocessing)
        out = []
        module = module.eval()
        with torch.inference_mode():
            for s in range(0, len(x), 64):
                out.append(module(torch.from_numpy(x[s : s + 64])).float().numpy())
        return np.concatenate(out)

    def score(self, emb: np.ndarray) -> dict:
        result = {}
        sims = emb @ emb.T
        same = self.patients[:, None] == self.patients[None, :]
        for name, labels in self.label_sets.items():
            rows = np.flatnonzero(labels != "")
            s = sims[np.ix_(rows, rows)].copy()
            s[same[np.ix_(rows, rows)]] = -np.inf
            top = np.argsort(-s, axis=1, kind="stable")[:, :K]
            lab = labels[rows]
            rel = lab[top] == lab[:, None]
            n_rel = np.array([np.sum((lab == lab[i]) & ~same[rows[i], rows]) for i in range(len(rows))])
            _, codes = np.unique(lab, return_inverse=True)
            predicted = knn_vote(codes[top])
            result[name] = {
                "map_at_k": float(map_at_k(rel).mean()),
                "ap_at_k": float(ap_at_k(rel, n_rel).mean()),
                "knn_accuracy": float((predicted == codes).mean()),
                "n_queries": int(len(rows)),
            }
        return result


def rows_to_train(args) -> list[tuple[str, int, dict]]:
    seeds = [int(s) for s in args.seeds.split(",")]
    simsiam = dict(method="simsiam", size=args.size, batch_size=args.batch_size, lr=args.lr, method_options={"proj_dim": 512, "pred_dim": 128})
    simclr = dict(method="simclr", size=args.size, batch_size=args.batch_size, lr=args.lr, method_options={"proj_dim": 128})
    recipe = dict(simclr, augment="archive", position_delta=args.position_delta, position_p=1.0)
    rows = []
    for seed in seeds:
        rows.append(("recipe: SimCLR + positional positives + archive aug", seed, recipe))
        rows.append(("paper: SimSiam + HU views", seed, dict(simsiam, views="hu-narrow,hu-wide")))
    rows += [
        ("SimSiam, one window", seeds[0], dict(simsiam)),
        ("recipe without positional positives", seeds[0], dict(recipe, position_delta=0.0)),
        ("recipe without archive aug", seeds[0], dict(recipe, augment="standard")),
        ("recipe + neighbour slices", seeds[0], dict(recipe, neighbour_mm=args.neighbour_mm, neighbour_p=0.5)),
        ("SimSiam + HU views + archive aug + neighbours (0.2 recipe)", seeds[0], dict(simsiam, views="hu-narrow,hu-wide", augment="archive", neighbour_mm=args.neighbour_mm)),
        ("seqsort", seeds[0], dict(method="seqsort", size=args.size, batch_size=args.batch_size, lr=args.lr, method_options={"length": 3})),
    ]
    if args.only:
        rows = [r for r in rows if any(o in r[0] for o in args.only.split(","))]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-patients", type=int, default=12)
    ap.add_argument("--test-patients", type=int, default=6)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--neighbour-mm", type=float, default=10.0)
    ap.add_argument("--record-as", default="quality", help="section name in RESULTS.md (e.g. quality_epochs for a fixed-epoch run)")
    ap.add_argument("--position-delta", type=float, default=0.05, help="relative-position tolerance of the recipe's positional positives")
    ap.add_argument("--budget-min", type=float, default=20.0, help="wall-clock minutes per training row")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default="", help="comma-separated substrings of the rows to train (default all)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--rr-slices", type=int, default=16, help="test slices with liver for the RELAX relevance rank (0 = off)")
    ap.add_argument("--rr-masks", type=int, default=500, help="RELAX masks per slice for RR")
    args = ap.parse_args()

    from medcbir.encoders.module import new_encoder_module, thumbnail_encoder_module
    from medcbir.encoders.architecture import DEFAULT_POOLING
    from medcbir.encoders.module import classic_encoder_module
    from medcbir.encoders.preprocessing import default_preprocessing
    from medcbir.encoders.runtime import load_encoder_module
    from medcbir.train.trainer import TrainConfig, train

    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="medcbir-quality-"))
    train_archive, test_archive = work / "train", work / "test"
    make_archive(train_archive, patients=args.train_patients, slices=args.slices, seed=101, size=256)
    make_archive(test_archive, patients=args.test_patients, slices=args.slices, seed=202, size=256)
    test = TestSet(test_archive)
    rr_rows = {organ: test.organ(test_archive, organ, args.rr_slices) for organ in ("liver", "lesion")} if args.rr_slices else {}
    prep = default_preprocessing(args.size)
    baselines = {}
    for name, module in [
        ("thumbnail:8", thumbnail_encoder_module(8, prep)),
        ("thumbnail:16", thumbnail_encoder_module(16, prep)),
        ("thumbnail:32", thumbnail_encoder_module(32, prep)),
        ("random", new_encoder_module("resnet18", prep, seed=0, pooling=DEFAULT_POOLING)),
        ("classic", classic_encoder_module("classic", prep)),
        ("default (224 px)", load_encoder_module("default")),
    ]:
        baselines[name] = test.score(test.embed(module))
        if name == "random":
            baselines[name]["relax_rr"] = test.relevance(module, rr_rows.get("liver", []), args.rr_masks)
            baselines[name]["relax_rr_lesion"] = test.relevance(module, rr_rows.get("lesion", []), args.rr_masks, "lesion")
        print(name, json.dumps({k: round(v["map_at_k"], 3) for k, v in baselines[name].items() if not k.startswith("relax_rr")}), baselines[name].get("relax_rr"), flush=True)

    # Cross-check of the in-memory scorer: thumbnail:16 through a real index + `evaluate`.
    from medcbir.engine import Engine, evaluate
    from medcbir.indexer import index_archive

    index_archive(test_archive, work / "check-index", thumbnail_encoder_module(16, prep), progress=False, workers=1, key_file=work / "k.key")
    with Engine.open(work / "check-index") as engine:
        check = evaluate(engine, test_archive / "labels.csv", k=K, exclude="same-patient")["map_at_k"]
    cross_check = {"engine_map_at_k": check, "in_memory_map_at_k": baselines["thumbnail:16"]["labels.csv"]["map_at_k"]}
    print("cross-check", cross_check, flush=True)

    device = Device(torch="cpu", precision=args.precision)
    trained = []
    for label, seed, options in rows_to_train(args):
        out = work / f"enc-{len(trained)}.pt"
        curve = []
        t0 = time.time()

        def on_epoch(epoch, row, out=out, curve=curve, t0=t0):
            curve.append({"epoch": epoch, "seconds": round(time.time() - t0, 1), **{k: v["map_at_k"] for k, v in test.score(test.embed(load_encoder_module(out))).items()}})
            if time.time() - t0 > args.budget_min * 60:
                raise Budget

        config = TrainConfig(archive=train_archive, out=out, epochs=args.max_epochs, seed=seed, device=device, progress=False, workers=1, **options)
        try:
            train(config, on_epoch_end=on_epoch)
        except Budget:
            pass
        final = test.score(test.embed(load_encoder_module(out)))
        final["relax_rr"] = test.relevance(load_encoder_module(out), rr_rows.get("liver", []), args.rr_masks)
        final["relax_rr_lesion"] = test.relevance(load_encoder_module(out), rr_rows.get("lesion", []), args.rr_masks, "lesion")
        trained.append({"row": label, "seed": seed, "options": {k: v for k, v in options.items() if k != "method_options"}, "epochs": len(curve),
                        "seconds": round(time.time() - t0, 1), "result": final, "curve": curve})
        print(label, seed, f"{len(curve)} epochs", json.dumps({k: round(v["map_at_k"], 3) for k, v in final.items() if not k.startswith("relax_rr")}), final.get("relax_rr"), flush=True)

    data = {"args": vars(args), "baselines": baselines, "trained": trained, "cross_check": cross_check, "seconds": round(time.time() - t_start, 1), "load_avg": os.getloadavg()}
    plot = Path(__file__).resolve().parent / "results" / f"{args.record_as}.png"
    _plot(trained, baselines, plot)
    _results.record(args.record_as, data, _markdown(data), "`.venv/bin/python benchmarks/quality.py " + " ".join(sys.argv[1:]) + "`")


def _plot(trained, baselines, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for row in trained:
        if row["curve"]:
            ax.plot([c["epoch"] for c in row["curve"]], [c.get("labels.csv", np.nan) for c in row["curve"]], "-", label=f"{row['row']} (seed {row['seed']})")
    for name, result in baselines.items():
        if "labels.csv" in result and isinstance(result["labels.csv"], dict):
            ax.axhline(result["labels.csv"]["map_at_k"], linestyle="--", linewidth=1, color="gray")
            ax.text(0.5, result["labels.csv"]["map_at_k"], name, fontsize=7, color="gray", va="bottom")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test MAP@5 (level, other patients)")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _markdown(data: dict) -> str:
    args = data["args"]
    sets = sorted({s for r in data["baselines"].values() for s in r if not s.startswith("relax_rr")})
    head = "| row | seed | epochs in budget | " + " | ".join(f"{s} MAP@5 / AP@5 / 5-NN" for s in sets) + " | RELAX RR on liver (margin over best trivial) | RR on lesions (margin) |"
    lines = [
        f"Train archive {args['train_patients']} patients, test archive {args['test_patients']} other patients, {args['slices']} slices each; "
        f"encoders at {args['size']} px ({args['precision']}), batch {args['batch_size']}, lr {args['lr']}; "
        f"**budget {args['budget_min']:g} min of wall time per training row** on this shared 2-core machine "
        f"(load average at the end {data['load_avg'][0]:.1f}); exclude same-patient, K = 5.",
        "",
        head,
        "|" + "---|" * (5 + len(sets)),
    ]
    def fmt(r):
        cells = [f"{r[s]['map_at_k']:.3f} / {r[s]['ap_at_k']:.3f} / {r[s]['knn_accuracy']:.3f}" if s in r else "-" for s in sets]
        for key in ("relax_rr", "relax_rr_lesion"):
            rr = r.get(key)
            cells.append(f"{rr['rr']:.3f} ({rr['margin']:+.3f})" if rr and rr.get("margin") is not None else (f"{rr['rr']:.3f}" if rr else "-"))
        return " | ".join(cells)
    for name, r in data["baselines"].items():
        lines.append(f"| {name} | - | - | {fmt(r)} |")
    for row in data["trained"]:
        lines.append(f"| {row['row']} | {row['seed']} | {row['epochs']} | {fmt(row['result'])} |")
    best = max(r["labels.csv"]["map_at_k"] for r in data["baselines"].values() if "labels.csv" in r)
    random_rr = (data["baselines"].get("random") or {}).get("relax_rr")
    recipe_rr = [r["result"]["relax_rr"]["rr"] for r in data["trained"] if r["row"].startswith("recipe:") and r["result"].get("relax_rr")]
    if random_rr and recipe_rr:
        lines_rr = f"Goal (RR of the recipe above RR of random): recipe {np.mean(recipe_rr):.3f} vs random {random_rr['rr']:.3f}: " + (
            "**met**" if np.mean(recipe_rr) > random_rr["rr"] else "**missed**")
    else:
        lines_rr = "RR goal: not measured in this run."
    lines.append("")
    for labels, what in (("labels.csv", "levels"), ("labels-liver.csv", "liver present")):
        recipe = [r["result"][labels]["map_at_k"] for r in data["trained"] if r["row"].startswith("recipe:") and labels in r["result"]]
        if not recipe:
            continue
        best_name, best = max(((n, r[labels]["map_at_k"]) for n, r in data["baselines"].items() if labels in r), key=lambda x: x[1])
        mean, std = float(np.mean(recipe)), float(np.std(recipe))
        margin = mean - best
        lines.append(
            f"Goal (recipe ≥ best baseline + 0.10 MAP@5 on {what}, mean of seeds, every seed above the best baseline): "
            f"recipe {mean:.3f} ± {std:.3f} over {len(recipe)} seed(s) vs best baseline {best_name} {best:.3f}: "
            + ("**met**" if margin >= 0.10 and min(recipe) > best else f"**missed** (margin {margin:+.3f}, needed +0.10"
               + ("" if min(recipe) > best else "; not every seed above it") + ")")
        )
    paper = [r["result"]["labels.csv"]["map_at_k"] for r in data["trained"] if r["row"].startswith("paper:")]
    one = [r["result"]["labels.csv"]["map_at_k"] for r in data["trained"] if r["row"] == "SimSiam, one window"]
    if paper and one:
        lines.append(
            f"The paper's claim (HU views beat one window): SimSiam + HU views {np.mean(paper):.3f} ± {np.std(paper):.3f} "
            f"({len(paper)} seed(s)) vs one window {one[0]:.3f} (seed {data['trained'][0]['seed']}): "
            + ("**holds here**" if np.mean(paper) > one[0] else "**does not hold here**")
        )
    lines.append(lines_rr)
    cc = data["cross_check"]
    lines.append(f"Scorer cross-check: thumbnail:16 MAP@5 {cc['in_memory_map_at_k']:.4f} in memory vs {cc['engine_map_at_k']:.4f} through a real index and `evaluate`.")
    lines.append(f"Plot: `benchmarks/results/{args.get('record_as', 'quality')}.png` (test MAP@5 per epoch; baselines dashed).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
