"""Whether an encoder is the one an index was built with, and how encoders are named in messages.

An index records its encoder's fingerprint (:mod:`medcbir.encoders.fingerprint`) and
preprocessing; any other encoder is refused, naming both. No torch here: the check reads the
``fingerprint`` and ``preprocessing`` of whatever encoder object it is given.

Example:
    >>> describe("abc123def4567890", {"windows": ["ct-liver-wide"], "size": 224})
    'abc123def456 (ct-liver-wide, 224 px)'
"""

from __future__ import annotations

import json
from typing import Any

from medcbir.errors import EncoderMismatch


def describe(fingerprint: str, preprocessing: Any) -> str:
    """``"abc123def456 (ct-liver-wide, 224 px)"``: how an encoder is named in messages."""
    record = preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else dict(preprocessing or {})
    windows = record.get("windows")
    size = record.get("size")
    if windows is None or size is None:
        what = json.dumps(record, sort_keys=True)
    else:
        names = [w if isinstance(w, str) else ":".join(f"{v:g}" for v in w) for w in ([windows] if isinstance(windows, str) else windows)]
        what = f"{'+'.join(names)}, {size} px"
        if record.get("crop", "none") != "none":
            what += ", body crop" + (f" at {record['spacing']:g} mm/px" if record.get("spacing") else "")
    return f"{str(fingerprint)[:12]} ({what})"


def check_compatible(encoder: Any, fingerprint: str, preprocessing: Any) -> None:
    """Refuse an encoder that differs from the one an index was built with.

    Args:
        encoder: an :class:`~medcbir.encoders.runtime.Encoder` or
            :class:`~medcbir.encoders.module.EncoderModule`.
        fingerprint: the fingerprint recorded in the index.
        preprocessing: the preprocessing recorded in the index (dict or ``Preprocessing``).

    Raises:
        EncoderMismatch: e.g. ``index built with encoder abc123 (ct-liver-wide, 224 px);
            this encoder is def456 (ct-lung, 128 px)``.
    """
    if encoder.fingerprint == fingerprint:
        return
    raise EncoderMismatch(
        f"index built with encoder {describe(fingerprint, preprocessing)}; "
        f"this encoder is {describe(encoder.fingerprint, encoder.preprocessing)} "
        "(open it with the encoder it was built with, or re-index into a new folder with this one)"
    )
