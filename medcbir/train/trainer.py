"""The self-supervised trainer: HU cache → batched views → method loss → SGD, checkpoint each epoch.

Recipe of the reference paper (Wickstrøm et al. 2023, after SimSiam): SGD with momentum 0.9,
weight decay 1e-4, learning rate 0.05·batch/256 with a cosine schedule (per step, to zero).
Each epoch ends with an atomic checkpoint holding everything a bit-for-bit resume needs: the
method's full state (backbone, heads, MoCo's key encoder and queue), the optimiser, the
scheduler, the epoch, and the torch/numpy/python RNG states. Batches are drawn from a
permutation seeded by (seed, epoch), and the augmentations consume torch's global RNG, so an
interrupted run resumed with ``resume=True`` produces exactly the weights of an
uninterrupted one (on CPU; cuDNN may be nondeterministic on GPU).

The checkpoint is also a normal encoder checkpoint (:func:`medcbir.encoders.runtime.load_encoder_module`): its
preprocessing is the test-time one, the encoder's windows at the training size (for the
Hounsfield-window views, the wide liver window).

Example:
    >>> summary = train(TrainConfig(archive="phantom/", out="enc.pt", epochs=2, batch_size=16,
    ...                             size=64, views="hu-narrow,hu-wide"))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcbir.device import Device
from medcbir.errors import ConfigError
from medcbir.train.recipe import RECIPE  # noqa: F401 - re-exported: the recipe the CLI and the demo use
from medcbir.encoders.architecture import DEFAULT_POOLING, POOLINGS, backbone_dim, make_arch
from medcbir.encoders.checkpoint import save_checkpoint
from medcbir.encoders.module import EncoderModule, build_network
from medcbir.encoders.preprocessing import DEFAULT_CROP, DEFAULT_FOV_MM, DEFAULT_WINDOWS, default_preprocessing
from medcbir.train.dataset import HUDataset, default_cache_path, load_hu_dataset, patient_split
from medcbir.train.batches import Batches
from medcbir.train.loop import Plan, restore, resume_record, run_epochs, seed_everything, sgd_cosine
from medcbir.train.methods import METHODS, build_method
from medcbir.train.monitor import RetrievalMonitor, plot_history
from medcbir.train.views import ArchiveAugment, BatchAugment, parse_views

AUGMENTS = ("standard", "archive")

MONITOR_KEYS = ("map_at_k", "knn_accuracy", "n_queries", "k")
# Fields that must match for --resume to continue the same run.
RESUME_KEYS = (
    "method", "backbone", "size", "batch_size", "epochs", "views", "seed", "lr", "windows", "rotation", "crop_scale",
    "labels_holdout", "crop", "fov_mm", "pooling", "augment", "neighbour_mm", "neighbour_p", "position_delta", "position_p",
    "init",
)


@dataclass
class TrainConfig:
    """Options of one training run (the ``medcbir train`` flags).

    Args:
        archive: DICOM folder.
        out: checkpoint path (rewritten after every epoch).
        method: a key of :data:`~medcbir.train.methods.METHODS`.
        epochs: total epochs of the run (the cosine schedule spans them all).
        batch_size: images per step.
        size: training image side (also the saved preprocessing size).
        views: ``"hu-narrow,hu-wide"`` (or a two-name sequence) for the Hounsfield-window views; None = both views use
            ``windows``.
        windows: the encoder's (test-time) window policy per channel (``CT=ct-liver-wide,*=robust``).
        backbone: ``resnet18``/``resnet34``/``resnet50``.
        crop: ``"body"`` (crop to the body before resizing) or ``"none"``.
        fov_mm: with ``crop="body"``, the body region spans this many mm (None: fit the box).
        pooling: ``"avg"``, ``"gem"`` or ``"multi"`` (the embedding's pooling).
        augment: ``"standard"`` (SimCLR-style crop, flip, jitter, blur) or ``"archive"``
            (:class:`~medcbir.train.views.ArchiveAugment`: field of view, positioning, window
            jitter, gamma, noise, blur/sharpen, erasing).
        neighbour_mm: > 0: with probability ``neighbour_p`` a view's partner is another slice of
            the same series within this many mm (:mod:`medcbir.train.pairs`); 0 = off.
        neighbour_p: probability of a neighbour-slice positive.
        position_delta: > 0: with probability ``position_p`` a view's partner is a slice of
            another series in the same plane at the same relative position (within this
            fraction of the series' extent): positional positives across patients
            (:class:`~medcbir.train.pairs.PositionPartners`); 0 = off.
        position_p: probability of a positional positive.
        labels: ``labels.csv`` for the held-out retrieval monitor (held-out patients are not
            trained on).
        holdout: fraction of patients held out when ``labels`` is given.
        resume: continue from ``out`` if it exists.
        seed: seed of initialisation, batch order and augmentations.
        workers: archive decoding workers (0 = auto).
        lr: base learning rate; None = 0.05·batch/256.
        rotation: maximum augmentation rotation in degrees (0 = none).
        crop_scale: smallest random-resized-crop area (the standard 0.2; larger keeps more
            of the anatomy that tells slice levels apart).
        method_options: keyword arguments of the method (e.g. ``{"queue_size": 1024}``).
        cache: HU cache path; None = next to ``out``.
        device: a :class:`~medcbir.device.Device`; None = ``Device.auto()``.
        progress: show a progress bar.
        monitor_k: K of the monitor's MAP@K.
        init: an encoder to start from (anything :func:`~medcbir.encoders.runtime.load_encoder_module`
            takes: an encoder spec, ``hf:DIR``, a checkpoint, or a module in memory, which is
            copied, never trained in place): the method trains its module, all
            its weights (full fine-tuning), and its preprocessing replaces ``size``,
            ``windows``, ``crop`` and ``fov_mm``; ``backbone`` and ``pooling`` are unused.
    """

    archive: str | Path
    out: str | Path
    method: str = "simsiam"
    epochs: int = 10
    batch_size: int = 64
    size: int = 224
    views: str | tuple | list | None = None
    windows: tuple = DEFAULT_WINDOWS
    backbone: str = "resnet18"
    crop: str = DEFAULT_CROP
    fov_mm: float | None = DEFAULT_FOV_MM
    pooling: str = DEFAULT_POOLING
    augment: str = "standard"
    neighbour_mm: float = 0.0
    neighbour_p: float = 0.5
    position_delta: float = 0.0
    position_p: float = 0.5
    labels: str | Path | None = None
    holdout: float = 0.25
    resume: bool = False
    seed: int = 0
    workers: int = 0
    lr: float | None = None
    rotation: float = 0.0
    crop_scale: float = 0.2
    method_options: dict = field(default_factory=dict)
    cache: str | Path | None = None
    device: object = None
    progress: bool = True
    monitor_k: int = 5
    init: object = None

    def base_lr(self) -> float:
        return float(self.lr) if self.lr is not None else 0.05 * self.batch_size / 256

    def record(self) -> dict:
        """The run's identity, stored in the checkpoint and compared on resume."""
        return {
            "method": self.method,
            "backbone": self.backbone,
            "size": int(self.size),
            "batch_size": int(self.batch_size),
            "epochs": int(self.epochs),
            "views": self.views if isinstance(self.views, str) else ",".join(self.views or ()),
            "windows": list(self.windows),
            "seed": int(self.seed),
            "lr": self.base_lr(),
            "rotation": float(self.rotation),
            "crop_scale": float(self.crop_scale),
            "labels_holdout": float(self.holdout) if self.labels else 0.0,
            "method_options": dict(self.method_options),
            "crop": self.crop,
            "fov_mm": None if self.fov_mm is None else float(self.fov_mm),
            "pooling": self.pooling,
            "augment": self.augment,
            "neighbour_mm": float(self.neighbour_mm),
            "neighbour_p": float(self.neighbour_p),
            "position_delta": float(self.position_delta),
            "position_p": float(self.position_p),
            **({"init": _init_name(self.init)} if self.init is not None else {}),
        }


@dataclass
class TrainSummary:
    """What a run did (``medcbir train`` prints it)."""

    out: str
    method: str
    epochs: int
    epochs_run: int
    images: int
    steps: int
    seconds: float
    images_per_s: float
    final_loss: float
    fingerprint: str
    preprocessing: dict
    history: list[dict]
    log: str
    plot: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        """One line: method, epochs, throughput, loss, held-out MAP vs the random start."""
        line = (
            f"{self.method}: {self.epochs_run} epoch(s) of {self.epochs}, {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s), final loss {self.final_loss:.4f}"
        )
        monitored = [row for row in self.history if "map_at_k" in row]
        if monitored:
            last = monitored[-1]
            line += f", held-out MAP@{last['k']} {last['map_at_k']:.3f}"
            if monitored[0]["epoch"] == 0 and last is not monitored[0]:
                line += f" (random start {monitored[0]['map_at_k']:.3f})"
        return line


# --------------------------------------------------------------------------- the run
def _preprocessing(config: TrainConfig, init: EncoderModule | None = None):
    if init is not None:
        return init.preprocessing
    return default_preprocessing(int(config.size), tuple(config.windows), crop=config.crop, fov_mm=config.fov_mm)


def _init_name(init) -> str:
    """How a run records its starting encoder: the path or name given, or a module's fingerprint."""
    return str(init) if isinstance(init, (str, Path)) else str(getattr(init, "fingerprint", type(init).__name__))


def _init_module(config: TrainConfig) -> EncoderModule | None:
    """The encoder module the run starts from (``config.init``), or None for a random backbone.

    A module given in memory is copied: the run trains its own copy, never the caller's.
    """
    if config.init is None:
        return None
    if isinstance(config.init, torch.nn.Module):
        module = copy.deepcopy(config.init).cpu()
    else:
        from medcbir.encoders.runtime import load_encoder_module

        module = load_encoder_module(config.init)
    if not any(p.requires_grad for p in module.backbone.parameters()):
        raise ConfigError(f"--init {config.init} has no weights to train")
    return module


def _network(config: TrainConfig, preprocessing, init: EncoderModule | None) -> tuple[dict, torch.nn.Module]:
    """(architecture record, backbone) the method trains: the init module's, or a new random one."""
    if init is not None:
        return dict(init.arch), init.backbone
    arch = make_arch(config.backbone, preprocessing.channels, config.pooling)
    return arch, build_network(arch)


def _check_config(config: TrainConfig) -> None:
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; choose one of {', '.join(sorted(METHODS))}")
    if config.pooling not in POOLINGS:
        raise ConfigError(f"unknown --pooling {config.pooling!r}; choose one of {', '.join(POOLINGS)}")
    backbone_dim(config.backbone, config.pooling)
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be ≥ 1, not {config.epochs}")
    if config.batch_size < 2:
        raise ConfigError(f"--batch-size must be ≥ 2 (batch norm needs two samples), not {config.batch_size}")
    if config.size < 32:
        raise ConfigError(f"--size must be ≥ 32 px for a ResNet, not {config.size}")
    if not 0 < config.crop_scale <= 1:
        raise ConfigError(f"--crop-scale must be in (0, 1], not {config.crop_scale}")
    if config.augment not in AUGMENTS:
        raise ConfigError(f"unknown --augment {config.augment!r}; choose one of {', '.join(AUGMENTS)}")
    if config.neighbour_mm < 0 or not 0 <= config.neighbour_p <= 1:
        raise ConfigError("--neighbour-mm must be ≥ 0 and --neighbour-p in [0, 1]")
    if not 0 <= config.position_delta <= 1 or not 0 <= config.position_p <= 1:
        raise ConfigError("--position-delta and --position-p must be in [0, 1]")
    if config.base_lr() <= 0:
        raise ConfigError(f"--lr must be > 0, not {config.base_lr()}")


def _split(data: HUDataset, config: TrainConfig, test_ranges: torch.Tensor):
    """Training indices and, with labels, the monitor over held-out patients."""
    if not config.labels:
        return np.arange(len(data)), None
    labels = data.labels(config.labels)
    train_idx, held_idx = patient_split(data.patient, config.holdout, config.seed)
    bank = train_idx[labels[train_idx] != ""]
    queries = held_idx[labels[held_idx] != ""]
    if not len(bank) or not len(queries):
        raise ConfigError(f"{config.labels} labels no slice of the training or of the held-out patients")
    inverted = data.inverted
    monitor = RetrievalMonitor(
        (data.pixels(bank), test_ranges[bank], inverted[bank]),
        labels[bank],
        (data.pixels(queries), test_ranges[queries], inverted[queries]),
        labels[queries],
        k=config.monitor_k,
        batch_size=max(config.batch_size, 32),
    )
    return train_idx, monitor


def _load_resume(out: Path, config: TrainConfig) -> dict | None:
    def refusal(record: dict) -> str | None:
        return None if "optimizer" in record else "has no training state to resume (it is an exported encoder)"

    return resume_record(out, config.resume, config.record(), RESUME_KEYS, refusal)


def train_step(method, views: list[torch.Tensor], optimizer, scheduler, scaler, device) -> float:
    """One optimisation step on a batch of augmented views; returns the loss.

    Precision as the device decided, on any device: fp32 (no autocast), bf16 autocast (CPU or
    CUDA; no scaler needed), fp16 autocast with gradient scaling (CUDA).
    """
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with device.autocast():
        loss = method(views)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def make_optimizer(method, config: "TrainConfig", total_steps: int, device):
    """SGD (momentum 0.9, wd 1e-4, lr 0.05·batch/256), per-step cosine schedule, grad scaler."""
    optimizer, scheduler = sgd_cosine(method.trainable_parameters(), config.base_lr(), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device))
    return optimizer, scheduler, scaler


def needs_grad_scaler(device) -> bool:
    """Gradient scaling only for fp16 on CUDA (fp16 gradients underflow); never for fp32 or bf16."""
    return device.torch == "cuda" and device.precision == "fp16"


class _SelfSupervised:
    """One self-supervised run as the epoch loop sees it: steps of views, rows, checkpoints."""

    def __init__(self, config: TrainConfig, method, batches: Batches, augment, optimizer, scheduler, scaler, device, encoder, monitor, out: Path) -> None:
        self.config, self.method, self.batches, self.augment = config, method, batches, augment
        self.optimizer, self.scheduler, self.scaler, self.device = optimizer, scheduler, scaler, device
        self.encoder, self.monitor, self.out = encoder, monitor, out
        self.images_seen, self.seconds, self.steps_run = 0, 0.0, 0

    def begin_epoch(self, epoch: int) -> None:
        self.method.train()

    def step(self, picked: torch.Tensor, epoch: int, step: int) -> float:
        views, positives = self.batches.views(picked, epoch, step, self.augment, self.device.torch)
        self.method.batch_positives = positives
        return train_step(self.method, views, self.optimizer, self.scheduler, self.scaler, self.device)

    def end_epoch(self, epoch: int, losses: list[float], seconds: float) -> dict:
        images = len(losses) * self.batches.per_step
        self.images_seen += images
        self.seconds += seconds
        self.steps_run += len(losses)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 2),
        }
        if self.monitor is not None:
            row.update({k: v for k, v in self.monitor(self.method.backbone, self.device).items() if k in MONITOR_KEYS})
        return row

    def save(self, state: dict) -> None:
        extra = {
            "heads": {k: v for k, v in self.method.state_dict().items() if not k.startswith("backbone.")},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            **state,
        }
        save_checkpoint(self.out, self.encoder, method=self.config.method, extra=extra)


