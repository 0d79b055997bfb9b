"""Your own encoder: embedding throughput through medcbir vs a plain torch forward loop of the same model.

Two Hugging Face models at 224 px, randomly initialised and saved locally with
``save_pretrained`` (written once under ``benchmarks/work/byo-encoder/``, with a
``preprocessor_config.json`` of ImageNet mean/std): a **ResNet-50** (``ResNetConfig()``'s
defaults, pooled output) and a **ViT-B/16** (``ViTConfig()``'s defaults, CLS token). Both are
opened from their folder as ``hf:DIR`` is (input size, mean and std from the folder), with the
output mode named.

The same decoded, preprocessed images (a phantom CT archive through the encoder's preprocessing:
window, body crop, 224 px; one N×1×224×224 array in memory) are embedded, in one run, by:

- **medcbir**: ``open_encoder(spec).embed(images)``, the embedding step of the indexer (and
  of ``medcbir.embed``): the window repeated to 3 channels and normalised inside the module, the
  model, the output selection and L2 normalisation, numpy in and out;
- **plain torch** (the peer): the model loaded by ``transformers.AutoModel.from_pretrained``, and
  the loop a user would write: ``torch.inference_mode()``, repeat, ``(x − mean) / std``,
  ``model(pixel_values=x)``, pooled output or CLS token, L2 normalisation.

Rounds interleave the two (``--repeat``; each keeps its best round) so that load from other jobs
on the shared machine hits both alike. The embeddings of the two paths are compared (minimum
cosine). Goal: medcbir ≥ 0.9× the plain loop's images/s for both models.

Usage::

    .venv/bin/python benchmarks/byo_encoder.py [--images 48 --batch-size 16 --repeat 5 --models resnet50,vit-b16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402

GOAL = 0.9
SIZE = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: name → (transformers config class, output mode, how the plain loop reads one vector)
MODELS = {"resnet50": ("ResNetConfig", "pooled"), "vit-b16": ("ViTConfig", "cls")}


def model_folder(name: str, work: Path) -> Path:
    """The model saved once with ``save_pretrained`` (random init, seed 0) and its preprocessor config."""
    import torch
    import transformers

    folder = work / name
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    transformers.utils.logging.set_verbosity_error()
    config = getattr(transformers, MODELS[name][0])()
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": MEAN, "image_std": STD, "size": {"height": SIZE, "width": SIZE}}))
    return folder


def decoded_images(archive: Path, preprocessing, n: int) -> np.ndarray:
    """The first ``n`` items of the archive, decoded and preprocessed as the indexer does (in this process)."""
    from itertools import islice

    from medcbir.imaging import walk

    return np.stack([decoded.image for decoded in islice(walk(archive, preprocessing=preprocessing, workers=1), n)])


def plain_loop(model, images: np.ndarray, batch: int, output: str) -> np.ndarray:
    """The peer: the forward loop a user writes around the same model."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = (torch.from_numpy(images[start : start + batch]).repeat(1, 3, 1, 1) - mean) / std
            result = model(pixel_values=x)
            vec = result.pooler_output.flatten(1) if output == "pooled" else result.last_hidden_state[:, 0]
            out.append(F.normalize(vec.float(), dim=1).numpy())
    return np.concatenate(out)


def measure(name: str, folder: Path, archive: Path, n: int, batch: int, repeat: int) -> dict:
    import torch
    import transformers

    from medcbir.device import Device
    from medcbir.encoders.runtime import open_encoder

    output = MODELS[name][1]
    # hf:DIR with the output named (its default is the model's pooled output; a ViT's is the CLS token here)
    encoder = open_encoder({"kind": "huggingface", "model": str(folder), "output": output}, device=Device.cpu(), batch_size=batch)
    images = decoded_images(archive, encoder.preprocessing, n)
    peer = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    encoder.embed(images[:batch])  # warm both (first-call allocations, oneDNN kernels)
    plain_loop(peer, images[:batch], batch, output)
    best = {"medcbir": float("inf"), "plain": float("inf")}
    ours = theirs = None
    for round_ in range(repeat):
        t0 = time.perf_counter()
        ours = encoder.embed(images)
        best["medcbir"] = min(best["medcbir"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = plain_loop(peer, images, batch, output)
        best["plain"] = min(best["plain"], time.perf_counter() - t0)
        print(f"{name} round {round_ + 1}/{repeat}: medcbir {n / best['medcbir']:.2f} images/s, plain torch {n / best['plain']:.2f} images/s"
              f" (load {os.getloadavg()[0]:.1f})", flush=True)
    cosine = float((ours * theirs).sum(axis=1).min())
    return {
        "model": name,
        "output": output,
        "dim": int(encoder.dim),
        "images": int(n),
        "batch_size": int(batch),
        "medcbir_images_per_s": n / best["medcbir"],
        "plain_images_per_s": n / best["plain"],
        "ratio": best["plain"] / best["medcbir"],
        "min_cosine_medcbir_vs_plain": cosine,
        "fingerprint": encoder.fingerprint,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds; each path keeps its best")
    parser.add_argument("--models", default="resnet50,vit-b16")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "byo-encoder", help="where the models are saved")
    args = parser.parse_args(argv)

    import torch

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    archive = _results.cached_phantom("byo-encoder", 2, max(8, args.images), 256)
    loads = [os.getloadavg()[0]]
    rows = []
    for name in names:
        folder = model_folder(name, args.work)
        rows.append(measure(name, folder, archive, args.images, args.batch_size, args.repeat))
        loads.append(os.getloadavg()[0])
    lines = [
        f"Embedding throughput of a user's Hugging Face model at {SIZE} px through medcbir (`open_encoder(spec).embed`, "
        "the indexer's embedding step) vs a plain `torch.inference_mode()` forward loop of the same model on the same "
        f"decoded, preprocessed images ({args.images} phantom CT slices, batch {args.batch_size}, {torch.get_num_threads()} torch "
        f"threads, best of {args.repeat} interleaved rounds). Goal: ≥ {GOAL}×.",
        "",
        "| model | medcbir images/s | plain torch images/s | ratio | min cosine (same vectors) | goal |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "met" if r["ratio"] >= GOAL else f"missed ({100 * (1 - r['ratio'] / GOAL):.0f} % short)"
        lines.append(f"| {r['model']} ({r['output']}, {r['dim']}-d) | {r['medcbir_images_per_s']:.2f} | {r['plain_images_per_s']:.2f} | "
                     f"{r['ratio']:.2f}× | {r['min_cosine_medcbir_vs_plain']:.6f} | {met} |")
    lines += ["", f"Load average (1 min) during the run: {', '.join(f'{v:.1f}' for v in loads)} (2 cores shared with other jobs)."]
    # samples of the 1-min load during the run, and their highest (what the summary line shows)
    data = {"rows": rows, "goal_ratio": GOAL, "load_samples_1min": loads, "load_average_1min_max": max(loads), "size": SIZE}
    _results.record("byo_encoder", data, "\n".join(lines), "python benchmarks/byo_encoder.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
