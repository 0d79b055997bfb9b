"""Benchmark: batched RELAX for a query + 5 neighbours vs relax-xai explaining one image.

One run, one machine, one encoder (the standard stride-2 ResNet-18 of ``medcbir.train``, random
init, 1 channel, 128 px), one phantom archive:

- peer: relax-xai 0.0.5 ``RELAX`` on the query image, 3000 masks (30 batches of 100), eager fp32;
- ours: ``explain_search`` (what ``medcbir explain`` runs) explaining the query and its 5
  neighbours, masks shared, all masked copies in the same forward batches, at *reference
  quality*: Pearson r ≥ 0.95 against a 3000-mask fp32 run with an independent seed, per image;
- the floor: the encoder's forward passes alone for the same number of masked images;
- precision: bf16 vs fp32 heatmaps on the same masks;
- Clustered-CAM vs Ablation-CAM time for the same six images.

Usage: .venv/bin/python benchmarks/explain.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _results import record  # noqa: E402

SIZE = 128
K = 5


def pearson(a, b) -> float:
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def relax_xai_class():
    # relax_xai.relax imports relax_xai.utils, which imports torchvision for a helper RELAX does
    # not use: stub that one module instead of installing torchvision.
    stub = types.ModuleType("relax_xai.utils")
    stub.imagenet_image_transforms = None
    sys.modules["relax_xai.utils"] = stub
    from relax_xai.relax import RELAX

    return RELAX


def forward_seconds(module, n: int, batch: int, precision: str, channels_last: bool) -> float:
    """Seconds the encoder alone takes for n forwards of 1×128×128 inputs in batches (the floor)."""
    from medcbir.explain.base import autocast

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        module.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 1, SIZE, SIZE).contiguous(memory_format=fmt)
    with torch.no_grad(), autocast(precision):
        module(x[:8])
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            module(x[: min(batch, n - start)])
    dt = time.perf_counter() - t0
    module.to(memory_format=torch.contiguous_format)
    return dt


def build(work: Path):
    from medcbir.engine import Engine
    from medcbir.imaging import Preprocessing
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive
    from medcbir.train import new_encoder, save_checkpoint

    make_archive(work / "archive", patients=3, slices=10, seed=3, size=2 * SIZE)
    enc = save_checkpoint(work / "encoder.pt", new_encoder("resnet18", Preprocessing(("ct-liver-wide",), size=SIZE), seed=0))
    index_archive(work / "archive", work / "index", str(enc), shard_size=64, workers=1, progress=False)
    engine = Engine.open(work / "index")
    folder = json.loads((work / "archive" / "phantom.json").read_text())["patients"][1]["folder"]
    query = sorted((work / "archive" / folder).rglob("*.dcm"))[5]
    return engine, query


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="300 instead of 3000 masks (smoke test, not a result)")
    args = parser.parse_args()
    n_ref = 300 if args.quick else 3000

    from medcbir.explain import ablation_cam, clustered_cam, explain_search, relax_full

    with tempfile.TemporaryDirectory() as tmp:
        engine, query = build(Path(tmp))
        module = engine.encoder.module.eval()
        # warm-up + the six images (query first) exactly as medcbir explain decodes them
        warm = explain_search(engine, str(query), k=K, method="relax", exclude="same-patient", n_masks=20)
        images = torch.from_numpy(warm.images)
        with torch.no_grad():
            q = torch.nn.functional.normalize(module(images[:1]), dim=1)
        targets = q.expand(len(images), -1).clone()

        # ---- peer: relax-xai, one image, 3000 masks, eager fp32
        RELAX = relax_xai_class()
        torch.manual_seed(12345)
        t0 = time.perf_counter()
        peer = RELAX(images[:1], module, batch_size=100, num_batches=n_ref // 100)
        with torch.no_grad():
            peer.forward()
        t_peer = time.perf_counter() - t0
        peer_map = peer.importance.numpy()
        print(f"relax-xai: 1 image, {n_ref} masks: {t_peer:.1f} s", flush=True)

        # ---- our fp32 3000-mask reference maps (independent seed), all six images
        t0 = time.perf_counter()
        ref = relax_full(module, images, targets, n_masks=n_ref, seed=1000, batch_size=120)
        t_ours_full = time.perf_counter() - t0
        ref_maps = ref.importance.numpy()
        print(f"ours fp32: 6 images, {n_ref} masks: {t_ours_full:.1f} s", flush=True)
        ceiling = pearson(ref_maps[0], peer_map)  # two independent 3000-mask runs of the query

        # ---- precision: bf16 vs fp32 on the same 500 masks
        same_fp32 = relax_full(module, images, targets, n_masks=500, seed=7, batch_size=120).importance.numpy()
        same_bf16 = relax_full(module, images, targets, n_masks=500, seed=7, batch_size=120, precision="bf16", channels_last=True).importance.numpy()
        r_bf16 = min(pearson(same_fp32[i], same_bf16[i]) for i in range(len(images)))
        print(f"bf16 vs fp32 on the same masks: min r = {r_bf16:.4f}", flush=True)

        # ---- ours as `medcbir explain` runs: configurations tried, each timed end to end
        # adaptive target 0.96: a 3000-mask run's own reliability is ~0.98 here (two 3000-mask runs
        # correlate at ~0.984), so a map whose predicted r with the infinite-mask map is 0.96 lands
        # at r ≈ 0.96 × √0.984 ≈ 0.95 against it; 800 fixed masks is the non-adaptive choice
        # (Spearman–Brown from a first run: 1000 masks gave r = 0.968, 800 predict ≈ 0.96)
        configs = [
            {"name": "bf16 adaptive (target 0.96)", "precision": "bf16", "channels_last": True, "adaptive": True, "target_r": 0.96},
            {"name": "bf16 800 masks", "precision": "bf16", "channels_last": True, "adaptive": False, "n_masks": 800},
        ]
        runs = []
        for cfg in configs:
            opts = {k: v for k, v in cfg.items() if k != "name"}
            opts.setdefault("n_masks", n_ref)
            t0 = time.perf_counter()
            res = explain_search(engine, str(query), k=K, method="relax", exclude="same-patient", seed=0, batch_size=120, **opts)
            wall = time.perf_counter() - t0
            rs = [pearson(res.heatmaps[i], ref_maps[i]) for i in range(len(images))]
            run = {
                **cfg,
                "n_masks_used": res.n_masks_used,
                "forwards": res.n_masks_used * len(images),
                "explain_seconds": res.seconds,
                "wall_seconds": wall,
                "r_vs_fp32_3000_min": min(rs),
                "r_vs_fp32_3000": rs,
                "r_query_vs_relax_xai": pearson(res.heatmaps[0], peer_map),
                "ratio_to_peer": res.seconds / t_peer,
                # the floor: the same number of forwards alone, right after the run
                "floor_seconds": forward_seconds(module, res.n_masks_used * len(images), 120, opts["precision"], opts["channels_last"]),
            }
            runs.append(run)
            print(f"{cfg['name']}: {res.n_masks_used} masks, {res.seconds:.1f} s, min r {min(rs):.3f}", flush=True)

        # ---- the peer's floor: its 3000 forwards alone (fp32, batches of 100)
        peer_floor = forward_seconds(module, n_ref, 100, "fp32", False)

        # ---- the peer once more: the machine is shared, so take its faster run (favours the peer)
        torch.manual_seed(54321)
        t0 = time.perf_counter()
        again = RELAX(images[:1], module, batch_size=100, num_batches=n_ref // 100)
        with torch.no_grad():
            again.forward()
        t_peer_runs = [t_peer, time.perf_counter() - t0]
        t_peer = min(t_peer_runs)
        for run in runs:
            run["ratio_to_peer"] = run["explain_seconds"] / t_peer
        print(f"relax-xai again: {t_peer_runs[1]:.1f} s", flush=True)

        # ---- Clustered-CAM vs Ablation-CAM, same six images, query targets
        t0 = time.perf_counter()
        clustered_cam(module, images, targets, n_clusters=10)
        t_ccam = time.perf_counter() - t0
        t0 = time.perf_counter()
        ablation_cam(module, images, targets)
        t_acam = time.perf_counter() - t0

    good = [r for r in runs if r["r_vs_fp32_3000_min"] >= 0.95]
    best = min(good, key=lambda r: r["explain_seconds"]) if good else max(runs, key=lambda r: r["r_vs_fp32_3000_min"])
    data = {
        "encoder": "resnet18 (MONAI, stride-2 stem + max-pool), random init, 1×128×128",
        "images_explained": 1 + K,
        "reference_masks": n_ref,
        "peer": {"name": "relax-xai 0.0.5", "seconds": t_peer, "runs_seconds": t_peer_runs, "images": 1, "masks": n_ref, "forward_floor_seconds": peer_floor},
        "ours_fp32_full": {"seconds": t_ours_full, "masks": n_ref, "images": 1 + K},
        "noise_ceiling_r_3000_vs_3000": ceiling,
        "bf16_vs_fp32_same_masks_min_r": r_bf16,
        "runs": runs,
        "chosen": best["name"],
        "goal_met": bool(good) and best["explain_seconds"] <= t_peer,
        "clustered_cam_seconds": t_ccam,
        "ablation_cam_seconds": t_acam,
    }
    rows = "\n".join(
        f"| {r['name']} | {r['n_masks_used']} | {r['explain_seconds']:.1f} | {r['floor_seconds']:.1f} | {r['ratio_to_peer']:.2f} "
        f"| {r['r_vs_fp32_3000_min']:.3f} | {r['r_query_vs_relax_xai']:.3f} |"
        for r in runs
    )
    verdict = (
        f"Goal (six images in no more time than relax-xai's one, at r ≥ 0.95): **{'met' if data['goal_met'] else 'missed'}** "
        f"with `{best['name']}` ({best['explain_seconds']:.1f} s vs {t_peer:.1f} s, ratio {best['ratio_to_peer']:.2f}; "
        f"min r {best['r_vs_fp32_3000_min']:.3f})."
    )
    markdown = f"""
