"""Supervised fine-tuning of a head on an encoder (``medcbir finetune``): the WILDCAT head.

The data are the archive's labelled items (a ``labels.csv`` as ``medcbir evaluate --labels``
reads it: ``sop_instance_uid,frame,label``), each exactly as the encoder sees it at search time
(the encoder's own geometry and window policy, from the HU cache of :mod:`medcbir.train.dataset`).
Patients are split as the trainer splits them (``holdout`` of the patients held out, never
trained on); the held-out class accuracy is logged after every epoch.

Recipe (WILDCAT's): cross-entropy on the head's class scores, SGD with momentum 0.9 and weight
decay 1e-4, a per-step cosine schedule from ``lr`` to zero. By default the backbone is frozen
(its fingerprint, hence every index built with it, stays valid; its features are computed
once); with ``train_backbone`` it is trained too, at ``lr · backbone_lr`` (WILDCAT's ``lrp``),
and its batch-norm statistics move with it.

Each epoch ends with an atomic checkpoint that is a normal encoder checkpoint (index and search
use the backbone's embedding as before) plus the ``"wildcat"`` head entry and everything a
bit-for-bit resume needs: optimiser, scheduler, epoch, RNG states, the run's options and the
history. Batches come from a permutation seeded by (seed, epoch); ``resume=True`` continues an
interrupted run to exactly the weights of an uninterrupted one (on CPU).

Public API:

- :class:`FinetuneConfig` (the ``medcbir finetune`` options), :func:`finetune` →
  :class:`FinetuneSummary`.

Example:
    >>> summary = finetune(FinetuneConfig(encoder="enc.pt", archive="phantom/",
    ...                                   labels="phantom/labels-liver.csv", out="wildcat.pt",
    ...                                   epochs=2))          # doctest: +SKIP
    >>> summary.history[-1]["heldout_accuracy"]                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcbir.device import Device
from medcbir.errors import ConfigError
from medcbir.encoders.checkpoint import module_from_record, save_checkpoint
from medcbir.encoders.heads import attach_head
from medcbir.encoders.module import features_and_embeddings
from medcbir.encoders.runtime import load_encoder_module
from medcbir.encoders.wildcat import (
    DEFAULT_ALPHA,
    DEFAULT_K_MINUS,
    DEFAULT_K_PLUS,
    DEFAULT_MAPS,
    WildcatHead,
    check_options,
)
from medcbir.train.dataset import default_cache_path, load_hu_dataset, patient_split
from medcbir.train.loop import Plan, restore, resume_record, run_epochs, seed_everything, sgd_cosine
from medcbir.train.views import window_batch

HEADS = ("wildcat",)
METHOD = "wildcat-finetune"
# options that must match for --resume to continue the same run
RESUME_KEYS = (
    "head", "base_fingerprint", "labels_sha256", "k_plus", "k_minus", "alpha", "maps_per_class", "epochs", "lr",
    "batch_size", "seed", "train_backbone", "backbone_lr", "holdout",
)


@dataclass
class FinetuneConfig:
    """Options of one fine-tuning run (the ``medcbir finetune`` flags).

    Args:
        encoder: the encoder to fine-tune: a checkpoint or a built-in name (``default``, ``random:SEED``).
        archive: DICOM folder.
        labels: ``labels.csv`` (``sop_instance_uid,frame,label``); unlabelled items are not used.
        out: checkpoint path (rewritten after every epoch).
        head: ``"wildcat"``.
        k_plus, k_minus: WILDCAT regions of positive / negative evidence (count ≥ 1 or fraction < 1).
        alpha: weight of the negative evidence.
        maps_per_class: M, transfer maps per class.
        epochs: total epochs (the cosine schedule spans them).
        lr: learning rate of the head.
        batch_size: images per step.
        seed: seed of the head's initialisation, the split and the batch order.
        train_backbone: also train the backbone (changes its fingerprint: re-index with the result).
        backbone_lr: the backbone's learning rate as a multiple of ``lr``.
        holdout: fraction of patients held out for the accuracy monitor (0 = train on all).
        resume: continue from ``out`` if it exists.
        cache: HU cache path; None = next to ``out``.
        workers: archive decoding workers (0 = auto).
        device: a :class:`~medcbir.device.Device`; None = ``Device.auto()`` (fp32).
        progress: progress bars.
    """

    encoder: Any
    archive: str | Path
    labels: str | Path
    out: str | Path
    head: str = "wildcat"
    k_plus: float = DEFAULT_K_PLUS
    k_minus: float = DEFAULT_K_MINUS
    alpha: float = DEFAULT_ALPHA
    maps_per_class: int = DEFAULT_MAPS
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 32
    seed: int = 0
    train_backbone: bool = False
    backbone_lr: float = 0.1
    holdout: float = 0.25
    resume: bool = False
    cache: str | Path | None = None
    workers: int = 0
    device: object = None
    progress: bool = True

    def record(self, base_fingerprint: str, labels_sha256: str) -> dict:
        """The run's identity, stored in the checkpoint and compared on resume."""
        return {
            "head": self.head,
            "base_fingerprint": base_fingerprint,
            "labels_sha256": labels_sha256,
            "k_plus": float(self.k_plus),
            "k_minus": float(self.k_minus),
            "alpha": float(self.alpha),
            "maps_per_class": int(self.maps_per_class),
            "epochs": int(self.epochs),
            "lr": float(self.lr),
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
            "train_backbone": bool(self.train_backbone),
            "backbone_lr": float(self.backbone_lr),
            "holdout": float(self.holdout),
        }


