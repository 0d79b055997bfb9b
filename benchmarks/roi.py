"""Region search on phantom v3: lesion-kind MAP@5 of region queries beside whole-slice queries and crop
baselines (3 seeds), and the region index's size and query latency at 100k indexed slices.

**Quality.** Per seed one phantom v3 archive (``make_archive(..., version=3)``): four lesion kinds
in liver, spleen and kidneys, 3–6 lesions per patient. It is indexed twice with ``medcbir index``'s
own code (``index_archive``): with the default encoder and with the trained recipe (``medcbir train
ARCHIVE --method simclr --epochs E --size 128``, run once per benchmark on a phantom v3 archive of
other patients, label-free). Every row of ``lesion-boxes.csv`` (one lesion on one slice, the box
tight around it) is a query of :func:`medcbir.engine.region_evaluate.evaluate_regions` with
``labels-lesion-kind.csv``, K = 5, ``exclude="same-patient"``: the neighbours are other patients'
slices (patient-disjoint), relevant when labelled with the row's lesion kind. Reported beside each
other, on the same rows and candidates:

- ``region``: the box as a region query (the index's regions, best region per item);
- ``whole slice``: the row's slice searched by its stored embedding, for each encoder;
- crop baselines ``thumbnail:16``, ``random``, ``classic``: every indexed region and the query box cut
  out, resampled to 64 px in the index encoder's window, embedded, best region per item.

**Field of view.** Every box with a shorter side of at least ``FOV_MIN_SIDE`` px is queried again from its
frame resampled by each of ``FOV_ZOOMS`` (linear, PixelSpacing scaled, the box scaled and rounded): the
share of the original query's top 5 found, and how often the top 1 is the same.

Region descriptors do not depend on the slice encoder, so region search gives one figure per seed
(checked equal on both indexes); the crop baselines depend only on the window, which both encoders share.

**Scale.** A 100k-slice index written with medcbir's own ``IndexWriter`` (its shards, manifest and
FAISS index, what ``medcbir index`` writes): synthetic 512-d slice embeddings (the trained recipe's
dimension; unit Gaussian vectors), 104 regions per image (every default cap: 64 structures, which phantom
slices reach, 32 parts of split structures and 8 organ zones, more than they have), each descriptor a real phantom descriptor (seed 0's default index) plus Gaussian noise of a
quarter of each coordinate's spread, boxes drawn from the real ones. Reported: bytes per image of
the regions and of the slice index (``verify``'s count: what the shards hold for each), the region
index's open time at the first region query (metric + IVF, :class:`~medcbir.engine.region_search.RegionIndex`;
stored with the index when its shards are committed, :mod:`medcbir.indexer.region_index`),
and p50/p95 latency of ``Engine.search`` for a slice query (an indexed UID: its stored embedding)
and for a region query (a real phantom slice with a lesion box, carrying an indexed item's UID so
its patient is excluded the same way), both K = 10, ``exclude="same-patient"``; also the region
search alone (``RegionIndex.search``) and the box description alone.

Goals (issue 24): region MAP@5 ≥ whole-slice MAP@5 + 0.25 and ≥ the best crop baseline + 0.10
(mean of the seeds, and every seed); region bytes ≤ 4× the slice index's; region query p50 ≤ 2× a
slice query at 100k.

Run: ``.venv/bin/python benchmarks/roi.py [--patients 12 --slices 24 --seeds 0,1,2 --train-epochs 3 --scale-items 100000]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
from medcbir.encoders.region_proposals import most_regions  # noqa: E402

GOAL_WHOLE = 0.25
GOAL_CROP = 0.10
GOAL_BYTES = 4.0
GOAL_LATENCY = 2.0
K = 5
#: Field of view: resampling factors, and the boxes queried (shorter side at least this many pixels).
FOV_ZOOMS = (0.75, 1.25)
FOV_MIN_SIDE = 8
LATENCY_K = 10


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---------------------------------------------------------------------------------------- quality
def train_recipe(work: Path, args) -> tuple[Path, dict]:
    """The recipe trained with `medcbir train` on a phantom v3 archive of other patients."""
    from medcbir.imaging.phantom import make_archive

    archive = work / "train-archive"
    make_archive(archive, patients=args.patients, slices=args.slices, seed=1000, size=args.size, version=3, workers=1)
    out = work / "recipe.pt"
    cmd = [sys.executable, "-m", "medcbir", "train", str(archive), "--method", "simclr", "--epochs", str(args.train_epochs),
           "--size", str(args.train_size), "--out", str(out), "--quiet", "--workers", "1", "--seed", "0"]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    settings = {"command": f"medcbir train ARCHIVE --method simclr --epochs {args.train_epochs} --size {args.train_size} --seed 0 --out OUT",
                "archive_seed": 1000,
                "patients": args.patients, "slices": args.slices, "epochs": args.train_epochs, "size": args.train_size,
                "seconds": round(time.time() - t0, 1)}
    log(f"recipe trained in {settings['seconds']:.0f} s")
    return out, settings


def metrics(r: dict) -> dict:
    out = {m: round(float(r[m]), 4) for m in ("map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy")}
    out["per_class_map"] = {c: round(float(v["map_at_k"]), 4) for c, v in r["per_class"].items()}
    return out


def quality_seed(seed: int, work: Path, recipe: Path, args) -> dict:
    from medcbir.engine import Engine
    from medcbir.engine.region_evaluate import CROP_BASELINES, evaluate_regions
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    archive = work / f"v3-{seed}"
    make_archive(archive, patients=args.patients, slices=args.slices, seed=seed, size=args.size, version=3, workers=1)
    labels, boxes = archive / "labels-lesion-kind.csv", archive / "lesion-boxes.csv"
    out: dict = {"seed": seed, "seconds": {}}
    results = {}
    for name, encoder in (("default", "default"), ("trained", str(recipe))):
        index = work / f"index-{seed}-{name}"
        t0 = time.time()
        index_archive(archive, index, encoder, workers=args.workers, progress=False)
        out["seconds"][f"index_{name}"] = round(time.time() - t0, 1)
        t0 = time.time()
        with Engine.open(index) as engine:
            results[name] = evaluate_regions(engine, labels, boxes, k=K, exclude="same-patient",
                                             baselines=CROP_BASELINES if name == "default" else ())
            windows = engine.store.encoder_info["preprocessing"]["windows"]
        out["seconds"][f"evaluate_{name}"] = round(time.time() - t0, 1)
        out.setdefault("windows", {})[name] = windows
        log(f"seed {seed} {name}: region {results[name]['map_at_k']:.3f}, whole slice {results[name]['whole_slice']['map_at_k']:.3f}"
            f" ({out['seconds']})")
    default, trained = results["default"], results["trained"]
    if out["windows"]["default"] != out["windows"]["trained"]:
        raise SystemExit("the trained recipe windows differently from the default encoder: its crop baselines would differ; "
                         "run them for it too")
    # region descriptors do not depend on the slice encoder: both indexes answer region queries alike
    out["region_equal_on_both_indexes"] = bool(default["map_at_k"] == trained["map_at_k"] and default["per_class"] == trained["per_class"])
    out["queries"] = default["queries"]
    out["queries"].pop("skipped_rows", None)
    out["searchable"] = default["searchable"]
    out["regions_indexed"] = default["regions"]["indexed"]
    out["region"] = metrics(default)
    out["whole_slice"] = {"default": metrics(default["whole_slice"]), "trained": metrics(trained["whole_slice"])}
    out["crop_baselines"] = {n: metrics(default["baselines"][n]) for n in CROP_BASELINES}
    out["crop"] = default["baselines"]["crop"]
    out["n_queries_without_relevant"] = default["n_queries_without_relevant"]
    with Engine.open(work / f"index-{seed}-default") as engine:
        out["field_of_view"] = field_of_view(engine, boxes)
    log(f"seed {seed} field of view: {out['field_of_view']}")
    best = max(CROP_BASELINES, key=lambda n: out["crop_baselines"][n]["map_at_k"])
    out["best_crop_baseline"] = best
    region = out["region"]["map_at_k"]
    out["gain"] = {"over_whole_default": round(region - out["whole_slice"]["default"]["map_at_k"], 4),
                   "over_whole_trained": round(region - out["whole_slice"]["trained"]["map_at_k"], 4),
                   "over_best_crop": round(region - out["crop_baselines"][best]["map_at_k"], 4)}
    return out


def resampled(item, zoom: float):
    """The same frame at another field of view: pixels resampled by ``zoom`` (linear), PixelSpacing scaled."""
    from scipy import ndimage

    from medcbir.imaging.items import Item

    pixels = np.asarray(item.pixels, dtype=np.float32)
    out = np.round(ndimage.zoom(pixels, zoom, order=1))
    spacing = tuple(float(v) * pixels.shape[0] / out.shape[0] for v in item.meta.pixel_spacing)
    return Item(dataclasses.replace(item.meta, pixel_spacing=spacing), out.astype(np.float32))


def field_of_view(engine, boxes_csv: Path) -> dict:
    """Each lesion box with a shorter side of at least FOV_MIN_SIDE px, queried from its frame resampled by
    each of FOV_ZOOMS (box scaled and rounded): the share of the original query's top 5 it finds, and how
    often its top 1 is the original's."""
    import csv

    from medcbir.imaging import read_dicom

    meta = engine.meta(engine.ids)
    sources = {m["sop_instance_uid"]: m["source"] for m in meta}
    patient = {m["sop_instance_uid"]: m["patient_pseudonym"] for m in meta}
    per_patient: dict = {}
    for m in meta:
        per_patient[m["patient_pseudonym"]] = per_patient.get(m["patient_pseudonym"], 0) + 1
    rows = [r for r in csv.DictReader(open(boxes_csv)) if min(int(r["w"]), int(r["h"])) >= FOV_MIN_SIDE and r["sop_instance_uid"] in sources]
    shared: dict = {z: [] for z in FOV_ZOOMS}
    top1: dict = {z: [] for z in FOV_ZOOMS}
    for r in rows:
        item = read_dicom(sources[r["sop_instance_uid"]], key=engine.pseudonym_key)[int(r.get("frame") or 0)]
        x, y, w, h = (int(r[c]) for c in "xywh")
        same = [n.id for n in engine.search(item, K, roi=(x, y, w, h), exclude="same-patient")[0]]
        for z in FOV_ZOOMS:
            box = (round(x * z), round(y * z), max(1, round(w * z)), max(1, round(h * z)))
            other = [n.id for n in engine.search(resampled(item, z), K, roi=box, exclude="same-patient")[0]]
            shared[z].append(len(set(same) & set(other)) / K)
            top1[z].append(bool(same and other and same[0] == other[0]))
    candidates = [len(meta) - per_patient[patient[r["sop_instance_uid"]]] for r in rows]
    return {"queries": len(rows), "min_side": FOV_MIN_SIDE, "chance": round(float(np.mean([K / c for c in candidates])), 4) if rows else None,
            "top5_shared": {str(z): round(float(np.mean(v)), 4) for z, v in shared.items()},
            "top1_same": {str(z): round(float(np.mean(v)), 4) for z, v in top1.items()}}


