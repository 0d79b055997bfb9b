"""Window policies: which window an input channel uses, by the item's modality.

Hounsfield units exist only in CT. A CT window applied to MR, CR or US pixels maps arbitrary
scanner units onto [0, 1] by accident, so a channel of an encoder is a *policy*: a window per
modality, with ``*`` for "every other modality". The policy is written as one string, the
form stored in checkpoints and fingerprints::

    CT=ct-liver-wide,*=robust       CT through the liver window, anything else normalised
    CT=ct-liver-wide                CT only: any other modality is skipped (modality-mismatch)
    MR=robust,CT=-160:240           MR normalised, CT through a (lo:hi) window in HU

A bare window (the form of checkpoints written before policies existed) reads as the
equivalent policy: a CT window name (``ct-*``) is ``CT=<name>`` (CT only: the old behaviour
on CT, and no more CT windows on MR), a dynamic window (``auto``, ``voi``, ``robust``) or an
explicit (lo, hi) pair applies to every modality.

Example:
    >>> policy = WindowPolicy.parse("CT=ct-liver-wide,*=robust")
    >>> policy.window_for("CT"), policy.window_for("MR")
    ('ct-liver-wide', 'robust')
    >>> WindowPolicy.parse("ct-liver-wide").window_for("MR") is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from medcbir.errors import ConfigError
from medcbir.imaging.windows import DYNAMIC_WINDOWS, WINDOWS, check_window

ANY = "*"


def _parse_window(text: str):
    text = text.strip()
    if text in WINDOWS or text in DYNAMIC_WINDOWS:
        return text
    if ":" in text[1:]:  # "lo:hi", lo may be negative
        cut = text.index(":", 1)
        try:
            window = (float(text[:cut]), float(text[cut + 1 :]))
        except ValueError:
            raise ConfigError(f"bad window {text!r}: use a name or lo:hi") from None
        check_window(window)
        return window
    check_window(text)  # raises with the list of known names
    return text


def _window_text(window) -> str:
    return window if isinstance(window, str) else f"{window[0]:g}:{window[1]:g}"


@dataclass(frozen=True)
class WindowPolicy:
    """A window per modality for one input channel.

    Attributes:
        rules: ``((modality, window), ...)`` in the order written; modality ``"*"`` matches any.
        legacy: the policy was read from a bare window (kept so the record round-trips unchanged).
    """

    rules: tuple
    legacy: object = None

    @classmethod
    def parse(cls, spec) -> "WindowPolicy":
        """Read a policy string, a bare window name, or a (lo, hi) pair.

        Raises:
            ConfigError: unknown window, empty policy, or a modality given twice.
        """
        if isinstance(spec, WindowPolicy):
            return spec
        if not isinstance(spec, str):  # a (lo, hi) pair
            check_window(spec)
            window = tuple(float(v) for v in spec)
            return cls(((ANY, window),), legacy=window)
        text = spec.strip()
        if "=" not in text:
            window = _parse_window(text)
            if isinstance(window, str) and window in WINDOWS:
                return cls((("CT", window),), legacy=window)
            return cls(((ANY, window),), legacy=window)
        rules, seen = [], set()
        for part in text.split(","):
            if not part.strip():
                continue
            modality, sep, window = part.partition("=")
            modality = modality.strip().upper()
            if not sep or not modality or not window.strip():
                raise ConfigError(f"bad window policy {spec!r}: write MODALITY=WINDOW[,...] (e.g. CT=ct-liver-wide,*=robust)")
            if modality in seen:
                raise ConfigError(f"window policy {spec!r} names {modality} twice")
            seen.add(modality)
            rules.append((modality, _parse_window(window)))
        if not rules:
            raise ConfigError(f"empty window policy {spec!r}")
        return cls(tuple(rules))

    def window_for(self, modality: str):
        """The window for a modality, or None when the policy does not cover it."""
        modality = (modality or "").strip().upper()
        fallback = None
        for rule_modality, window in self.rules:
            if rule_modality == modality:
                return window
            if rule_modality == ANY:
                fallback = window
        return fallback

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.rules)

    @property
    def covers_all(self) -> bool:
        return ANY in self.modalities

    def record(self):
        """The value stored in checkpoints: the bare window for a legacy policy, else the string."""
        if self.legacy is not None:
            return self.legacy if isinstance(self.legacy, str) else list(self.legacy)
        return str(self)

    def __str__(self) -> str:
        return ",".join(f"{m}={_window_text(w)}" for m, w in self.rules)
