"""The CPU budget of a reproduction: how much phantom, how long each training row, how much explaining.

Every number a reproduction's README states about its budget comes from here, so what ran and
what is written can never disagree. ``DEFAULT`` is a modest run on a 2-core CPU (minutes per
paper); ``TEST`` is the smallest run that still exercises every step (seconds per paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from medcbir.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """What a reproduction may spend.

    Args:
        patients: phantom patients when a phantom archive is generated.
        slices: axial slices per phantom patient (≥ 10: every level label in every series).
        phantom_size: rows = columns of the phantom's slices.
        size: the encoder's input side in pixels.
        batch_size: training images per step.
        epochs: epochs of each training row (the cosine schedule spans them).
        minutes: wall-clock cap of each training row; the run stops after the epoch that
            crosses it and that epoch's checkpoint is evaluated.
        explain_n: images (or query–neighbour pairs) each explanation metric is computed on.
        relax_masks: RELAX masks per image.
        angles: rotation angles of Saranchuk's Dice sweep (degrees).
        seed: seed of the phantom, the training runs and the explanation methods.
    """

    patients: int = 8
    slices: int = 24
    phantom_size: int = 128
    size: int = 64
    batch_size: int = 32
    epochs: int = 12
    minutes: float = 4.0
    explain_n: int = 8
    relax_masks: int = 500
    angles: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 30))
    seed: int = 0

    def check(self) -> "Budget":
        if self.patients < 3:
            raise ConfigError("a reproduction needs at least 3 phantom patients (queries are matched to other patients)")
        if self.slices < 10:
            raise ConfigError("a reproduction needs at least 10 slices per patient (every level label in every series)")
        if self.size < 64:
            raise ConfigError("the encoder input must be at least 64 px (the CAM methods need a feature map larger than 1×1)")
        if self.epochs < 1 or self.minutes <= 0 or self.explain_n < 1 or self.relax_masks < 1:
            raise ConfigError("epochs, minutes, explain_n and relax_masks must be positive")
        return self

    def with_(self, **changes) -> "Budget":
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).check()

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"ResNet-18 at {self.size} px, batch {self.batch_size}, at most {self.epochs} epoch(s) and "
                f"{self.minutes:g} min of wall time per training row (CPU); {self.explain_n} explained image(s)/pair(s), "
                f"RELAX {self.relax_masks} masks")


DEFAULT = Budget()
TEST = Budget(patients=3, slices=10, phantom_size=64, size=64, batch_size=16, epochs=1, minutes=1.0, explain_n=2,
              relax_masks=40, angles=(0.0, 90.0, 180.0, 270.0))
