"""``medcbir send``: C-STORE an archive to a DICOM node over one association (pynetdicom).

dcmtk's ``storescu`` proposes one transfer-syntax family per run, so an archive that mixes RLE,
JPEG 2000, JPEG-LS and uncompressed files (medcbir's own phantom does) stops at the first file
of another family. Here the files' headers are read first, and one association proposes, for each
SOP class present, one presentation context per transfer syntax actually present plus one for
explicit/implicit VR little endian. Each file goes over the context that carries its own syntax;
a file whose syntax the peer refused is decompressed to explicit VR little endian when its
encoding is lossless (nothing is lost) and sent that way, and is reported otherwise (a lossy
source is never re-encoded behind the user's back).

Example:
    >>> report = send_archive("archive/", Destination.parse("MEDCBIR@127.0.0.1:4242"))
    >>> report.sent, report.failed
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from medcbir.errors import ArchiveNotFound, ConfigError, MedcbirError

#: Transfer syntaxes whose pixel data decode to exactly the stored values.
LOSSLESS = frozenset({
    "1.2.840.10008.1.2",         # implicit VR little endian
    "1.2.840.10008.1.2.1",       # explicit VR little endian
    "1.2.840.10008.1.2.2",       # explicit VR big endian
    "1.2.840.10008.1.2.1.99",    # deflated explicit VR little endian
    "1.2.840.10008.1.2.5",       # RLE lossless
    "1.2.840.10008.1.2.4.57",    # JPEG lossless
    "1.2.840.10008.1.2.4.70",    # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",    # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",    # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.201",   # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",   # HTJ2K lossless RPCL
})
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: DICOM allows at most 128 presentation contexts per association (odd ids 1..255).
MAX_CONTEXTS = 128
#: C-STORE statuses that store the instance (with a warning).
WARNINGS = {0xB000: "coercion of data elements", 0xB007: "data set does not match SOP class",
            0xB006: "elements discarded"}


@dataclass(frozen=True)
class Destination:
    """A DICOM node: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        aet, at, address = str(text).partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and aet and host and port.isdigit()):
            raise ConfigError(f"--to must be AET@HOST:PORT, not {text!r}")
        if len(aet) > 16:
            raise ConfigError(f"the AE title {aet!r} has more than 16 characters")
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"port {port} is not between 1 and 65535")
        return cls(aet, host, int(port))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


@dataclass
class Outgoing:
    """One DICOM file to send: its path, SOP class and transfer syntax (from its header)."""

    path: Path
    sop_class: str
    syntax: str
    lossy_flag: bool = False  # LossyImageCompression "01": decoded values are not the acquired ones

    @property
    def lossless(self) -> bool:
        return self.syntax in LOSSLESS and not self.lossy_flag


@dataclass
class SendReport:
    """What ``send_archive`` did. ``failed`` holds ``(path, reason)`` pairs."""

    destination: str
    files: int = 0
    sent: int = 0
    transcoded: int = 0
    warnings: int = 0
    failed: list = field(default_factory=list)
    not_dicom: int = 0
    contexts: int = 0
    accepted: dict = field(default_factory=dict)   # sop class -> accepted syntaxes
    seconds: float = 0.0

    def reasons(self) -> dict:
        """Failure count per reason."""
        out: dict = {}
        for _, reason in self.failed:
            out[reason] = out.get(reason, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"destination": self.destination, "files": self.files, "sent": self.sent, "transcoded": self.transcoded,
                "warnings": self.warnings, "failed": len(self.failed),
                "failures": [{"file": str(p), "reason": r} for p, r in self.failed],
                "failure_reasons": self.reasons(), "not_dicom": self.not_dicom, "contexts": self.contexts,
                "accepted": {k: sorted(v) for k, v in self.accepted.items()}, "seconds": round(self.seconds, 3)}


