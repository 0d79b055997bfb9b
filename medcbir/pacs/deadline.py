"""How long the worker may still work for one request.

The plugin waits ``SearchTimeout`` seconds for the worker's answer, then answers 503 and closes
its connection: work past that point is thrown away. Each request therefore carries a
:class:`Deadline` (the plugin's timeout from the moment it arrived, and a test of whether the
plugin's connection is gone), which the worker checks between the steps of a search and while an
explanation waits or runs, so abandoned work stops instead of holding the CPU and the engine.
"""

from __future__ import annotations

import time
from typing import Callable

from medcbir.errors import MedcbirError


class DeadlinePassed(MedcbirError):
    """The request's time is up or its caller went away (answered 503 if anyone still listens)."""


class Deadline:
    """The end of one request's time.

    Args:
        seconds: how long the caller waits from now.
        gone: returns True once the caller has hung up (default: never).
    """

    def __init__(self, seconds: float, gone: Callable[[], bool] | None = None) -> None:
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds
        self._gone = gone or (lambda: False)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def gone(self) -> bool:
        try:
            return bool(self._gone())
        except (OSError, ValueError):  # the connection is already closed on our side
            return True

    def expired(self) -> bool:
        return self.remaining() <= 0 or self.gone()

    def check(self, doing: str) -> None:
        """Raise :class:`DeadlinePassed` (naming what was being done) once the time is up."""
        if self.remaining() <= 0:
            raise DeadlinePassed(f"stopped {doing}: the request took longer than its {self.seconds:g} s (the server's SearchTimeout)")
        if self.gone():
            raise DeadlinePassed(f"stopped {doing}: the caller went away")
