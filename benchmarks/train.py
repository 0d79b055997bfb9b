"""Training throughput: batched on-tensor augmentation (ours) vs a per-sample DataLoader (peer).

Same model (SimSiam, MONAI ResNet-18 stride-2 stem, paper heads), same batch, same image size,
same Hounsfield-window views and the same kornia augmentations, same machine, one run:

- ours: ``medcbir.train.train`` itself (HU cache in memory → one batched window + augment
  call per view per step → train step); images/s is the trainer's own per-epoch figure of
  the last epoch (the first warms up allocators);
- peer: a ``torch.utils.data.DataLoader`` whose dataset windows and augments *one sample at a
  time* (the torchvision-transform pattern), collated into the same batches, feeding the same
  train step; best of ``num_workers`` 0 and 2;
- floor: the train step alone on pre-made views (no augmentation at all): the ceiling.

Also the augmentation alone, batched vs per sample, which isolates the pipeline from the
model. Writes ``benchmarks/results/train.json`` and its RESULTS.md section.

``--precision-compare`` (section ``train_precision``, issue 10 item 4): the training step of the
default recipe (SimCLR, ResNet-18) at 128 px in fp32 eager (the peer: NCHW tensors, no autocast, a
plain PyTorch loop) vs ours (``train_step``: channels-last views, bf16 autocast), and ``medcbir
train`` end to end in each precision against that step floor, same run.

Run: ``.venv/bin/python benchmarks/train.py [--size 128 --batch 32 --threads 1]``
     ``.venv/bin/python benchmarks/train.py --precision-compare [--size 128 --batch 64]``
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

from medcbir.device import Device  # noqa: E402
from medcbir.encoders.backbones import build_backbone  # noqa: E402
from medcbir.train.dataset import default_cache_path, load_hu_dataset  # noqa: E402
from medcbir.train.methods import build_method  # noqa: E402
from medcbir.train.trainer import TrainConfig, make_optimizer, train, train_step  # noqa: E402
from medcbir.train.views import BatchAugment, make_views, parse_views, window_views  # noqa: E402


class PerSampleViews(torch.utils.data.Dataset):
    """The peer: window and augment one image at a time, like a torchvision transform."""

    def __init__(self, hu: torch.Tensor, views, size: int) -> None:
        self.hu, self.views, self.size = hu, views, size
        self.augment = None  # built lazily in each worker

    def __len__(self) -> int:
        return len(self.hu)

    def __getitem__(self, i: int):
        if self.augment is None:
            self.augment = BatchAugment(self.size)
        one = self.hu[i : i + 1].float()
        return tuple(self.augment(v)[0] for v in window_views(one, self.views))


def _worker_init(_):
    torch.set_num_threads(1)


def run_peer(data, views, config, device, workers: int, epochs: int) -> float:
    torch.manual_seed(config.seed)
    method = build_method("simsiam", build_backbone("resnet18"), 512).train()
    steps = len(data) // config.batch_size
    optimizer, scheduler, scaler = make_optimizer(method, config, steps * epochs, device)
    loader = torch.utils.data.DataLoader(
        PerSampleViews(data.pixels(), views, config.size),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=bool(workers),
    )
    rate = 0.0
    for _ in range(epochs):
        t0, images = time.perf_counter(), 0
        for v1, v2 in loader:
            train_step(method, [v1, v2], optimizer, scheduler, scaler, device)
            images += len(v1)
        rate = images / (time.perf_counter() - t0)  # the last epoch's, like the trainer's figure
    return rate


def run_floor(data, views, config, device, steps: int) -> float:
    torch.manual_seed(config.seed)
    method = build_method("simsiam", build_backbone("resnet18"), 512).train()
    optimizer, scheduler, scaler = make_optimizer(method, config, steps + 1, device)
    fixed = make_views(data.pixels()[: config.batch_size], views, BatchAugment(config.size))
    train_step(method, fixed, optimizer, scheduler, scaler, device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(method, fixed, optimizer, scheduler, scaler, device)
    return steps * config.batch_size / (time.perf_counter() - t0)


def augment_only(data, views, size: int, batch: int, repeats: int = 3) -> tuple[float, float]:
    hu = data.pixels()[:batch]
    augment = BatchAugment(size)
    make_views(hu, views, augment)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        make_views(hu, views, augment)
    batched = repeats * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for i in range(batch):
            make_views(hu[i : i + 1], views, augment)
    per_sample = repeats * batch / (time.perf_counter() - t0)
    return batched, per_sample


def eager_fp32_step(method, views, optimizer) -> float:
    """The peer: the textbook PyTorch step (NCHW, fp32, no autocast)."""
    loss = method([v.contiguous() for v in views])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def step_rate(kind: str, data, config, steps: int, repeats: int) -> float:
    """Images/s of the training step alone on fixed augmented views (best of ``repeats`` timings)."""
    from medcbir.train.recipe import RECIPE
    from medcbir.train.views import parse_views

    torch.manual_seed(0)
    method = build_method(RECIPE["method"], build_backbone("resnet18"), 512, proj_dim=128).train()
    device = Device(torch="cpu", precision="bf16" if kind == "bf16" else "fp32")
    optimizer, scheduler, scaler = make_optimizer(method, config, (steps + 1) * repeats + 1, device)
    views = make_views(data.pixels()[: config.batch_size], parse_views(config.views), BatchAugment(config.size))
    step = (lambda: eager_fp32_step(method, views, optimizer)) if kind == "eager" else (
        lambda: train_step(method, views, optimizer, scheduler, scaler, device))
    step()  # warm-up (oneDNN primitive creation)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, steps * config.batch_size / (time.perf_counter() - t0))
    return best


def precision_compare(args) -> None:
    """fp32 eager vs bf16 + channels-last training step, and `medcbir train` in each (section train_precision)."""
    from medcbir.explain.forward import native_bf16
    from medcbir.imaging.phantom import make_archive
    from medcbir.train.recipe import RECIPE

    with tempfile.TemporaryDirectory(prefix="medcbir-bench-train-") as tmp:
        archive = Path(tmp) / "archive"
        make_archive(archive, patients=args.patients, slices=args.slices, seed=11, size=256)
        base = dict(archive=archive, epochs=args.epochs, batch_size=args.batch, size=args.size, progress=False, seed=0, workers=1,
                    lr=0.2, method_options={"proj_dim": 128}, **RECIPE)
        config = TrainConfig(out=Path(tmp) / "probe.pt", device=Device(torch="cpu", precision="fp32"), **base)
        data = load_hu_dataset(archive, args.size, default_cache_path(config.out, args.size), workers=0)
        steps = max(4, min(8, len(data) // args.batch))
        rates = {}
        for kind in ("eager", "fp32", "bf16", "eager", "bf16"):  # interleaved: drift in load hits both
            rates.setdefault(kind, []).append(step_rate(kind, data, config, steps, 3))
            print(kind, round(rates[kind][-1], 1), flush=True)
        ends = {}
        for precision in ("fp32", "bf16"):
            summary = train(TrainConfig(out=Path(tmp) / f"enc-{precision}.pt", device=Device(torch="cpu", precision=precision), **base))
            ends[precision] = summary.history[-1]["images_per_s"]
            print("train", precision, round(ends[precision], 1), flush=True)
    step = {k: max(v) for k, v in rates.items()}
    ratio = step["bf16"] / step["eager"]
    load = os.getloadavg()
    results = {"size": args.size, "batch": args.batch, "images": len(data), "epochs": args.epochs, "method": RECIPE["method"],
               "threads": torch.get_num_threads(), "native_bf16": native_bf16(), "step_images_per_s": step, "step_runs": rates,
               "train_images_per_s": ends, "ratio_bf16_vs_fp32_eager": ratio, "goal": 1.8, "load_average_end": load}
    verdict = "**met**" if ratio >= 1.8 else f"**missed** by {1.8 - ratio:.2f}×"
    markdown = f"""The default recipe's training step (SimCLR, MONAI ResNet-18, projection 128), {args.size} px, batch {args.batch}, on fixed