# ---------------------------------------------------------------------------------------- scale
def synthetic_regions(real_descriptors: np.ndarray, real_boxes: np.ndarray, n: int, per_image: int, rng):
    """``n`` RegionSets of ``per_image`` regions: real descriptors jittered by a quarter of each
    coordinate's spread, real boxes."""
    from medcbir.encoders.regions import RegionSet

    spread = real_descriptors.std(axis=0) * 0.25
    picks = rng.integers(0, len(real_descriptors), size=(n, per_image))
    noise = rng.standard_normal((n, per_image, real_descriptors.shape[1])).astype(np.float32) * spread
    descriptors = (real_descriptors[picks] + noise).astype(np.float32)
    boxes = real_boxes[rng.integers(0, len(real_boxes), size=(n, per_image))].astype(np.int32)
    return [RegionSet(boxes[i], descriptors[i]) for i in range(n)]


def build_scale_index(index_dir: Path, real_descriptors: np.ndarray, real_boxes: np.ndarray, args) -> float:
    from medcbir.device import Device
    from medcbir.encoders.module import new_encoder_module
    from medcbir.encoders.runtime import open_encoder
    from medcbir.imaging import ItemMeta, Preprocessing
    from medcbir.indexer import IndexWriter

    rng = np.random.default_rng(0)
    device = Device.cpu()
    # a 512-d encoder record (the recipe's ResNet-18): the index records it; its weights are never run here
    encoder = open_encoder(new_encoder_module("resnet18", Preprocessing(windows=("CT=ct-liver-wide,*=robust",), size=128, crop="body"),
                                              pooling="gem"), device=device)
    per_patient = 100
    t0 = time.time()
    writer = IndexWriter.open(index_dir, encoder, device=device, regions=True, regions_per_image=args.scale_regions)
    try:
        for start in range(0, args.scale_items, 10_000):
            n = min(10_000, args.scale_items - start)
            ids = range(start, start + n)
            metas = [ItemMeta(sop_instance_uid=f"2.25.{i + 1}", frame=0, series_instance_uid=f"2.25.9{i // per_patient + 1}",
                              study_instance_uid=f"2.25.8{i // per_patient + 1}", modality="CT", body_part="ABDOMEN",
                              patient_pseudonym=f"{i // per_patient:032x}", instance_number=i % per_patient + 1, rows=512, cols=512,
                              pixel_spacing=(0.7, 0.7), source=f"synthetic/{i}.dcm") for i in ids]
            vectors = rng.standard_normal((n, encoder.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            writer.add_embeddings(metas, vectors, synthetic_regions(real_descriptors, real_boxes, n, args.scale_regions, rng))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return time.time() - t0


def percentiles(ms: list[float]) -> dict:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3)}


