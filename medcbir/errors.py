"""Expected failures of medcbir.

Everything raised as a :class:`MedcbirError` is a failure the user can act on; the CLI prints
its message as one line on stderr and exits with status 2. Anything else escaping a command is
a bug and is reported as such (still on one line, with ``--debug`` for the traceback).
"""

from __future__ import annotations


class MedcbirError(Exception):
    """An expected failure with a one-line, user-readable message."""


class ArchiveNotFound(MedcbirError):
    """The archive (folder, file or server) does not exist or cannot be reached."""


class IndexNotFound(MedcbirError):
    """The index folder or its manifest does not exist."""


class IndexCorrupt(MedcbirError):
    """A committed shard, FAISS file or the manifest does not match its checksum or format."""


class EncoderMismatch(MedcbirError):
    """The encoder's fingerprint or preprocessing differs from the one the index was built with."""


class DecodeError(MedcbirError):
    """A query image or file cannot be decoded."""


class ConfigError(MedcbirError):
    """An option, configuration value or combination of them is invalid."""