def train(config: TrainConfig, on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainSummary:
    """Train an encoder; checkpoint after every epoch.

    Args:
        config: the run's options.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` after each epoch's checkpoint is
            committed (``epoch`` 1-based; ``row`` the logged stats). An exception raised here
            stops the run with that epoch kept, like an interruption.

    Returns:
        A :class:`TrainSummary`.
    """
    _check_config(config)
    device = config.device or Device.auto()
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    init = _init_module(config)
    preprocessing = _preprocessing(config, init)
    size = preprocessing.size
    views = parse_views(config.views, preprocessing.windows)
    method_cls = METHODS[config.method]

    cache = Path(config.cache) if config.cache else default_cache_path(out, size)
    data = load_hu_dataset(config.archive, preprocessing, cache, workers=config.workers, progress=config.progress)
    # Per item and channel, the (lo, hi) of each view and of the test-time input: each item's
    # own window, exactly as Preprocessing.apply computes it (never a statistic of the batch).
    view_ranges = [data.ranges(v) for v in views[: method_cls.n_views]]
    train_idx, monitor = _split(data, config, data.ranges(preprocessing.windows))
    batches = method_cls.batches(data, train_idx, view_ranges, config)
    plan = Plan(units=len(batches), per_step=batches.per_step, epochs=config.epochs, seed=config.seed, progress=config.progress)

    seed_everything(config.seed)
    arch, backbone = _network(config, preprocessing, init)
    method = build_method(config.method, backbone, int(arch["dim"]), **config.method_options)
    method.to(device.torch).train()
    if config.augment == "archive":
        augment = ArchiveAugment(size).to(device.torch)
    else:
        augment = BatchAugment(size, scale=(config.crop_scale, 1.0), rotation=config.rotation).to(device.torch)
    optimizer, scheduler, scaler = make_optimizer(method, config, plan.total_steps, device)

    history: list[dict] = []
    start_epoch = 0
    cuda = device.torch == "cuda"
    record = _load_resume(out, config)
    if record is not None:
        # The backbone is stored once, as the encoder's state_dict; "heads" holds the rest.
        backbone_state = {f"backbone.{k}": v for k, v in record["state_dict"].items()}
        method.load_state_dict({**record["heads"], **backbone_state})
        if record.get("scaler"):
            scaler.load_state_dict(record["scaler"])
        start_epoch, history = restore(record, optimizer, scheduler, cuda=cuda)

    encoder = init if init is not None else EncoderModule(method.backbone, arch, preprocessing)
    if monitor is not None and start_epoch == 0:
        # Epoch 0: the randomly initialised encoder, the baseline the training must beat.
        history.append({"epoch": 0, **{k: v for k, v in monitor(method.backbone, device).items() if k in MONITOR_KEYS}})
    log_path = out.with_name(out.stem + ".log.jsonl")
    run = _SelfSupervised(config, method, batches, augment, optimizer, scheduler, scaler, device, encoder, monitor, out)
    run_epochs(run, plan, start_epoch=start_epoch, history=history, identity=config.record(), log_path=log_path, cuda=cuda, on_epoch_end=on_epoch_end)

    plot = plot_history(history, out.with_name(out.stem + ".png"), config.monitor_k) if history else None
    return TrainSummary(
        out=str(out),
        method=config.method,
        epochs=config.epochs,
        epochs_run=config.epochs - start_epoch,
        images=run.images_seen,
        steps=run.steps_run,
        seconds=round(run.seconds, 3),
        images_per_s=round(run.images_seen / run.seconds, 2) if run.seconds else 0.0,
        final_loss=history[-1].get("loss", math.nan) if history else math.nan,
        fingerprint=encoder.refresh_fingerprint(),
        preprocessing=preprocessing.to_dict(),
        history=history,
        log=str(log_path),
        plot=str(plot) if plot else None,
    )