def scale(work: Path, fitted_from: Path, archive: Path, args) -> dict:
    import csv

    from medcbir.encoders.regions import describe_query
    from medcbir.engine import Engine
    from medcbir.engine.region_search import RegionIndex
    from medcbir.imaging import read_dicom
    from medcbir.indexer.maintenance import verify

    with Engine.open(fitted_from) as engine:
        stored = engine.store.regions()
        real_descriptors = np.asarray(stored.descriptors, dtype=np.float32)
        real_boxes = np.asarray(stored.boxes, dtype=np.int32)
        real = verify(fitted_from).regions
    index_dir = work / "scale-index"
    build_s = build_scale_index(index_dir, real_descriptors, real_boxes, args)
    log(f"scale index of {args.scale_items} items written in {build_s:.0f} s")
    report = verify(index_dir)
    if not report.ok:
        raise SystemExit(f"the scale index does not verify: {report.problems[:3]}")
    sizes = report.regions
    faiss_bytes = sum(p.stat().st_size for p in index_dir.glob("*") if p.suffix in (".faiss", ".npy", ".index"))
    # real lesion boxes as region queries, each carrying an indexed item's UID (its patient excluded, itself too)
    rows = list(csv.DictReader(open(archive / "lesion-boxes.csv", newline="")))
    sources = {}
    with Engine.open(fitted_from) as engine:
        for m in engine.meta(engine.ids):
            sources[m["sop_instance_uid"]] = m["source"]
    frames = []
    for r in rows:
        item = read_dicom(sources[r["sop_instance_uid"]])[int(r["frame"])]
        frames.append((item, tuple(int(r[c]) for c in "xywh")))
    rng = np.random.default_rng(1)
    picks = rng.choice(args.scale_items, size=args.scale_queries, replace=False)
    out: dict = {"items": args.scale_items, "regions_per_image": args.scale_regions, "slice_dim": 512, "build_s": round(build_s, 1),
                 "bytes": {"region_per_image": sizes["bytes_per_image"], "slice_per_image": sizes["slice_bytes_per_image"],
                           "slice_faiss_files_per_image": round(faiss_bytes / args.scale_items, 1),
                           "ratio": round(sizes["bytes_per_image"] / sizes["slice_bytes_per_image"], 3)},
                 "phantom_default_index": {"region_bytes_per_image": real["bytes_per_image"],
                                           "slice_bytes_per_image": real["slice_bytes_per_image"], "per_image": real["per_image"]}}
    with Engine.open(index_dir, verify="sizes") as engine:
        out["slice_index_spec"] = str(engine.store.index_spec)
        t0 = time.perf_counter()
        regions = RegionIndex.of(engine)
        out["region_index"] = {"build_s": round(time.perf_counter() - t0, 1), "regions": len(regions), "kind": type(regions.index).__name__,
                               "stored": bool(getattr(regions, "stored", False)),
                               "nprobe": int(getattr(regions.index, "nprobe", 0)), "nlist": int(getattr(regions.index, "nlist", 0))}
        log(f"region index of {len(regions)} regions built in {out['region_index']['build_s']} s ({out['region_index']['kind']})")
        metas = engine.meta(picks)
        slice_ms, region_ms, search_ms, describe_ms = [], [], [], []
        for n, (pick, meta) in enumerate(zip(picks.tolist(), metas)):
            item, box = frames[n % len(frames)]
            query = dataclasses.replace(item, meta=dataclasses.replace(item.meta, sop_instance_uid=meta["sop_instance_uid"], frame=0,
                                                                       patient_pseudonym=meta["patient_pseudonym"]))
            t = time.perf_counter()
            slice_hits = engine.search(meta["sop_instance_uid"], LATENCY_K, exclude="same-patient")[0]
            slice_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            region_hits = engine.search(query, LATENCY_K, roi=box, exclude="same-patient")[0]
            region_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            descriptor, _ = describe_query(query, box)
            describe_ms.append(1000 * (time.perf_counter() - t))
            admissible = engine.live & ~engine.exclusion_mask("patient_pseudonym", meta["patient_pseudonym"])
            vector = regions.metric(descriptor)[0]
            t = time.perf_counter()
            regions.search(vector, LATENCY_K, admissible)
            search_ms.append(1000 * (time.perf_counter() - t))
            assert len(slice_hits) == LATENCY_K and len(region_hits) == LATENCY_K
            assert all(h.meta["patient_pseudonym"] != meta["patient_pseudonym"] for h in slice_hits + region_hits)
        warm = slice(5, None)  # the first queries pay one-off costs (code columns, masks)
        out["latency_ms"] = {"slice_query": percentiles(slice_ms[warm]), "region_query": percentiles(region_ms[warm]),
                             "region_search_only": percentiles(search_ms[warm]), "describe_box": percentiles(describe_ms[warm]),
                             "queries": len(slice_ms[warm]), "k": LATENCY_K}
    lat = out["latency_ms"]
    out["latency_ratio_p50"] = round(lat["region_query"]["p50"] / lat["slice_query"]["p50"], 3)
    log(f"latency p50: slice {lat['slice_query']['p50']} ms, region {lat['region_query']['p50']} ms "
        f"(search alone {lat['region_search_only']['p50']} ms, describe {lat['describe_box']['p50']} ms)")
    return out