def _candidates(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise ArchiveNotFound(f"archive not found: {path}")
    return out


def read_outgoing(paths: Iterable[str | Path]) -> tuple[list[Outgoing], int]:
    """The DICOM files among ``paths`` (folders walked) with their SOP class and syntax, and how
    many files were not DICOM (a DICOMDIR counts as not DICOM: it is no instance to store)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files, other = [], 0
    for path in _candidates(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "LossyImageCompression"])
            meta = ds.file_meta
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
            syntax = str(meta.get("TransferSyntaxUID", ""))
        except (InvalidDicomError, OSError, AttributeError, ValueError, EOFError):
            other += 1
            continue
        if not sop_class or not syntax or sop_class == "1.2.840.10008.1.3.10":  # DICOMDIR (Media Storage Directory)
            other += 1
            continue
        files.append(Outgoing(path, sop_class, syntax, str(ds.get("LossyImageCompression", "")) == "01"))
    return files, other


def requested_contexts(files: list[Outgoing]) -> list[tuple[str, list[str]]]:
    """``(sop class, [transfer syntax])`` per presentation context to propose: one per syntax
    present for each class (the peer accepts or refuses each one on its own), and explicit +
    implicit VR little endian for each class (the fallback that transcoding uses)."""
    wanted: dict[str, list[str]] = {}
    for f in files:
        syntaxes = wanted.setdefault(f.sop_class, [])
        if f.syntax not in syntaxes:
            syntaxes.append(f.syntax)
    contexts = []
    for sop_class in sorted(wanted):
        contexts.extend((sop_class, [syntax]) for syntax in sorted(wanted[sop_class]))
        contexts.append((sop_class, [EXPLICIT_LE, IMPLICIT_LE]))
    if len(contexts) > MAX_CONTEXTS:
        raise ConfigError(f"the archive needs {len(contexts)} presentation contexts (SOP classes × transfer syntaxes); "
                          f"one association carries at most {MAX_CONTEXTS}: send it in parts")
    return contexts


def _status_reason(status) -> str:
    code = int(getattr(status, "Status", -1)) if status is not None else -1
    if status is None or code < 0:
        return "no response (connection lost or timed out)"
    comment = str(status.get("ErrorComment", "")).strip() if hasattr(status, "get") else ""
    return f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")


def send_archive(archive, destination: Destination, *, calling_aet: str = "MEDCBIR-SCU",
                 on_file: Callable[[Outgoing, bool, str], None] | None = None, timeout: float = 30.0) -> SendReport:
    """C-STORE every DICOM file of ``archive`` to ``destination`` over one association.

    Args:
        archive: a folder (walked), a file, or a list of them.
        destination: the peer.
        calling_aet: our AE title (the peer may accept only known ones).
        on_file: called after each file with ``(file, ok, detail)`` (progress).
        timeout: seconds for connecting and for each response.

    Returns:
        The :class:`SendReport`.

    Raises:
        ConfigError: no DICOM file, too many presentation contexts, a bad AE title.
        MedcbirError: the peer cannot be reached or rejects the association.
    """
    import time

    import pydicom
    from pynetdicom import AE

    if not calling_aet or len(calling_aet) > 16:
        raise ConfigError("--calling-aet must have 1 to 16 characters")
    started = time.perf_counter()
    paths = [archive] if isinstance(archive, (str, Path)) else list(archive)
    files, other = read_outgoing(paths)
    report = SendReport(str(destination), files=len(files), not_dicom=other)
    if not files:
        raise ConfigError(f"no DICOM file to send in {', '.join(str(p) for p in paths)}")
    contexts = requested_contexts(files)
    report.contexts = len(contexts)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its errors become our one-line reasons
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise MedcbirError(f"{destination} rejected the association (calling AE title {calling_aet}, called {destination.aet}: "
                               "are both ones the peer accepts?)")
        raise MedcbirError(f"cannot associate with {destination}: no DICOM node answered there, or it aborted "
                           f"(is the port right, and {destination.aet} its AE title?)")
    accepted: dict[str, set] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    report.accepted = accepted
    try:
        for f in files:
            ok, detail = _send_one(assoc, f, accepted.get(f.sop_class, set()), report, pydicom)
            if not ok and report.sent == 0 and (not assoc.is_established or detail.startswith("no response")):
                # refused at the first C-STORE: Orthanc, for one, aborts for an unknown caller here
                raise MedcbirError(f"{destination} aborted the association at the first C-STORE (calling AE title "
                                   f"{calling_aet} from this host: is it one the peer accepts C-STORE from?)")
            if on_file is not None:
                on_file(f, ok, detail)
            if not assoc.is_established:  # the peer went away: the rest cannot be sent
                for rest in files[files.index(f) + 1:]:
                    report.failed.append((rest.path, "association lost"))
                    if on_file is not None:
                        on_file(rest, False, "association lost")
                break
    finally:
        if assoc.is_established:
            assoc.release()
    report.seconds = time.perf_counter() - started
    return report


def _send_one(assoc, f: Outgoing, accepted: set, report: SendReport, pydicom) -> tuple[bool, str]:
    """Send one file as stored, or transcoded to explicit VR little endian; record the outcome."""
    transcode = False
    if f.syntax not in accepted:
        little_endian = accepted & {EXPLICIT_LE, IMPLICIT_LE}
        if not little_endian:
            reason = f"peer accepts no transfer syntax for SOP class {f.sop_class}"
            report.failed.append((f.path, reason))
            return False, reason
        if not f.lossless:
            reason = f"peer refused {_syntax_name(f.syntax)} and the source is lossy: not transcoded"
            report.failed.append((f.path, reason))
            return False, reason
        transcode = True
    try:
        if transcode:
            ds = pydicom.dcmread(f.path)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                # to explicit VR little endian, pixel values unchanged: the same instance, same UID
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = EXPLICIT_LE if EXPLICIT_LE in accepted else IMPLICIT_LE
            status = assoc.send_c_store(ds)
        else:
            status = assoc.send_c_store(os.fspath(f.path))
    except Exception as exc:  # noqa: BLE001 - one bad file is reported, the rest goes on
        reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        report.failed.append((f.path, reason))
        return False, reason
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == 0 or code in WARNINGS:
        report.sent += 1
        report.transcoded += transcode
        report.warnings += code in WARNINGS
        return True, ("transcoded to explicit VR little endian" if transcode else "") + (f"; warning: {WARNINGS[code]}" if code in WARNINGS else "")
    reason = _status_reason(status)
    report.failed.append((f.path, reason))
    return False, reason


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid
