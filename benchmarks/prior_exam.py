"""Prior-exam retrieval on phantom v2: is the retrieved slice of the other exam at the right level?

A phantom archive with several exams per patient (``make_archive(studies_per_patient=N)``: new
table position, field of view, scanned range, contrast timing and noise per exam, same anatomy)
is indexed with each encoder; every slice of every exam is a query, and for each other exam of
its patient ``Engine.prior`` returns one slice. Truth (``slices.csv``): that exam's slice of
nearest body position ``z``. We report the fraction of (query, other exam) pairs whose retrieved
slice is within 1 and within 2 slices (InstanceNumber) of the truth, for

- ``series`` context (the engine's default: the indexed query's whole series is aligned with
  each series of the other exam, ``medcbir.engine.alignment``), and
- ``slice`` context (the query slice alone: its most similar slice in the other exam; the
  peer any single-image CBIR gives),

for the baselines ``thumbnail:8``, ``thumbnail:16``, ``random`` and the ``default`` encoder, plus
a trained checkpoint when one is given (``--trained PATH``).

Run: ``.venv/bin/python benchmarks/prior_exam.py [--patients 6 --slices 24 --studies 3 --size 128]``
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import record  # noqa: E402


def truth_table(archive: Path) -> dict:
    """sop → (patient folder, study uid, instance number, z) from slices.csv."""
    with open(archive / "slices.csv", newline="") as fh:
        return {r["sop_instance_uid"]: (r["patient"], r["study_instance_uid"], int(r["instance_number"]), float(r["z"])) for r in csv.DictReader(fh)}


def measure(engine, truth: dict, context: str) -> dict:
    by_study: dict = {}
    for sop, (patient, study, inst, z) in truth.items():
        by_study.setdefault(study, []).append((z, inst))
    errors = []
    started = time.perf_counter()
    for sop, (patient, study, inst, z) in truth.items():
        for other in engine.prior(sop, context=context).studies:
            got = truth[other.slice.meta["sop_instance_uid"]]
            nearest = min(by_study[other.study_instance_uid], key=lambda t: abs(t[0] - z))
            errors.append(abs(got[2] - nearest[1]))
    errors = np.asarray(errors)
    return {
        "pairs": int(len(errors)),
        "within_1": float(np.mean(errors <= 1)),
        "within_2": float(np.mean(errors <= 2)),
        "exact": float(np.mean(errors == 0)),
        "mean_abs_slices": float(errors.mean()),
        "seconds_per_query": (time.perf_counter() - started) / max(1, len(truth)),
    }


def train_encoder(tmp: Path, args) -> str:
    """A short self-supervised run on a phantom of other patients (seed + 1000), 64 px."""
    from medcbir.imaging.phantom import make_archive
    from medcbir.train.trainer import TrainConfig, train

    train_archive = tmp / "train-archive"
    make_archive(train_archive, patients=args.patients, slices=args.slices, seed=args.seed + 1000, size=args.size, studies_per_patient=1)
    out = tmp / "trained.pt"
    t0 = time.perf_counter()
    train(TrainConfig(archive=train_archive, out=out, method="simsiam", epochs=args.train_epochs, batch_size=32, size=64,
                      views="hu-narrow,hu-wide", augment="archive", neighbour_mm=10.0, workers=1, progress=False))
    print(f"trained {args.train_epochs} epochs in {time.perf_counter() - t0:.0f} s", flush=True)
    args.train_seconds = time.perf_counter() - t0
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--encoders", default="thumbnail:8,thumbnail:16,random,default")
    parser.add_argument("--trained", default=None, help="a trained checkpoint to add as a row")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="train an encoder first (SimSiam + HU views + archive recipe, 64 px) on a disjoint phantom for N epochs")
    args = parser.parse_args()

    from medcbir.engine import Engine
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    load = os.getloadavg()
    encoders = [e for e in args.encoders.split(",") if e]
    if args.trained:
        encoders.append(args.trained)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_epochs and not args.trained:
            args.trained = train_encoder(Path(tmp), args)
            encoders.append(args.trained)
        archive = Path(tmp) / "archive"
        make_archive(archive, patients=args.patients, slices=args.slices, seed=args.seed, size=args.size, studies_per_patient=args.studies)
        truth = truth_table(archive)
        for name in encoders:
            index = Path(tmp) / f"index-{len(rows)}"
            t0 = time.perf_counter()
            index_archive(archive, index, name, workers=1, progress=False)
            index_seconds = time.perf_counter() - t0
            engine = Engine.open(index)
            label = "trained" if name == args.trained else name
            rows[label] = {"index_seconds": index_seconds, **{ctx: measure(engine, truth, ctx) for ctx in ("series", "slice")}}
            print(label, {ctx: {k: round(v, 3) for k, v in rows[label][ctx].items()} for ctx in ("series", "slice")}, flush=True)
            engine.close()
    lines = [
        f"Phantom v2, {args.patients} patients × {args.studies} exams × {args.slices} slices at {args.size} px (seed {args.seed});"
        f" every slice queried against each other exam of its patient ({next(iter(rows.values()))['series']['pairs']} pairs).",
        "Truth: the other exam's slice of nearest body position (slices.csv). `series` = the engine's default"
        " (the query's whole series aligned by a z shift); `slice` = the query slice alone (its most similar slice).",
        f"Load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on a shared 2-core machine (timings noisy).",
        "",
        "| encoder | within 1 slice (series) | within 2 (series) | exact (series) | within 1 (slice only) | within 2 (slice only) | exact (slice only) | mean abs. error (series / slice) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        s, o = r["series"], r["slice"]
        lines.append(f"| {label} | {s['within_1']:.3f} | {s['within_2']:.3f} | {s['exact']:.3f} | {o['within_1']:.3f} | {o['within_2']:.3f} | {o['exact']:.3f} | {s['mean_abs_slices']:.2f} / {o['mean_abs_slices']:.2f} |")
    lines.append("")
    if args.train_epochs:
        lines.append(f"`trained` = SimSiam with the HU views and the archive recipe (neighbour slices ≤ 10 mm), 64 px, "
                     f"{args.train_epochs} epochs on a disjoint phantom (seed {args.seed + 1000}), {getattr(args, 'train_seconds', 0):.0f} s.")
    lines.append("Goal (issue 17): within one slice for ≥ 90 % of queries.")
    record(
        "prior_exam",
        {"parameters": vars(args), "load_average": load, "results": rows},
        "\n".join(lines),
        "python benchmarks/prior_exam.py " + " ".join(sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