# ---------------------------------------------------------------------------------------- report
def goals(runs: list[dict], scaled: dict | None) -> dict:
    out: dict = {}
    for encoder in ("default", "trained"):
        gains = [r["gain"][f"over_whole_{encoder}"] for r in runs]
        out[f"whole_{encoder}"] = {"goal": GOAL_WHOLE, "per_seed": gains, "mean": round(float(np.mean(gains)), 4),
                                   "met": bool(min(gains) >= GOAL_WHOLE and np.mean(gains) >= GOAL_WHOLE)}
    gains = [r["gain"]["over_best_crop"] for r in runs]
    out["best_crop"] = {"goal": GOAL_CROP, "per_seed": gains, "mean": round(float(np.mean(gains)), 4),
                        "met": bool(min(gains) >= GOAL_CROP and np.mean(gains) >= GOAL_CROP)}
    if scaled:
        out["bytes"] = {"goal": GOAL_BYTES, "ratio": scaled["bytes"]["ratio"], "met": bool(scaled["bytes"]["ratio"] <= GOAL_BYTES)}
        out["latency"] = {"goal": GOAL_LATENCY, "ratio": scaled["latency_ratio_p50"], "met": bool(scaled["latency_ratio_p50"] <= GOAL_LATENCY)}
    return out


