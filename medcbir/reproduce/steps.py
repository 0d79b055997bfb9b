"""The steps every reproduction chains: archive, training under a budget, index, retrieval, items to explain.

Each step is the same API the CLI commands call (``phantom``, ``train``, ``index``, ``evaluate``,
``explain-eval``); nothing here re-implements a metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from medcbir.engine import Engine, evaluate
from medcbir.engine.baselines import evaluate_baselines
from medcbir.errors import ConfigError
from medcbir.imaging.labels import read_labels
from medcbir.imaging.phantom import make_archive
from medcbir.indexer import index_archive
from medcbir.reproduce.budget import Budget

K = 5


def prepare_archive(archive: Path, budget: Budget, phantom: bool, needs=("labels.csv", "masks.h5")) -> dict:
    """The archive to reproduce on: a phantom v2 is written when asked or when ``archive`` is missing.

    Returns:
        ``{"path", "phantom": bool, "generated": bool, "patients", "slices", "size"}``.
    """
    archive = Path(archive)
    generated = False
    if phantom or not archive.exists():
        make_archive(archive, patients=budget.patients, slices=budget.slices, seed=budget.seed, size=budget.phantom_size, workers=1)
        generated = True
    if not archive.is_dir():
        raise ConfigError(f"archive {archive} is not a folder")
    missing = [n for n in needs if not (archive / n).is_file()]
    if missing:
        raise ConfigError(f"archive {archive} has no {', '.join(missing)} (the reproductions score against them; use --phantom for a phantom archive)")
    info = {"path": str(archive), "generated": generated, "phantom": (archive / "phantom.json").is_file()}
    if info["phantom"]:
        import json

        meta = json.loads((archive / "phantom.json").read_text())
        info.update(patients=len(meta.get("patients", [])), version=meta.get("version"))
    return info


@dataclass
class Trained:
    """One training row: the checkpoint and what the budget let it do."""

    name: str
    path: Path
    method: str
    epochs_run: int
    epochs: int
    seconds: float
    stopped_by_budget: bool
    options: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "checkpoint": str(self.path), "method": self.method, "epochs_run": self.epochs_run, "epochs": self.epochs,
                "seconds": round(self.seconds, 1), "stopped_by_budget": self.stopped_by_budget, "options": self.options}


class _OutOfTime(Exception):
    pass


def train_row(name: str, archive: Path, out: Path, budget: Budget, method: str, **options) -> Trained:
    """Train one encoder with :func:`medcbir.train.train` for at most ``budget.epochs`` epochs and
    ``budget.minutes`` of wall time (the epoch that crosses the limit is kept)."""
    from medcbir.train.trainer import TrainConfig, train

    defaults = {"lr": 0.2}  # the demo's choice: 0.05·batch/256 barely moves the weights in a few epochs
    if method == "simsiam":
        defaults["method_options"] = {"proj_dim": 512, "pred_dim": 128}
    defaults.update(options)
    out.parent.mkdir(parents=True, exist_ok=True)
    epochs = {"n": 0}
    t0 = time.perf_counter()

    def on_epoch(epoch, row):
        epochs["n"] = epoch
        if time.perf_counter() - t0 > budget.minutes * 60 and epoch < budget.epochs:
            raise _OutOfTime

    config = TrainConfig(archive=archive, out=out, method=method, epochs=budget.epochs, batch_size=budget.batch_size, size=budget.size,
                         seed=budget.seed, progress=False, workers=1, **defaults)
    stopped = False
    try:
        train(config, on_epoch_end=on_epoch)
    except _OutOfTime:
        stopped = True
    recorded = {k: v for k, v in defaults.items() if k != "method_options"}
    return Trained(name, out, method, epochs["n"], budget.epochs, time.perf_counter() - t0, stopped, recorded)


def build_index(archive: Path, encoder, index_dir: Path) -> Path:
    """Index ``archive`` with ``encoder`` (a checkpoint path or a built-in name) into ``index_dir``."""
    index_archive(archive, index_dir, str(encoder), workers=1, progress=False, key_file=index_dir.parent / f"{index_dir.name}.key")
    return index_dir


def retrieval(index_dir: Path, labels: Path, baselines=()) -> dict:
    """``medcbir evaluate``: leave-one-out MAP@5 / 5-NN accuracy, other patients only, plus baselines."""
    with Engine.open(index_dir) as engine:
        result = {"encoder": evaluate(engine, labels, k=K, exclude="same-patient")}
        if baselines:
            result.update(evaluate_baselines(engine, labels, k=K, exclude="same-patient", names=tuple(baselines), workers=1))
    return result


def organ_pairs(index_dir: Path, masks_file: Path, organ: str, n: int, labels: Path | None = None):
    """Up to ``n`` (query, neighbour) pairs of another patient's slices that both show ``organ``.

    The pairing of ``medcbir explain-eval`` (:func:`~medcbir.explain.evaluation.select_pairs`);
    images come preprocessed and masks in the images' geometry.

    Returns:
        ``{"query_images", "query_masks", "images", "masks", "pairs": [[query uid, neighbour uid]], "module"}``.
    """
    from medcbir.explain.evaluation.selection import decode_with_masks, select_items, select_pairs
    from medcbir.explain.runner import torch_encoder

    with Engine.open(index_dir) as engine:
        pool = select_items(engine, masks_file, organ, 3 * n, read_labels(labels).by_item() if labels else None)
        pairs = select_pairs(engine, masks_file, organ, pool, n, exclude="same-patient")
        qmetas, qimages, qmasks = decode_with_masks(engine, [p[0] for p in pairs], [p[1] for p in pairs])
        nmetas, nimages, nmasks = decode_with_masks(engine, [p[2] for p in pairs], [p[3] for p in pairs])
        module = torch_encoder(engine.encoder)
    return {"query_images": qimages, "query_masks": qmasks, "images": nimages, "masks": nmasks, "module": module,
            "pairs": [[q["sop_instance_uid"], nb["sop_instance_uid"]] for q, nb in zip(qmetas, nmetas)]}


def liver_query(archive: Path, index_dir: Path) -> str:
    """A liver-level slice of the archive's last patient (the seed paper's use case), as SOP UID."""
    labels = read_labels(archive / "labels.csv").by_item()
    with Engine.open(index_dir) as engine:
        uids = [str(u) for u in engine.columns["sop_instance_uid"]]
        frames = [int(f) for f in engine.columns["frame"]]
        patients = [str(p) for p in engine.columns["patient_pseudonym"]]
    last = sorted(set(patients))[-1]
    mine = [(u, f) for u, f, p in zip(uids, frames, patients) if p == last]
    for wanted in ("liver-kidney", "liver-dome"):
        hits = [u for u, f in mine if labels.get((u, f)) == wanted]
        if hits:
            return hits[len(hits) // 2]
    return mine[len(mine) // 2][0]


def organ_items(index_dir: Path, masks_file: Path, organ: str, n: int, labels: Path | None = None):
    """Up to ``n`` indexed slices showing ``organ`` (spread over the labels), as ``explain-eval --targets own`` picks them.

    Returns:
        ``{"images", "masks", "uids", "module"}`` (images preprocessed, masks in their geometry).
    """
    from medcbir.explain.evaluation.selection import decode_with_masks, select_items
    from medcbir.explain.runner import torch_encoder

    with Engine.open(index_dir) as engine:
        chosen = select_items(engine, masks_file, organ, n, read_labels(labels).by_item() if labels else None)
        metas, images, masks = decode_with_masks(engine, [i for i, _ in chosen], [m for _, m in chosen])
        module = torch_encoder(engine.encoder)
    return {"images": images, "masks": masks, "uids": [m["sop_instance_uid"] for m in metas], "module": module}