@dataclass
class FinetuneSummary:
    """What a run did (``medcbir finetune`` prints it)."""

    out: str
    head: str
    classes: list
    epochs: int
    epochs_run: int
    n_train: int
    n_heldout: int
    seconds: float
    final_loss: float
    train_accuracy: float
    heldout_accuracy: float | None
    fingerprint: str
    base_fingerprint: str
    history: list
    log: str

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- data
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class LabelledSet:
    """The labelled items as the encoder sees them: modality units, window ranges, class indices."""

    pixels: torch.Tensor  # N×1×S×S modality units
    ranges: torch.Tensor  # N×C×2
    inverted: torch.Tensor  # N bools
    targets: torch.Tensor  # N class indices
    patient: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def images(self, index) -> torch.Tensor:
        """B×C×S×S in [0, 1]: the items' search-time inputs."""
        return window_batch(self.pixels[index], self.ranges[index], self.inverted[index])


def labelled_set(config: FinetuneConfig, preprocessing) -> tuple[LabelledSet, list[str]]:
    """The archive's labelled items and the sorted class names."""
    out = Path(config.out)
    cache = Path(config.cache) if config.cache else default_cache_path(out, preprocessing.size)
    data = load_hu_dataset(config.archive, preprocessing, cache, workers=config.workers, progress=config.progress)
    labels = data.labels(config.labels)
    keep = np.flatnonzero(labels != "")
    if not len(keep):
        raise ConfigError(f"{config.labels} labels no item of {config.archive}")
    classes = sorted(set(labels[keep].tolist()))
    if len(classes) < 2:
        raise ConfigError(f"{config.labels} has one class ({classes[0]}) among the archive's items; a classifier needs at least 2")
    lookup = {c: i for i, c in enumerate(classes)}
    ranges = data.ranges(preprocessing.windows, keep)
    return (
        LabelledSet(
            pixels=data.pixels(torch.from_numpy(keep)),
            ranges=ranges,
            inverted=data.inverted[torch.from_numpy(keep)],
            targets=torch.tensor([lookup[c] for c in labels[keep]], dtype=torch.long),
            patient=np.asarray(data.patient, dtype=object)[keep],
        ),
        classes,
    )