def verdict(g: dict, gain: bool = True) -> str:
    if g["met"]:
        return "**met**"
    if gain:
        worst = min(g["per_seed"])
        mean = f"short by {g['goal'] - g['mean']:.3f} on the mean, " if g["mean"] < g["goal"] else "met on the mean, "
        return f"**missed** ({mean}by {g['goal'] - worst:.3f} on the worst seed)"
    return f"**missed**: {g['ratio']:.2f}× against ≤ {g['goal']:g}× ({g['ratio'] / g['goal']:.2f}× the goal)"


def markdown(data: dict) -> str:
    runs, args, g = data["runs"], data["parameters"], data["goals"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    queries = sum(r["queries"]["count"] for r in runs)
    lines = [
        f"Phantom v3, {args['patients']} patients × {args['slices']} slices ({args['size']} px) per seed, seeds {seeds}: "
        f"{queries} lesion boxes as queries in all ({', '.join(str(r['queries']['count']) for r in runs)} per seed), each "
        f"against the other patients' slices of its archive (`evaluate --roi-boxes`, K = {K}, `exclude=same-patient`; relevant = "
        "a slice labelled with the box's lesion kind in `labels-lesion-kind.csv`). "
        f"Trained recipe: `{data['recipe']['command']}` on a phantom v3 archive of {data['recipe']['patients']} other patients "
        f"({data['recipe']['seconds']:.0f} s). Crop baselines: every indexed region and the query box, {runs[0]['crop']['size']} px, "
        f"window {', '.join(runs[0]['crop']['windows'])}, best region per slice.",
        "",
        "| seed | region | whole slice (default) | whole slice (trained) | crop thumbnail:16 | crop random | crop classic |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r["crop_baselines"]
        lines.append(f"| {r['seed']} | {r['region']['map_at_k']:.3f} | {r['whole_slice']['default']['map_at_k']:.3f} | "
                     f"{r['whole_slice']['trained']['map_at_k']:.3f} | {c['thumbnail:16']['map_at_k']:.3f} | {c['random']['map_at_k']:.3f} | "
                     f"{c['classic']['map_at_k']:.3f} |")

    def mean(get):
        return float(np.mean([get(r) for r in runs]))

    lines.append(f"| mean | {mean(lambda r: r['region']['map_at_k']):.3f} | {mean(lambda r: r['whole_slice']['default']['map_at_k']):.3f} | "
                 f"{mean(lambda r: r['whole_slice']['trained']['map_at_k']):.3f} | "
                 + " | ".join(f"{mean(lambda r, n=n: r['crop_baselines'][n]['map_at_k']):.3f}" for n in ("thumbnail:16", "random", "classic"))
                 + " |")
    zooms = list(runs[0]["field_of_view"]["top5_shared"])
    lines += ["", f"Field of view: each box with a shorter side ≥ {runs[0]['field_of_view']['min_side']} px "
              f"({', '.join(str(r['field_of_view']['queries']) for r in runs)} per seed) queried again from its frame resampled to "
              + " and ".join(f"{float(z):g}×" for z in zooms) + " its matrix (linear, PixelSpacing scaled, box scaled): share of the "
              "original query's top 5 found " + ", ".join(
                  f"{float(z):g}× {mean(lambda r, z=z: r['field_of_view']['top5_shared'][z]):.3f} (seeds "
                  + " / ".join(f"{r['field_of_view']['top5_shared'][z]:.3f}" for r in runs) + ")" for z in zooms)
              + "; the same top 1 " + ", ".join(f"{float(z):g}× {mean(lambda r, z=z: r['field_of_view']['top1_same'][z]):.2f}" for z in zooms)
              + f". (K items drawn at random from the other patients' slices would share {mean(lambda r: r['field_of_view']['chance']):.3f} of them.)"]
    classes = sorted(runs[0]["region"]["per_class_map"])
    lines += ["", "MAP@5 per lesion kind (mean of seeds): " + "; ".join(
        f"{c} region {mean(lambda r, c=c: r['region']['per_class_map'].get(c, 0.0)):.3f} / whole slice "
        f"{mean(lambda r, c=c: r['whole_slice']['default']['per_class_map'].get(c, 0.0)):.3f}" for c in classes) + "."]
    lines += ["", "Goals (issue 24):", "",
              f"- region ≥ whole slice + {GOAL_WHOLE} (default encoder): gains {', '.join(f'{v:+.3f}' for v in g['whole_default']['per_seed'])} "
              f"(mean {g['whole_default']['mean']:+.3f}): {verdict(g['whole_default'])}",
              f"- region ≥ whole slice + {GOAL_WHOLE} (trained recipe): gains {', '.join(f'{v:+.3f}' for v in g['whole_trained']['per_seed'])} "
              f"(mean {g['whole_trained']['mean']:+.3f}): {verdict(g['whole_trained'])}",
              f"- region ≥ best crop baseline + {GOAL_CROP}: gains {', '.join(f'{v:+.3f}' for v in g['best_crop']['per_seed'])} "
              f"(best per seed: {', '.join(r['best_crop_baseline'] for r in runs)}; mean {g['best_crop']['mean']:+.3f}): {verdict(g['best_crop'])}"]
    s = data.get("scale")
    if s:
        lat, b = s["latency_ms"], s["bytes"]
        lines += [
            f"- region index ≤ {GOAL_BYTES:g}× the slice index's bytes at {s['items']:,} slices: {b['region_per_image']:.0f} vs "
            f"{b['slice_per_image']:.0f} bytes per image ({b['ratio']:.2f}×): {verdict(g['bytes'], gain=False)}",
            f"- region query p50 ≤ {GOAL_LATENCY:g}× a slice query at {s['items']:,} slices: {lat['region_query']['p50']:.1f} vs "
            f"{lat['slice_query']['p50']:.1f} ms ({s['latency_ratio_p50']:.2f}×): {verdict(g['latency'], gain=False)}",
            "",
            f"Scale: {s['items']:,} synthetic slices written by `IndexWriter` (512-d embeddings, slice index `{s['slice_index_spec']}`; "
            f"{s['regions_per_image']} regions per image fitted from phantom descriptors: {s['region_index']['regions']:,} regions) in "
            f"{s['build_s']:.0f} s. Regions {b['region_per_image']:.0f} B/image, slice embeddings + ids + metadata "
            f"{b['slice_per_image']:.0f} B/image, FAISS files {b['slice_faiss_files_per_image']:.0f} B/image (on the phantom's own default "
            f"index, 2020-d classic embeddings: regions {s['phantom_default_index']['region_bytes_per_image']:.0f} vs slice "
            f"{s['phantom_default_index']['slice_bytes_per_image']:.0f} B/image). "
            + ("The region search structure, stored with the index when its shards were committed, opens at the first region query in "
               if s["region_index"].get("stored") else "The region index is built when the first region query arrives: ")
            + f"{s['region_index']['build_s']:.0f} s ({s['region_index']['kind']}, nlist {s['region_index']['nlist']}, "
            f"nprobe {s['region_index']['nprobe']}).",
            "",
            "| ms, K = 10, exclude same-patient | p50 | p95 |",
            "|---|---|---|",
            f"| slice query (`Engine.search` of an indexed UID) | {lat['slice_query']['p50']:.2f} | {lat['slice_query']['p95']:.2f} |",
            f"| region query (`Engine.search` of a slice + box) | {lat['region_query']['p50']:.2f} | {lat['region_query']['p95']:.2f} |",
            f"| of which: describing the box | {lat['describe_box']['p50']:.2f} | {lat['describe_box']['p95']:.2f} |",
            f"| of which: `RegionIndex.search` | {lat['region_search_only']['p50']:.2f} | {lat['region_search_only']['p95']:.2f} |",
        ]
    lines += ["", f"Wall time {data['seconds']:.0f} s; load average {data['load_avg_start'][0]:.1f} at start, "
              f"{data['load_avg_end'][0]:.1f} at end (2 shared cores)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--size", type=int, default=256, help="phantom rows = columns")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=128)
    ap.add_argument("--trained", default=None, help="use this checkpoint as the trained recipe instead of training one")
    ap.add_argument("--workers", type=int, default=2, help="decoding processes while indexing")
    ap.add_argument("--scale-items", type=int, default=100_000)
    ap.add_argument("--scale-regions", type=int, default=most_regions(), help="regions per synthetic image (default: every cap, 64 + 32 + 8)")
    ap.add_argument("--scale-queries", type=int, default=200)
    ap.add_argument("--no-scale", action="store_true", help="quality only")
    ap.add_argument("--work", default=None, help="working folder (default: a fresh temporary one)")
    ap.add_argument("--no-record", action="store_true", help="print only; write no JSON")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t_start, load_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medcbir-roi-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.trained:
            recipe, recipe_settings = Path(args.trained), {"command": f"(given) {args.trained}", "patients": 0, "seconds": 0.0}
        else:
            recipe, recipe_settings = train_recipe(work, args)
        runs = [quality_seed(seed, work, recipe, args) for seed in seeds]
        scaled = None if args.no_scale else scale(work, work / f"index-{seeds[0]}-default", work / f"v3-{seeds[0]}", args)
    data = {"parameters": vars(args), "recipe": recipe_settings, "runs": runs, "scale": scaled, "goals": goals(runs, scaled),
            "seconds": round(time.time() - t_start, 1), "load_avg_start": list(load_start), "load_avg_end": list(os.getloadavg())}
    text = markdown(data)
    print(text)
    print(json.dumps(data["goals"], indent=1))
    if not args.no_record:
        _results.record("roi", data, text, "`.venv/bin/python benchmarks/roi.py " + " ".join(sys.argv[1:]) + "`")


if __name__ == "__main__":
    main()
