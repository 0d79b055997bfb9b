"""Phantom v3 lesion kinds: how they look, and how far a trivial region descriptor tells them apart.

On phantom v3 archives (``make_archive(..., version=3)``), every row of ``lesion-boxes.csv`` (one
lesion cross-section on one slice) is read back from the DICOM file (HU through
``medcbir.imaging.read_dicom``) with its mask from ``masks.h5`` (``lesion-id``):

- per kind and contrast phase, the mean and standard deviation of HU inside the lesion (over its
  pixels) and in the 3-px ring of its organ around it;
- leave-one-patient-out 1-NN kind accuracy over the boxes (the nearest box of another patient
  gives the kind) for trivial descriptors:

  * ``mean_hu``: the box's mean HU (one number);
  * ``size``: the box's side in mm (should tell nothing: every kind draws from the same sizes);
  * ``thumb_box``: 16×16 thumbnail of the box (a square around its centre, side = its longer
    side), HU windowed to [-160, 240] (W400/L40), Euclidean distance: scale-free shape/texture;
  * ``thumb_fixed``: the same of a fixed 48 mm square centred on the box (3 mm per thumbnail
    pixel, resampled by PixelSpacing): what a fixed-physical-size descriptor sees.

If ``mean_hu`` alone came near 100 %, the kinds would be too easy for region search to show
anything; chance is the largest kind's share. Per seed one archive; the figures are per seed and
their mean.

Run: ``.venv/bin/python benchmarks/lesion_kinds.py [--patients 16 --slices 48 --size 256 --seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

from medcbir.imaging import read_dicom  # noqa: E402
from medcbir.imaging.phantom import make_archive  # noqa: E402
from medcbir.imaging.phantom.anatomy import PHASES  # noqa: E402
from medcbir.imaging.phantom.lesions import KINDS  # noqa: E402

WINDOW = (-160.0, 240.0)
THUMB = 16
FIXED_MM = 48.0
RING_PX = 3
CLEAR_PX = 8  # "clear" boxes: at least this many pixels on their longer side
DESCRIPTORS = ("mean_hu", "size", "thumb_box", "thumb_fixed")


def thumbnail(hu: np.ndarray, cx: float, cy: float, side_px: float) -> np.ndarray:
    """A THUMB × THUMB area-averaged thumbnail of the square of ``side_px`` centred on (cx, cy)
    (column, row; outside the image counts as air), windowed to [0, 1]."""
    fine = 4 * THUMB
    steps = (np.arange(fine) + 0.5) / fine * side_px - side_px / 2.0
    rows, cols = np.meshgrid(cy + steps, cx + steps, indexing="ij")
    sampled = ndimage.map_coordinates(hu, [rows - 0.5, cols - 0.5], order=1, mode="constant", cval=-1000.0)
    small = sampled.reshape(THUMB, 4, THUMB, 4).mean(axis=(1, 3))
    return np.clip((small - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0).ravel()


def regions(archive: Path) -> list[dict]:
    """Every lesion cross-section of the archive, checked against lesion-boxes.csv."""
    description = json.loads((archive / "phantom.json").read_text())
    phase = {p["series_instance_uid"]: p["nuisances"]["phase"] for p in description["patients"]}
    kinds = {(p["folder"], lesion["number"]): (lesion["kind"], lesion["organ"])
             for p in description["patients"] for lesion in p["lesions"]}
    truth = {r["sop_instance_uid"]: r for r in csv.DictReader(open(archive / "slices.csv", newline=""))}
    boxes = defaultdict(list)
    for row in csv.DictReader(open(archive / "lesion-boxes.csv", newline="")):
        boxes[row["sop_instance_uid"]].append((int(row["x"]), int(row["y"]), int(row["w"]), int(row["h"]), row["label"]))
    out = []
    with h5py.File(archive / "masks.h5", "r") as masks:
        for uid, slice_boxes in boxes.items():
            group = masks[uid]
            item = read_dicom(archive / group.attrs["path"])[0]
            hu, spacing = item.pixels.astype(np.float32), float(item.meta.pixel_spacing[0])
            ids = group["lesion-id"][()]
            folder = truth[uid]["patient"]
            for number in np.unique(ids[ids > 0]):
                mask = ids == number
                kind, organ = kinds[(folder, int(number) - 1)]
                rows, cols = np.nonzero(mask)
                box = (int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1, kind)
                assert box in slice_boxes, (uid, box, slice_boxes)
                organ_mask = group[organ][()].astype(bool)
                ring = ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=RING_PX) & ~mask
                ring = ring & organ_mask if (ring & organ_mask).any() else ring
                x, y, w, h, _ = box
                cx, cy, side = x + w / 2.0, y + h / 2.0, max(w, h)
                out.append({
                    "patient": folder, "kind": kind, "organ": organ, "phase": phase[truth[uid]["series_instance_uid"]],
                    "px": side, "inside": hu[mask], "ring": hu[ring],
                    "mean_hu": np.array([hu[y:y + h, x:x + w].mean()]), "size": np.array([side * spacing]),
                    "thumb_box": thumbnail(hu, cx, cy, side), "thumb_fixed": thumbnail(hu, cx, cy, FIXED_MM / spacing),
                })
            assert len(slice_boxes) == len(np.unique(ids[ids > 0])), uid
    return out


def one_nn(found: list[dict], descriptor: str) -> np.ndarray:
    """For each region, the kind of the nearest region of another patient."""
    x = np.stack([r[descriptor] for r in found]).astype(np.float64)
    patients = np.array([r["patient"] for r in found])
    kinds = np.array([r["kind"] for r in found])
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d[patients[:, None] == patients[None, :]] = np.inf
    return kinds[d.argmin(axis=1)]


def appearance(found: list[dict]) -> dict:
    """Mean/std of HU inside and in the ring, pooled over the pixels of every region of a kind
    and phase (and the mean of per-region means)."""
    table = {}
    for kind in KINDS:
        for phase in PHASES:
            chosen = [r for r in found if r["kind"] == kind and r["phase"] == phase]
            if not chosen:
                continue
            inside = np.concatenate([r["inside"] for r in chosen])
            ring = np.concatenate([r["ring"] for r in chosen])
            table[f"{kind}/{phase}"] = {
                "regions": len(chosen),
                "inside_mean": round(float(inside.mean()), 1), "inside_std": round(float(inside.std()), 1),
                "ring_mean": round(float(ring.mean()), 1), "ring_std": round(float(ring.std()), 1),
                "region_mean_sd": round(float(np.std([r["inside"].mean() for r in chosen])), 1),
            }
    return table


def measure(seed: int, args, work: Path) -> dict:
    archive = work / f"v3-{seed}"
    make_archive(archive, patients=args.patients, slices=args.slices, seed=seed, size=args.size, version=3)
    found = regions(archive)
    kinds = [r["kind"] for r in found]
    clear = np.array([r["px"] >= CLEAR_PX for r in found])
    result = {"seed": seed, "regions": len(found), "clear_regions": int(clear.sum()),
              "by_kind": {k: kinds.count(k) for k in KINDS},
              "by_kind_organ": {f"{k}/{o}": sum(r["kind"] == k and r["organ"].startswith(o) for r in found)
                                for k in KINDS for o in ("liver", "spleen", "kidney")},
              "chance": round(max(kinds.count(k) for k in KINDS) / len(found), 3),
              "appearance": appearance(found), "accuracy": {}, "accuracy_clear": {}, "accuracy_by_phase": {},
              "confusion": {}}
    truth, phases = np.array(kinds), np.array([r["phase"] for r in found])
    for name in DESCRIPTORS:
        predicted = one_nn(found, name)
        hit = predicted == truth
        result["accuracy"][name] = round(float(hit.mean()), 3)
        result["accuracy_clear"][name] = round(float(hit[clear].mean()), 3) if clear.any() else None
        result["accuracy_by_phase"][name] = {p: round(float(hit[phases == p].mean()), 3) for p in PHASES
                                             if (phases == p).any()}
        # confusion[true kind][predicted kind] = count
        result["confusion"][name] = {k: {q: int(((truth == k) & (predicted == q)).sum()) for q in KINDS} for k in KINDS}
    return result


def markdown(runs: list[dict], args) -> str:
    mean = {name: np.mean([r["accuracy"][name] for r in runs]) for name in DESCRIPTORS}
    clear = {name: np.mean([r["accuracy_clear"][name] for r in runs]) for name in DESCRIPTORS}
    chance = np.mean([r["chance"] for r in runs])
    lines = [
        f"Phantom v3 ({args.patients} patients × {args.slices} slices, {args.size} px, seeds "
        f"{', '.join(str(r['seed']) for r in runs)}; {sum(r['regions'] for r in runs)} lesion cross-sections). "
        "Leave-one-patient-out 1-NN kind accuracy over the boxes of `lesion-boxes.csv` (chance = largest kind: "
        f"{chance:.2f}); per seed in the JSON.",
        "",
        f"| descriptor | all boxes | boxes ≥ {CLEAR_PX} px |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {mean[name]:.3f} | {clear[name]:.3f} |" for name in DESCRIPTORS]
    for name in ("mean_hu", "thumb_box"):
        total = {k: {q: sum(r["confusion"][name][k][q] for r in runs) for q in KINDS} for k in KINDS}
        lines += ["", f"Confusion of `{name}` (rows: true kind, columns: the nearest box's kind; all seeds):", "",
                  "| | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(str(total[k][q]) for q in KINDS) + " |" for k in KINDS]
    lines += ["", "HU inside the lesion / in the 3-px ring of organ around it, mean ± sd over pixels (seed "
              f"{runs[0]['seed']}):", "", "| kind | " + " | ".join(PHASES) + " |", "|---|---|---|---|"]
    for kind in KINDS:
        cells = []
        for phase in PHASES:
            a = runs[0]["appearance"].get(f"{kind}/{phase}")
            cells.append(f"{a['inside_mean']:.0f} ± {a['inside_std']:.0f} / {a['ring_mean']:.0f} ± {a['ring_std']:.0f} "
                         f"(n={a['regions']})" if a else "–")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-record", action="store_true", help="print only; write no JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(seed, args, Path(tmp)) for seed in args.seeds]
    text = markdown(runs, args)
    print(text)
    if not args.no_record:
        data = {"parameters": vars(args), "runs": runs,
                "accuracy_mean": {n: round(float(np.mean([r["accuracy"][n] for r in runs])), 3) for n in DESCRIPTORS},
                "accuracy_clear_mean": {n: round(float(np.mean([r["accuracy_clear"][n] for r in runs])), 3)
                                        for n in DESCRIPTORS}}
        _results.record("lesion_kinds", data, text,
                        "`.venv/bin/python benchmarks/lesion_kinds.py " + " ".join(sys.argv[1:]) + "`")


if __name__ == "__main__":
    main()
