"""Item and source keys as 64-bit hashes: a writer remembers which items and files it has
without keeping their strings."""

from __future__ import annotations

import hashlib


def key_hash(sop_uid: str, frame: int) -> int:
    """64-bit hash of an item key (collision odds ~1e-8 at 1M items: keys need no Python strings)."""
    return int.from_bytes(hashlib.blake2b(f"{sop_uid}\x00{int(frame)}".encode(), digest_size=8).digest(), "little")


def source_hash(source: str) -> int:
    return int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little")