augmented views of phantom slices, {torch.get_num_threads()} torch threads, CPU with native bf16: {'yes' if native_bf16() else 'no'}; each figure the best of
its timings (interleaved eager, fp32, bf16, eager, bf16; {steps} steps each). Then `medcbir train` end to end ({args.epochs} epochs on
{len(data)} slices: HU cache, batched archive augmentations, positional positives) in each precision; images/s of its last epoch.
Load average at the end: {load[0]:.1f}.

| training step | images/s | × fp32 eager |
|---|---:|---:|
| peer: fp32 eager (NCHW, no autocast) | {step['eager']:.1f} | 1.00 |
| `train_step`, fp32 (channels-last views) | {step['fp32']:.1f} | {step['fp32'] / step['eager']:.2f} |
| **`train_step`, bf16 autocast + channels-last** | {step['bf16']:.1f} | **{ratio:.2f}** |
| `medcbir train --precision fp32`, end to end | {ends['fp32']:.1f} | {ends['fp32'] / step['eager']:.2f} |
| `medcbir train --precision bf16`, end to end | {ends['bf16']:.1f} | {ends['bf16'] / step['eager']:.2f} (of its bf16 step floor: {100 * ends['bf16'] / step['bf16']:.0f} %) |

Goal (issue 10): bf16 + channels-last step ≥ 1.8× the fp32 eager step at 128 px: {verdict} ({ratio:.2f}×).
"""
    command = f".venv/bin/python benchmarks/train.py --precision-compare --size {args.size} --batch {args.batch} --epochs {args.epochs}"
    _results.record("train_precision", results, markdown, command)
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision-compare", action="store_true", help="fp32 eager vs bf16 + channels-last (section train_precision)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision_compare:
        return precision_compare(args)
    device = Device.auto()
    from medcbir.imaging.phantom import make_archive

    with tempfile.TemporaryDirectory(prefix="medcbir-bench-train-") as tmp:
        archive = Path(tmp) / "archive"
        make_archive(archive, patients=args.patients, slices=args.slices, seed=11, size=256)
        out = Path(tmp) / "enc.pt"
        config = TrainConfig(
            archive=archive, out=out, epochs=args.epochs, batch_size=args.batch, size=args.size,
            views="hu-narrow,hu-wide", device=device, progress=False, seed=0,
        )
        data = load_hu_dataset(archive, args.size, default_cache_path(out, args.size), workers=0)
        views = parse_views(config.views)
        steps = len(data) // args.batch

        aug_batched, aug_per_sample = augment_only(data, views, args.size, args.batch)
        summary = train(config)
        ours = summary.history[-1]["images_per_s"]
        peers = {w: run_peer(data, views, config, device, w, args.epochs) for w in (0, 2)}
        floor = run_floor(data, views, config, device, steps)

    best_workers = max(peers, key=peers.get)
    peer = peers[best_workers]
    ratio = ours / peer
    results = {
        "config": {
            "method": "simsiam", "backbone": "resnet18", "views": "hu-narrow,hu-wide", "size": args.size,
            "batch": args.batch, "images": len(data), "epochs": args.epochs, "threads": torch.get_num_threads(),
            "device": device.torch,
        },
        "ours_images_per_s": ours,
        "peer_images_per_s": {f"workers={w}": round(v, 2) for w, v in peers.items()},
        "peer_best_images_per_s": round(peer, 2),
        "ratio": round(ratio, 3),
        "goal_ratio": 1.5,
        "floor_images_per_s": round(floor, 2),
        "ours_vs_floor": round(ours / floor, 3),
        "augment_only_images_per_s": {"batched": round(aug_batched, 1), "per_sample": round(aug_per_sample, 1), "ratio": round(aug_batched / aug_per_sample, 2)},
    }
    verdict = "met" if ratio >= 1.5 else f"missed ({ratio:.2f}× of the 1.5× goal: the model's forward/backward, not augmentation, dominates a CPU step)"
    markdown = f"""SimSiam + HU views, ResNet-18, {args.size} px, batch {args.batch}, {len(data)} phantom slices, {device.torch}, {torch.get_num_threads()} torch thread(s).

| pipeline | training images/s |
|---|---|
| ours: batched kornia on HU tensors (`medcbir train`) | {ours:.1f} |
| peer: per-sample augmentation DataLoader, workers=0 | {peers[0]:.1f} |
| peer: per-sample augmentation DataLoader, workers=2 | {peers[2]:.1f} |
| floor: train step alone on pre-made views | {floor:.1f} |

Ratio ours / best peer: **{ratio:.2f}×** (goal ≥ 1.5×: {verdict}); ours reaches {100 * ours / floor:.0f} % of the floor.
Augmentation alone (2 views): batched {aug_batched:.0f} images/s vs per sample {aug_per_sample:.0f} images/s ({aug_batched / aug_per_sample:.1f}×).
"""
    command = f".venv/bin/python benchmarks/train.py --size {args.size} --batch {args.batch} --threads {args.threads}"
    _results.record("train", results, markdown, command)
    print(markdown)


if __name__ == "__main__":
    main()