RELAX on a random-init stride-2 ResNet-18 at 128 px; ours explains the query **and its {K} neighbours** (6 images,
one shared mask set, one batched pass), the peer explains **one** image. r = Pearson correlation of each image's
importance map with an fp32 {n_ref}-mask run with an independent seed (minimum over the six images).

| run | masks / image | seconds (6 images) | forward floor s | ÷ relax-xai time | min r vs fp32-{n_ref} | query r vs relax-xai |
|---|---|---|---|---|---|---|
| relax-xai, **1 image**, fp32 (faster of 2 runs) | {n_ref} | {t_peer:.1f} (1 image) | {peer_floor:.1f} | 1.00 | – | – |
| ours fp32, {n_ref} masks | {n_ref} | {t_ours_full:.1f} | ≈{6 * peer_floor:.1f} | {t_ours_full / t_peer:.2f} | – | {ceiling:.3f} |
{rows}

- {verdict}
- Monte-Carlo ceiling: two independent {n_ref}-mask runs of the query (ours vs relax-xai) correlate at r = {ceiling:.3f};
  no cheaper run can be expected to beat that against a {n_ref}-mask reference.
- bf16 autocast + channels-last vs fp32 on the same 500 masks: min r = {r_bf16:.4f} (kept only because ≥ 0.95).
- Forward floor = the same number of encoder forwards alone (same batch size and precision), timed right
  after each run; the machine is shared (2 cores), so run-to-run load differences of ±20 % show up.
- Adaptive rule: split-half (even/odd masks) reliability every 100 masks, Spearman–Brown, stop when the
  predicted correlation with the infinite-mask map is ≥ target_r at two consecutive checks (target 0.96 here).
- Clustered-CAM (10 clusters) {t_ccam:.2f} s vs Ablation-CAM (512 channels) {t_acam:.2f} s for the same six images
  (both run only the head after the feature layer per ablation).
"""
    print(markdown)
    if not args.quick:
        record("explain", data, markdown, ".venv/bin/python benchmarks/explain.py")


if __name__ == "__main__":
    main()
