"""The epoch loop every training run shares: seeded batch order, steps, checkpoint, log, resume.

A run (:mod:`medcbir.train.trainer`'s self-supervised methods, :mod:`medcbir.train.finetune`'s
WILDCAT head) is a :class:`Task`: it makes one optimisation step from the indices of a batch,
turns an epoch's losses into a history row and saves its checkpoint. The loop owns what they
have in common:

- the batch order: a permutation of the task's units seeded by (seed, epoch), cut into
  ``per_step`` units per step, the last partial batch dropped (batch norm and contrastive
  losses want full ones);
- the non-finite loss check, the progress bar, the per-epoch JSONL log and ``on_epoch_end``;
- the resume state (optimiser, scheduler, epoch, run identity, history and the torch/numpy/
  python RNG states captured at the end of each epoch), so an interrupted run resumed from its
  checkpoint produces exactly the weights of an uninterrupted one (on CPU);
- the optimiser recipe: SGD with momentum 0.9 and weight decay 1e-4, a per-step cosine schedule
  to zero.

Example:
    >>> plan = Plan(units=10, per_step=4, epochs=2, seed=0)
    >>> plan.steps_per_epoch, plan.total_steps
    (2, 4)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from medcbir.encoders.checkpoint import read_checkpoint
from medcbir.errors import ConfigError
from medcbir.train.monitor import write_jsonl

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


# --------------------------------------------------------------------------- RNG state
def rng_state(cuda: bool = False) -> dict:
    """torch / numpy / python RNG states, in types that load with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(py_state), py_gauss],
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, cuda: bool = False) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if cuda and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------- optimiser
def sgd_cosine(params: Iterable, lr: float, total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum 0.9, weight decay 1e-4) and its per-step cosine schedule to zero.

    ``params`` may be parameter groups with their own ``lr``.
    """
    optimizer = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


# --------------------------------------------------------------------------- resume
def resume_record(out: Path, resume: bool, identity: dict, keys: Iterable[str], refusal: Callable[[dict], str | None]) -> dict | None:
    """The checkpoint at ``out`` to continue from, or None to start afresh.

    Args:
        out: the run's checkpoint.
        resume: continue from ``out`` if it exists.
        identity: this run's options (``config`` of the checkpoint).
        keys: the options that must match the saved ones.
        refusal: the reason a checkpoint cannot be resumed (it is not this kind of run), or None.
    """
    if not (resume and out.is_file()):
        return None
    record = read_checkpoint(out)
    reason = refusal(record)
    if reason:
        raise ConfigError(f"{out} {reason}")
    saved = record.get("config", {})
    different = [k for k in keys if saved.get(k) != identity.get(k)]
    if different:
        what = ", ".join(f"{k} {saved.get(k)!r} → {identity.get(k)!r}" for k in different)
        raise ConfigError(f"cannot resume {out}: the run changed ({what}); use another --out or the same options")
    return record


# --------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Plan:
    """How the loop walks a run: ``units`` things to order (images, runs of slices), ``per_step`` per step.

    Args:
        units: how many units one epoch permutes.
        per_step: units per optimisation step.
        epochs: total epochs of the run.
        seed: the run's seed (the batch order of epoch ``e`` is seeded by ``seed·100003 + e``).
        progress: show a progress bar per epoch.
    """

    units: int
    per_step: int
    epochs: int
    seed: int
    progress: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.units // self.per_step)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.units, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))


class Task(Protocol):
    """What a training run gives the loop."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def begin_epoch(self, epoch: int) -> None:
        """Put the modules in training mode (``epoch`` 0-based)."""

    def step(self, picked: torch.Tensor, epoch: int, step: int) -> float:
        """One optimisation step on the units at positions ``picked``; the loss."""

    def end_epoch(self, epoch: int, losses: list[float], seconds: float) -> dict:
        """The epoch's history row (``epoch`` 1-based); ``seconds`` is the time its steps took."""

    def save(self, state: dict) -> None:
        """Commit the checkpoint; ``state`` is the resume state the loop keeps (add the task's own)."""


def restore(record: dict, optimizer, scheduler, cuda: bool = False) -> tuple[int, list[dict]]:
    """Load the loop's resume state from a checkpoint record: (epochs done, history)."""
    optimizer.load_state_dict(record["optimizer"])
    scheduler.load_state_dict(record["scheduler"])
    set_rng_state(record["rng"], cuda=cuda)
    return int(record["epoch"]), list(record.get("history", []))


def run_epochs(
    task: Task,
    plan: Plan,
    *,
    start_epoch: int,
    history: list[dict],
    identity: dict,
    log_path: Path,
    cuda: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Run epochs ``start_epoch`` … ``plan.epochs - 1``; checkpoint and log after each.

    Args:
        task: the run.
        plan: units, batch size, epochs, seed.
        start_epoch: epochs already done (a resumed run).
        history: the rows so far (extended in place).
        identity: the run's options, saved as the checkpoint's ``config``.
        log_path: the JSONL log, rewritten with the whole history after each epoch.
        cuda: also save the CUDA RNG states.
        on_epoch_end: called as ``on_epoch_end(epoch, row)`` after each epoch's checkpoint is
            committed (``epoch`` 1-based); an exception raised here stops the run with that
            epoch kept, like an interruption.

    Returns:
        ``history``.
    """
    steps = plan.steps_per_epoch
    for epoch in range(start_epoch, plan.epochs):
        task.begin_epoch(epoch)
        order = plan.order(epoch)
        losses: list[float] = []
        bar = progress_bar(plan.progress, steps, f"epoch {epoch + 1}/{plan.epochs}")
        t0 = time.perf_counter()
        for step in range(steps):
            loss = task.step(order[step * plan.per_step : (step + 1) * plan.per_step], epoch, step)
            if not math.isfinite(loss):
                raise ConfigError(f"loss became {loss} at epoch {epoch + 1} step {step + 1}; lower --lr")
            losses.append(loss)
            if bar is not None:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{(step + 1) * plan.per_step / max(elapsed, 1e-9):.1f}")
                bar.update(1)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        row = task.end_epoch(epoch + 1, losses, seconds)
        history.append(row)
        task.save(
            {
                "optimizer": task.optimizer.state_dict(),
                "scheduler": task.scheduler.state_dict(),
                "epoch": epoch + 1,
                "rng": rng_state(cuda=cuda),
                "config": identity,
                "history": history,
            }
        )
        write_jsonl(history, log_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return history


def progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
