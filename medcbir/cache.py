"""Where medcbir caches what it can recreate (built-in encoder weights, ONNX copies for explanations).

``$MEDCBIR_CACHE`` when set, else ``~/.cache/medcbir``. Anything in it may be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MEDCBIR_CACHE`` or ``~/.cache/medcbir``."""
    env = os.environ.get("MEDCBIR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medcbir"
