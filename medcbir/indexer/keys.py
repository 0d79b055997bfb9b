"""Item and source keys as 64-bit hashes: a writer remembers which items and files it has
without keeping their strings."""

from __future__ import annotations

import hashlib

import numpy as np


def key_hash(sop_uid: str, frame: int) -> int:
    """64-bit hash of an item key (collision odds ~1e-8 at 1M items: keys need no Python strings)."""
    return int.from_bytes(hashlib.blake2b(f"{sop_uid}\x00{int(frame)}".encode(), digest_size=8).digest(), "little")


def source_hash(source: str) -> int:
    return int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little")


def key_hashes(sop_uids, frames) -> np.ndarray:
    """uint64 :func:`key_hash` of each (SOP UID, frame); UIDs as ``str`` or UTF-8 ``bytes``."""
    return np.fromiter((key_hash(u.decode("utf-8") if isinstance(u, bytes) else str(u), int(f)) for u, f in zip(sop_uids, frames)),
                       dtype=np.uint64, count=len(frames))


def source_hashes(sources) -> np.ndarray:
    """uint64 :func:`source_hash` of each recorded source (``str`` or UTF-8 ``bytes``; empty → 0)."""
    return np.fromiter((source_hash(s.decode("utf-8") if isinstance(s, bytes) else str(s)) if len(s) else 0 for s in sources),
                       dtype=np.uint64, count=len(sources))


class HashSet:
    """A set of 64-bit hashes held as a sorted uint64 array (8 bytes each) plus recent changes,
    for the keys of every committed item of a large index (a Python set spends tens of bytes on
    each int). Arrays added in bulk are merged once, when the set is next read."""

    #: recent single additions merged into the array past this many
    FOLD = 65_536

    def __init__(self) -> None:
        self._base = np.zeros(0, dtype=np.uint64)
        self._bulk: list[np.ndarray] = []  # arrays added, not merged yet
        self._added: set[int] = set()  # not in _base
        self._removed: set[int] = set()  # in _base

    def _settle(self) -> None:
        if self._bulk:
            self._fold(np.concatenate(self._bulk))
            self._bulk = []

    def _in_base(self, h: int) -> bool:
        base = self._base
        if not len(base):
            return False
        i = int(np.searchsorted(base, np.uint64(h)))
        return i < len(base) and int(base[i]) == h

    def __contains__(self, h) -> bool:
        self._settle()
        h = int(h)
        if h in self._added:
            return True
        return h not in self._removed and self._in_base(h)

    def __len__(self) -> int:
        self._settle()
        return len(self._base) - len(self._removed) + len(self._added)

    def __iter__(self):
        self._settle()
        removed = self._removed
        yield from (int(h) for h in self._base if not removed or int(h) not in removed)
        yield from self._added

    def to_array(self) -> np.ndarray:
        """Every hash of the set as a sorted uint64 array (no per-element Python loop)."""
        self._fold(np.concatenate([*self._bulk, np.zeros(0, dtype=np.uint64)]))
        self._bulk = []
        return self._base.copy()

    def update(self, hashes) -> None:
        """Add hashes (an iterable of ints, or a uint64 array: merged in bulk)."""
        if isinstance(hashes, np.ndarray):
            self._bulk.append(np.asarray(hashes, dtype=np.uint64).reshape(-1))
            return
        self._settle()
        for h in hashes:
            h = int(h)
            if h in self._removed:
                self._removed.discard(h)
            elif not self._in_base(h):
                self._added.add(h)
        if len(self._added) > self.FOLD:
            self._fold(np.zeros(0, dtype=np.uint64))

    def __ior__(self, hashes) -> "HashSet":
        self.update(hashes)
        return self

    def _fold(self, more: np.ndarray) -> None:
        """Merge the recent changes and ``more`` into the sorted array."""
        base = self._base
        if self._removed:
            gone = np.sort(np.fromiter(self._removed, dtype=np.uint64, count=len(self._removed)))
            at = np.clip(np.searchsorted(gone, base), 0, len(gone) - 1)
            base = base[gone[at] != base]
        merged = np.sort(np.concatenate([base, np.fromiter(self._added, dtype=np.uint64, count=len(self._added)), more]))
        if len(merged) > 1:
            merged = merged[np.concatenate([[True], merged[1:] != merged[:-1]])]
        self._base = merged
        self._added, self._removed = set(), set()

    def difference_update(self, hashes) -> None:
        self._settle()
        for h in hashes:
            h = int(h)
            if h in self._added:
                self._added.discard(h)
            elif self._in_base(h):
                self._removed.add(h)
