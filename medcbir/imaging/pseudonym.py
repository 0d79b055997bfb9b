"""Patient pseudonyms: a keyed hash of PatientID, the key a per-archive secret file.

The same PatientID gives the same pseudonym under one key (so "exclude same patient" works),
and unrelated pseudonyms under another key (so two sites cannot join their indexes on it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medcbir.errors import ConfigError

KEY_BYTES = 32
PSEUDONYM_HEX = 32


def load_or_create_key(path: str | Path) -> bytes:
    """Read the archive's pseudonym key, creating it (32 random bytes, mode 0600) if missing.

    Args:
        path: key file; its folder is created if needed.

    Returns:
        The key bytes.

    Raises:
        ConfigError: the file exists but is not a key written by this function.
    """
    path = Path(path)
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ConfigError(f"pseudonym key {path} has {len(key)} bytes, expected {KEY_BYTES}")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    # O_EXCL + 0600 from the start: the secret is never world-readable, and two processes
    # creating the key at once cannot silently end up with different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)
    return key


def pseudonym(patient_id: str, key: bytes) -> str:
    """Hex HMAC-SHA256 of ``patient_id`` under ``key``, first 32 hex characters.

    Args:
        patient_id: the raw PatientID (surrounding spaces ignored).
        key: the archive key from :func:`load_or_create_key`.
    """
    digest = hmac.new(key, str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX]
