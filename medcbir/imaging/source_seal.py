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

The root itself is recorded sealed too (:meth:`SourceSeal.root_record`, under its own
associated data, so a root record never opens as a file record): an archive folder may be the
patient's own (``<PatientID>_<PatientName>/``). Indexes written before that recorded the
plain root; :meth:`SourceSeal.from_record` opens both.

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
_ROOT_CONTEXT = b"medcbir archive root v1"


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

    @classmethod
    def from_record(cls, key: bytes, recorded_root: str) -> "SourceSeal":
        """The seal of an index whose manifest records ``recorded_root``: a
        :meth:`root_record`, or the plain absolute root older indexes kept.

        Raises:
            ValueError: a sealed root that does not open under ``key`` (another key, damaged).
        """
        recorded_root = str(recorded_root)
        if not is_sealed(recorded_root):
            return cls(key, recorded_root)
        seal = cls(key, "/")
        root = seal._decrypt(recorded_root, _ROOT_CONTEXT)
        if root is None:
            raise ValueError("the recorded archive root does not open with this key")
        seal.root = Path(root)
        return seal

    def root_record(self) -> str:
        """The archive root as the manifest records it (sealed: it may name the patient)."""
        return self._encrypt(str(self.root), _ROOT_CONTEXT)

    def contains(self, path: str | Path) -> bool:
        """True when ``path`` lies in the archive root's folder tree."""
        return Path(os.path.abspath(path)).is_relative_to(self.root)

    def _encrypt(self, text: str, context: bytes) -> str:
        token = self._siv.encrypt(text.encode("utf-8"), [context])
        return PREFIX + base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    def _decrypt(self, recorded: str, context: bytes) -> str | None:
        data = recorded[len(PREFIX):]
        try:
            return self._siv.decrypt(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), [context]).decode("utf-8")
        except (InvalidTag, ValueError):
            return None

    def seal(self, path: str | Path) -> str:
        """The record of a file: ``sealed:`` + base64url(AES-SIV(path relative to the root))."""
        return self._encrypt(os.path.relpath(os.path.abspath(path), self.root), _CONTEXT)

    def open(self, recorded: str) -> str:
        """The absolute path of a sealed record; any other record is returned as it is.

        A record sealed under another key (or damaged) is also returned as it is: it then names
        no readable file, and whoever reads it gets the usual "not a local file" error.
        """
        recorded = str(recorded)
        if not is_sealed(recorded):
            return recorded
        relative = self._decrypt(recorded, _CONTEXT)
        return recorded if relative is None else os.path.normpath(self.root / relative)
