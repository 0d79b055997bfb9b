"""Retrieval on real MR across subjects: the default, the baselines and a trained encoder.

Issues 9 and 10 ask for real images from several subjects and sources, with different fields of
view, contrast and intensity scale, not only the phantom. This benchmark builds such an archive
from real T1 MRI that installs here, trains the default recipe on it (unlabelled), and evaluates
retrieval with the labels it knows, beside the baselines:

- subjects: Colin27 (``ch2``: T1 with skull, 1 mm; ``ch2better``: the same subject brain-only at
  0.5 mm with enhanced white matter) from Debian's ``mricron-data``; the MNI152 2009a T1 average
  from the ``nilearn`` wheel (``pip download`` from PyPI, templates only). Two patients.
- each volume resliced in three orientations every ``--step`` mm through the brain, each series
  at its own pixel spacing (0.8–1.3 mm on a 256 matrix), in-plane offset (±20 mm), intensity
  scale (×0.5–8) and gamma (0.7–1.4), Gaussian noise; written as MR DICOM with real geometry
  (ImagePositionPatient / ImageOrientationPatient in LPS) by pydicom.
- label = orientation + 20-mm level in template (MNI) space; ``exclude same-patient``: every
  query is answered from the other subject. K = 5, leave-one-out over all 355 slices.

Rows: the default encoder and the baselines (``evaluate --baselines``: thumbnail:8/16/32,
``random``, ``classic``), then the default recipe (``medcbir train`` defaults) trained on the
same unlabelled archive for ``--epochs`` at ``--size`` px, per seed, and optionally the reference
paper's SimSiam (``--paper``).

Reproduce: ``.venv/bin/python benchmarks/real_mr.py [--epochs 30 --size 128 --seeds 0,1,2]``
(needs ``apt-get install mricron-data`` and PyPI for the nilearn wheel).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

MRICRON = Path("/usr/share/mricron/templates")
NILEARN = "nilearn==0.14.1"
MNI = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# (direction of image rows, of image columns, index of the normal axis) in RAS
PLANES = {"ax": ((1, 0, 0), (0, -1, 0), 2), "cor": ((1, 0, 0), (0, 0, -1), 1), "sag": ((0, 1, 0), (0, 0, -1), 0)}


def sources(cache: Path) -> list[tuple[str, str, Path]]:
    """(patient, name, NIfTI path) of the real volumes; fetches the nilearn wheel once."""
    for name in ("ch2.nii.gz", "ch2better.nii.gz"):
        if not (MRICRON / name).is_file():
            sys.exit(f"error: {MRICRON / name} is missing: apt-get install mricron-data")
    mni = cache / "mni152_t1.nii.gz"
    if not mni.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), NILEARN], check=True)
        wheel = next(cache.glob("nilearn-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            mni.write_bytes(z.read(MNI))
    return [("colin", "ch2", MRICRON / "ch2.nii.gz"), ("colin", "ch2better", MRICRON / "ch2better.nii.gz"), ("mni", "icbm152", mni)]


def build_archive(out: Path, cache: Path, step: float = 4.0, seed: int = 7) -> int:
    """Write the archive and its labels.csv; returns the number of slices."""
    import nibabel as nib
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)
    rows = []
    lps = np.array([-1.0, -1.0, 1.0])
    for patient, name, path in sources(cache):
        image = nib.as_closest_canonical(nib.load(str(path)))
        volume = image.get_fdata(dtype=np.float32)
        affine, inverse = image.affine, np.linalg.inv(image.affine)
        inside = np.argwhere(volume > 0.1 * volume.max())
        lo = affine[:3, :3] @ inside.min(0) + affine[:3, 3]
        hi = affine[:3, :3] @ inside.max(0) + affine[:3, 3]
        centre = (lo + hi) / 2
        study = generate_uid()
        for plane, (r, c, axis) in PLANES.items():
            r, c = np.array(r, float), np.array(c, float)
            spacing, scale, gamma = rng.uniform(0.8, 1.3), rng.uniform(0.5, 8.0), rng.uniform(0.7, 1.4)
            offset = rng.uniform(-20, 20, size=2)
            series, n = generate_uid(), 256
            ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            for k, z in enumerate(np.arange(lo[axis] + 6, hi[axis] - 6, step)):
                centre_k = centre.copy()
                centre_k[axis] = z
                origin = centre_k - r * (n / 2 * spacing + offset[0]) - c * (n / 2 * spacing + offset[1])
                world = origin + jj[..., None] * spacing * r + ii[..., None] * spacing * c
                voxels = inverse[:3, :3] @ world.reshape(-1, 3).T + inverse[:3, 3:4]
                pixels = map_coordinates(volume, voxels, order=1, cval=0.0).reshape(n, n)
                pixels = np.clip(pixels / volume.max(), 0, 1) ** gamma * 1000 * scale + rng.normal(0, 3, pixels.shape)
                ds, meta = Dataset(), FileMetaDataset()
                sop = generate_uid()
                meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = MRImageStorage, sop, ExplicitVRLittleEndian
                ds.file_meta = meta
                ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
                ds.PatientID = ds.PatientName = patient
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SeriesDescription, ds.InstanceNumber = f"{name} {plane}", k + 1
                ds.ImagePositionPatient = [float(v) for v in origin * lps]
                ds.ImageOrientationPatient = [float(v) for v in np.concatenate([r * lps, c * lps])]
                ds.PixelSpacing, ds.SliceThickness = [float(spacing)] * 2, 1.0
                ds.Rows = ds.Columns = n
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated = ds.BitsStored = 16
                ds.HighBit, ds.PixelRepresentation = 15, 0
                ds.PixelData = np.clip(pixels, 0, 65535).astype(np.uint16).tobytes()
                folder = out / patient / name / plane
                folder.mkdir(parents=True, exist_ok=True)
                ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
                rows.append((sop, 0, f"{plane}-{int(np.floor(z / 20))}"))
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sop_instance_uid", "frame", "label"])
        writer.writerows(rows)
    return len(rows)


def medcbir(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "medcbir", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: medcbir {' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def evaluate(archive: Path, encoder: str, work: Path, name: str) -> dict:
    index = work / f"index-{name}"
    if name != "default":  # a trained encoder is new each run: an index of an earlier run's encoder would refuse it
        shutil.rmtree(index, ignore_errors=True)
    medcbir("index", str(archive), "--encoder", encoder, "--out", str(index), "--no-progress", "--json")
    return json.loads(medcbir("evaluate", str(index), "--labels", str(archive / "labels.csv"), "--baselines", "--json", "--verify", "sizes"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--step", type=float, default=4.0, help="mm between slices")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--record-as", default="real_mr", help="RESULTS.md section (e.g. real_mr_defaults for a run at the CLI's own epochs and size)")
    ap.add_argument("--paper", action="store_true", help="also train the reference paper's SimSiam + HU views (one window on MR)")
    args = ap.parse_args()

    t_start = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="medcbir-real-mr-"))
    archive = work / "archive"
    if not (archive / "labels.csv").is_file():
        n = build_archive(archive, Path(os.environ.get("MEDCBIR_CACHE", Path.home() / ".cache" / "medcbir")) / "real-mr", args.step)
        print(f"archive: {n} slices in {archive}", flush=True)
    rows = {"default": evaluate(archive, "default", work, "default")}
    print("default", round(rows["default"]["map_at_k"], 3), {k: round(v["map_at_k"], 3) for k, v in rows["default"]["baselines"].items()}, flush=True)
    runs = [(f"recipe (seed {s})", ["--seed", s]) for s in args.seeds.split(",")]  # --method simclr: the recipe from scratch
    if args.paper:
        runs.append(("paper: SimSiam, one window (seed 0)", ["--method", "simsiam", "--augment", "standard", "--position-delta", "0"]))
    trained = []
    for label, extra in runs:
        out = work / f"enc-{len(trained)}.pt"
        t0 = time.time()
        medcbir("train", str(archive), "--method", "simclr", "--out", str(out), "--epochs", str(args.epochs), "--size", str(args.size), "--batch-size", str(args.batch_size),
                "--precision", args.precision, "--quiet", *extra)
        seconds = time.time() - t0
        result = evaluate(archive, str(out), work, f"trained-{len(trained)}")
        trained.append({"row": label, "train_seconds": round(seconds, 1), "result": result})
        print(label, round(result["map_at_k"], 3), {k: round(v["map_at_k"], 3) for k, v in result["baselines"].items()}, flush=True)
    data = {"args": {k: str(v) for k, v in vars(args).items()}, "default": rows["default"], "trained": trained,
            "seconds": round(time.time() - t_start, 1), "load_avg": os.getloadavg()}
    _results.record(args.record_as, data, _markdown(data), "`.venv/bin/python benchmarks/real_mr.py " + " ".join(sys.argv[1:]) + "`")


def _markdown(data: dict) -> str:
    args = data["args"]
    default = data["default"]
    names = list(default["baselines"])
    lines = [
        "Real T1 MRI, two subjects (Colin27 with and without skull; MNI152), three orientations every "
        f"{args['step']} mm, per-series pixel spacing, offset, intensity scale and gamma; label = orientation + 20-mm level; "
        f"leave-one-out MAP@5 with **exclude same-patient** (every query answered from the other subject); "
        f"{default['n_queries']} queries. Trained rows: `medcbir train` defaults (the recipe), {args['epochs']} epochs at "
        f"{args['size']} px ({args['precision']}) on the same unlabelled archive; each row's baselines use that encoder's "
        f"preprocessing (load average at the end {data['load_avg'][0]:.1f}).",
        "",
        "| encoder | MAP@5 | AP@5 | 5-NN acc | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]

    def row(label, r):
        return f"| {label} | {r['map_at_k']:.3f} | {r['ap_at_k']:.3f} | {r['knn_accuracy']:.3f} | " + " | ".join(f"{r['baselines'][n]['map_at_k']:.3f}" for n in names) + " |"

    lines.append(row("default (classic, 224 px)", default))
    for t in data["trained"]:
        lines.append(row(f"{t['row']}, {t['train_seconds'] / 60:.1f} min", t["result"]))
    lines.append("")
    best = max(default["baselines"][n]["map_at_k"] for n in ("thumbnail:8", "thumbnail:16", "thumbnail:32"))
    lines.append(f"Default vs the best thumbnail: {default['map_at_k']:.3f} vs {best:.3f} "
                 + ("(**not worse**)" if default["map_at_k"] >= best else "(**worse**)") + ".")
    for t in data["trained"]:
        r = t["result"]
        rivals = {n: r["baselines"][n]["map_at_k"] for n in ("thumbnail:16", "random", "classic") if n in r["baselines"]}
        verdict = "beats " + ", ".join(n for n, v in rivals.items() if r["map_at_k"] > v) if any(r["map_at_k"] > v for v in rivals.values()) else "beats none"
        lines.append(f"{t['row']}: MAP@5 {r['map_at_k']:.3f} vs " + ", ".join(f"{n} {v:.3f}" for n, v in rivals.items()) + f": {verdict}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
