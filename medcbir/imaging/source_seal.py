"""Where an item's file is, recorded without the patient identifiers its path may carry.

Archive folders are often named after the patient (``<PatientID>_<PatientName>/...``), so a
plain ``source`` column would put the PatientID back into the index next to its keyed
pseudonym. An item indexed from a folder therefore records its path *relative to the archive
root*, sealed with AES-SIV under a key derived from the archive's pseudonym key:

- deterministic (the same file always gives the same record, so a re-run skips what is
  committed without decoding it) and authenticated (a record from another key does not open);
- whoever holds the key (the local user running ``search``/``explain``) gets the absolute path
  back with :meth:`SourceSeal.open`; the shards, the manifest and the quarantine log alone
  reveal no folder or file name.

URIs (``orthanc://<id>``, DICOMweb URLs) name no patient and are recorded as they are.

Example:
    >>> seal = SourceSeal(b"k" * 32, "/archive")
    >>> record = seal.seal("/archive/P001_DOE^JANE/1.dcm")
    >>> record.startswith("sealed:") and "P001" not in record
    True
    >>> seal.open(record)
    '/archive/P001_DOE^JANE/1.dcm'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

PREFIX = "sealed:"
_CONTEXT = b"medcbir source seal v1"


def is_sealed(recorded: str) -> bool:
    """True for a record written by :meth:`SourceSeal.seal`."""
    return str(recorded).startswith(PREFIX)


class SourceSeal:
    """Seal file paths relative to an archive root, and open them again.

    Args:
        key: the archive's pseudonym key (32 bytes); the sealing key is derived from it, so
            the pseudonym key itself is never used for two purposes.
        root: the archive root the paths are recorded relative to.
    """

    def __init__(self, key: bytes, root: str | Path) -> None:
        # AES-256-SIV takes a 512-bit key: HMAC-SHA512 of a fixed context under the archive key.
        self._siv = AESSIV(hmac.new(bytes(key), _CONTEXT, hashlib.sha512).digest())
        self.root = Path(os.path.abspath(root))

    def seal(self, path: str | Path) -> str:
        """The record of a file: ``sealed:`` + base64url(AES-SIV(path relative to the root))."""
        relative = os.path.relpath(os.path.abspath(path), self.root)
        token = self._siv.encrypt(relative.encode("utf-8"), [_CONTEXT])
        return PREFIX + base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    def open(self, recorded: str) -> str:
        """The absolute path of a sealed record; any other record is returned as it is.

        A record sealed under another key (or damaged) is also returned as it is: it then names
        no readable file, and whoever reads it gets the usual "not a local file" error.
        """
        recorded = str(recorded)
        if not is_sealed(recorded):
            return recorded
        data = recorded[len(PREFIX):]
        try:
            relative = self._siv.decrypt(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), [_CONTEXT])
        except (InvalidTag, ValueError):
            return recorded
        return os.path.normpath(self.root / relative.decode("utf-8"))
