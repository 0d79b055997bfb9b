"""The built-in encoder names (no file behind them), recognised without loading torch.

``default`` (the ``classic`` descriptor with the default preprocessing), ``default-v2`` (the
default of medcbir 0.2 before ``classic`` replaced it: the seed-0 random ResNet-18 with GeM
pooling), ``default-v1`` (the default of medcbir 0.1, for indexes built with it), ``random`` /
``random:SEED``, ``thumbnail`` / ``thumbnail:N``, ``hog`` and ``classic``. What each name builds
is :func:`medcbir.encoders.builtin.builtin_encoder_module`.

Example:
    >>> is_builtin("thumbnail:16"), is_builtin("random:x"), is_builtin("enc.pt")
    (True, False, False)
"""

from __future__ import annotations

from typing import Any

from medcbir.encoders.architecture import CLASSIC_BACKBONES

DEFAULT_ENCODER = "default"
#: The default encoder of medcbir 0.1 (CT liver window on every modality, whole image); indexes
#: built with it keep opening (:func:`medcbir.encoders.runtime.open_for_index`).
LEGACY_DEFAULT = "default-v1"
#: The default of medcbir 0.2 before the classical descriptor replaced it: the seed-0 random
#: ResNet-18 with GeM pooling and the default preprocessing (it retrieved worse than thumbnail:16
#: on real MR: README, "The default encoder").
PREVIOUS_DEFAULT = "default-v2"
#: What ``default`` is: the weightless thumbnail + HOG descriptor (README, "The default encoder").
DEFAULT_DESCRIPTOR = "classic"
#: Built-in names that take a parameter after a colon (``random:SEED``, ``thumbnail:N``).
PARAMETRISED = ("random", "thumbnail")


def is_builtin(name: Any) -> bool:
    """True for a built-in encoder name (no file behind it)."""
    if not isinstance(name, str):
        return False
    base, sep, arg = name.partition(":")
    if name in (DEFAULT_ENCODER, PREVIOUS_DEFAULT, LEGACY_DEFAULT, *CLASSIC_BACKBONES):
        return True
    return base in PARAMETRISED and (not sep or arg.isdigit())