def split(items: LabelledSet, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of the labelled items, patient-disjoint."""
    if holdout <= 0:
        return np.arange(len(items)), np.zeros(0, dtype=np.int64)
    return patient_split(items.patient, holdout, seed)


# --------------------------------------------------------------------------- the run
def _check(config: FinetuneConfig) -> None:
    if config.head not in HEADS:
        raise ConfigError(f"unknown --head {config.head!r}; choose one of {', '.join(HEADS)}")
    check_options(config.k_plus, config.k_minus, config.alpha, config.maps_per_class)
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be ≥ 1, not {config.epochs}")
    if config.batch_size < 1 or (config.train_backbone and config.batch_size < 2):
        raise ConfigError(f"--batch-size must be ≥ {2 if config.train_backbone else 1} (batch norm needs two samples), not {config.batch_size}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"--lr must be > 0, not {config.lr}")
    if not 0 <= config.holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), not {config.holdout}")
    if not Path(config.labels).is_file():
        raise ConfigError(f"labels file {config.labels} not found")


def _base_encoder(name: Any) -> nn.Module:
    if isinstance(name, nn.Module):
        return copy.deepcopy(name).cpu()
    if str(name).lower().endswith(".onnx"):
        raise ConfigError(f"{name} is an ONNX export; fine-tune its torch checkpoint")
    return load_encoder_module(name)


def _prototypes(embeddings: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """C×D: each class's mean training embedding, L2-normalised (zeros for an absent class)."""
    out = torch.zeros(n_classes, embeddings.shape[1])
    out.index_add_(0, targets.cpu(), embeddings.cpu())
    return F.normalize(out, dim=1)


@torch.no_grad()
def _forward_all(encoder: nn.Module, items: LabelledSet, index: np.ndarray, where, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, embeddings) of items in eval mode, on the CPU."""
    feats, embs = [], []
    for start in range(0, len(index), batch):
        idx = torch.from_numpy(index[start : start + batch])
        f, e = features_and_embeddings(encoder, items.images(idx).to(where))
        feats.append(f.cpu())
        embs.append(e.cpu())
    return torch.cat(feats), torch.cat(embs)


def _accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return float((scores.argmax(dim=1).cpu() == targets.cpu()).float().mean()) if len(targets) else float("nan")


def _load_resume(out: Path, config: FinetuneConfig, identity: dict) -> dict | None:
    def refusal(record: dict) -> str | None:
        usable = record.get("method") == METHOD and "optimizer" in record and "wildcat" in record
        return None if usable else "is not a fine-tuning checkpoint to resume (use another --out)"

    return resume_record(out, config.resume, identity, RESUME_KEYS, refusal)


class _HeadRun:
    """One fine-tuning run as the epoch loop sees it: cross-entropy steps, accuracy rows, checkpoints."""

    def __init__(self, config: FinetuneConfig, encoder, items: LabelledSet, classes: list, train_idx, held_idx, frozen, batch: int,
                 optimizer, scheduler, where, out: Path, base_fingerprint: str) -> None:
        self.config, self.encoder, self.head, self.items, self.classes = config, encoder, encoder.wildcat, items, classes
        self.train_idx, self.held_idx, self.frozen, self.batch = train_idx, held_idx, frozen, batch
        self.optimizer, self.scheduler, self.where, self.out = optimizer, scheduler, where, out
        self.base_fingerprint = base_fingerprint
        self.targets = items.targets.to(where)
        self._train = torch.from_numpy(train_idx)
        self.correct, self.seconds = 0, 0.0

    def begin_epoch(self, epoch: int) -> None:
        self.encoder.train(self.config.train_backbone)
        self.head.train()
        self.correct = 0

    def step(self, picked: torch.Tensor, epoch: int, step: int) -> float:
        idx = self._train[picked]
        if self.frozen is not None:
            features = self.frozen[0][idx].to(self.where)
        else:
            features, _ = features_and_embeddings(self.encoder, self.items.images(idx).to(self.where))
        scores, _ = self.head(features)
        loss = F.cross_entropy(scores, self.targets[idx.to(self.where)])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.correct += int((scores.detach().argmax(dim=1) == self.targets[idx.to(self.where)]).sum())
        return float(loss.detach())

    def end_epoch(self, epoch: int, losses: list[float], seconds: float) -> dict:
        started = time.perf_counter()
        encoder, head, items, train_idx = self.encoder, self.head, self.items, self.train_idx
        encoder.eval()
        head.eval()
        if self.frozen is None:
            feats, embs = _forward_all(encoder, items, np.arange(len(items)), self.where, max(self.batch, 32))
            head.prototypes.copy_(_prototypes(embs[train_idx], items.targets[train_idx], len(self.classes)).to(self.where))
        else:
            feats = self.frozen[0]
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "train_accuracy": self.correct / (len(losses) * self.batch),
            "lr": float(self.scheduler.get_last_lr()[0]),
        }
        if len(self.held_idx):
            with torch.no_grad():
                held_scores, _ = head(feats[torch.from_numpy(self.held_idx)].to(self.where))
            row["heldout_accuracy"] = _accuracy(held_scores, items.targets[self.held_idx])
        epoch_seconds = seconds + time.perf_counter() - started
        row["seconds"] = round(epoch_seconds, 3)
        self.seconds += epoch_seconds
        return row

    def save(self, state: dict) -> None:
        save_checkpoint(self.out, self.encoder, method=METHOD, extra={**state, "base_fingerprint": self.base_fingerprint})


def finetune(config: FinetuneConfig, on_epoch_end: Callable[[int, dict], None] | None = None) -> FinetuneSummary:
    """Fine-tune a WILDCAT head (and optionally the backbone) on labelled archive items.

    Args:
        config: the run's options.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` after each epoch's checkpoint is
            committed (``epoch`` 1-based); an exception raised here stops the run with that
            epoch kept, like an interruption.

    Returns:
        A :class:`FinetuneSummary`.
    """
    _check(config)
    device = config.device or Device.auto()
    where = torch.device(device.torch)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    base = _base_encoder(config.encoder)
    base_fingerprint = base.fingerprint
    identity = config.record(base_fingerprint, _file_sha256(Path(config.labels)))
    items, classes = labelled_set(config, base.preprocessing)
    train_idx, held_idx = split(items, config.holdout, config.seed)
    if not len(train_idx):
        raise ConfigError("no labelled item is left to train on after the hold-out split")
    batch = min(config.batch_size, len(train_idx))
    if config.train_backbone and batch < 2:
        raise ConfigError(f"only {len(train_idx)} labelled training image(s); training the backbone needs at least 2")
    plan = Plan(units=len(train_idx), per_step=batch, epochs=config.epochs, seed=config.seed, progress=config.progress)

    record = _load_resume(out, config, identity)
    if record is not None:
        encoder = module_from_record(record, str(out))
        head = encoder.wildcat
        if head.classes != classes:
            raise ConfigError(f"cannot resume {out}: its classes {head.classes} differ from the labels' {classes}")
    else:
        encoder = base
        seed_everything(config.seed)
        feature_channels = _forward_all(encoder.eval(), items, train_idx[:1], "cpu", 1)[0].shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            head = WildcatHead(feature_channels, classes, config.maps_per_class, config.k_plus, config.k_minus, config.alpha, dim=encoder.dim)
        attach_head(encoder, head)
    encoder.to(where)
    head = encoder.wildcat

    groups = [{"params": list(head.transfer.parameters()), "lr": config.lr}]
    if config.train_backbone:
        groups.append({"params": list(encoder.backbone.parameters()), "lr": config.lr * config.backbone_lr})
    else:
        encoder.backbone.requires_grad_(False)
    optimizer, scheduler = sgd_cosine(groups, config.lr, plan.total_steps)

    history: list[dict] = []
    start_epoch = 0
    cuda = where.type == "cuda"
    if record is not None:
        start_epoch, history = restore(record, optimizer, scheduler, cuda=cuda)

    frozen = None
    if not config.train_backbone:
        # The backbone does not move: its features (and embeddings) are computed once.
        frozen = _forward_all(encoder.eval(), items, np.arange(len(items)), where, max(batch, 32))
        head.prototypes.copy_(_prototypes(frozen[1][train_idx], items.targets[train_idx], len(classes)).to(where))

    log_path = out.with_name(out.stem + ".log.jsonl")
    run = _HeadRun(config, encoder, items, classes, train_idx, held_idx, frozen, batch, optimizer, scheduler, where, out, base_fingerprint)
    run_epochs(run, plan, start_epoch=start_epoch, history=history, identity=identity, log_path=log_path, cuda=cuda, on_epoch_end=on_epoch_end)
    seconds = run.seconds

    encoder.backbone.requires_grad_(True)
    last = history[-1] if history else {}
    return FinetuneSummary(
        out=str(out),
        head=config.head,
        classes=list(classes),
        epochs=config.epochs,
        epochs_run=config.epochs - start_epoch,
        n_train=int(len(train_idx)),
        n_heldout=int(len(held_idx)),
        seconds=round(seconds, 3),
        final_loss=float(last.get("loss", math.nan)),
        train_accuracy=float(last.get("train_accuracy", math.nan)),
        heldout_accuracy=last.get("heldout_accuracy"),
        fingerprint=encoder.refresh_fingerprint(),
        base_fingerprint=base_fingerprint,
        history=history,
        log=str(log_path),
    )


__all__ = ["FinetuneConfig", "FinetuneSummary", "HEADS", "finetune"]
