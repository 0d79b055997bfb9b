"""Hostile request bodies for the plugin's REST routes: decode bombs, deep JSON, odd encodings.

Shared by the hostile-request tests, the REST fuzz test and ``benchmarks/rest_fuzz.py``. The
DICOM bombs are real files written with pydicom whose *header* promises an expensive decode
(a 16384² RLE image is 8 MB on the wire and 512 MiB decoded; 300,000 frames of 1×1 pixels are
600 KB); the JSON bodies are what a browser page or a script could post.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import struct

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

#: an id with Orthanc's format that no Orthanc holds (a 404, not a 400)
UNKNOWN_ID = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"


def _dataset(rows: int, cols: int, frames: int, tsyntax: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "HOSTILE"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    return ds


def _bytes(ds: FileDataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rle_bomb(size: int = 16384) -> bytes:
    """One ``size``² 16-bit frame in RLE Lossless, every run the longest RLE allows (128 bytes
    in 2): 8 MB for 16384², which decodes to 512 MiB (+ 1 GiB as float32)."""
    segment = b"\x81\x00" * (size * size // 128)  # -127 → repeat the next byte 128 times
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds = _dataset(size, size, 1, RLELossless)
    ds.PixelData = encapsulate([header + segment + segment])
    return _bytes(ds)


def many_frames(frames: int = 300_000) -> bytes:
    """``frames`` native frames of 1×1 pixel (2 bytes each): 600 KB for 300,000 frames."""
    ds = _dataset(1, 1, frames, ExplicitVRLittleEndian)
    ds.PixelData = (np.arange(frames, dtype=np.uint16) % 4096).tobytes()
    return _bytes(ds)


def lying_rle(size: int = 65535) -> bytes:
    """A few hundred bytes whose header promises one ``size``² RLE frame (8 GiB decoded)."""
    ds = _dataset(size, size, 1, RLELossless)
    ds.PixelData = encapsulate([struct.pack("<16I", 2, 64, 66, *([0] * 13)) + b"\x81\x00\x81\x00"])
    return _bytes(ds)


def lying_frames(frames: int = 10**6) -> bytes:
    """A few hundred bytes whose header promises ``frames`` frames (their pixel data is missing)."""
    ds = _dataset(1, 1, frames, ExplicitVRLittleEndian)
    ds.PixelData = b"\0\0"
    return _bytes(ds)


def corrupt_rle(size: int = 16) -> bytes:
    """A small RLE file whose segments are garbage: it passes every header check and fails in
    the decoder (so the error comes from the engine's decode)."""
    ds = _dataset(size, size, 1, RLELossless)
    ds.PixelData = encapsulate([struct.pack("<16I", 2, 64, 70, *([0] * 13)) + b"\x05\x01\x02" * 2])
    return _bytes(ds)


def small_ct(size: int = 32, frames: int = 1, seed: int = 0) -> bytes:
    """An ordinary small CT file (native), a valid query."""
    ds = _dataset(size, size, frames, ExplicitVRLittleEndian)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 2000, size=(frames, size, size), dtype=np.uint16).tobytes()
    return _bytes(ds)


def nested(depth: int, key: str = "k") -> bytes:
    """``{"k": [[[...]]]}`` nested ``depth`` levels (the crash of a deep ``json.loads``)."""
    return ('{"%s":' % key + "[" * depth + "]" * depth + "}").encode()


# --- the fuzz corpus ---------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
DICOM = {"Content-Type": "application/dicom"}
HUGE_NUMBERS = [2**64, 18446744073709551616, -(2**63) - 1, 10**400, "9" * 5000, 1e308, -1e308, 0.5, -0.0, True,
                None, "NaN", "Infinity", "-1", "0x10", "1e9", " 7 ", "٣", "\u00bd"]
KEYS = ["k", "seed", "n_masks", "per_series", "instance", "instances", "dicom", "exclude", "modality", "format", "method",
        "pairwise", "store", "prior", "group_by", "include_self", "kos_other_patients", "op", "args", "timeout", "__proto__"]
VALUES = HUGE_NUMBERS + ["", "x" * 10000, [], {}, [UNKNOWN_ID] * 3, {"$gt": 1}, "../../system", UNKNOWN_ID,
                         UNKNOWN_ID.upper(), "\x00", "CT\x00", "é" * 50, [[[]]], [None], [1.5], 3]


class Corpus:
    """A deterministic stream of hostile ``(route, body, headers)`` triples.

    Args:
        seed: the random seed (the same seed gives the same bodies).
        bombs: decode-bomb bodies to mix in (e.g. :func:`rle_bomb` output); they are large, so
            the caller builds them once.
    """

    def __init__(self, seed: int = 0, bombs: list[bytes] | None = None) -> None:
        self.rng = random.Random(seed)
        self.bombs = list(bombs or [])
        self.valid = small_ct(16)
        self.kinds = [self.deep, self.numbers, self.wrong_types, self.encodings, self.random_bytes,
                      self.truncated_dicom, self.content_types, self.headers, self.origins, self.bomb]

    def __iter__(self):
        for _, triple in self.labelled():
            yield triple

    def labelled(self):
        """``(kind, (route, body, headers))`` pairs, ``kind`` naming the generator."""
        while True:
            kind = self.rng.choice(self.kinds)
            yield kind.__name__, kind()

    def route(self) -> str:
        return self.rng.choice(["search", "search", "explain", "reindex", "status", "nope"])

    def deep(self):
        depth = self.rng.choice([40, 100, 700, 5000, 100_000])
        opener = self.rng.choice(["[", "{\"a\":", "[{\"a\":"])
        body = ('{"k":' + opener * depth).encode()
        if self.rng.random() < 0.5:  # closed properly, or not at all
            closer = {"[": "]", "{\"a\":": "}", "[{\"a\":": "}]"}[opener]
            body += (closer * depth + "}").encode()
        return self.route(), body, JSON

    def numbers(self):
        body = {"instance": UNKNOWN_ID, self.rng.choice(["k", "seed", "n_masks", "per_series"]): self.rng.choice(HUGE_NUMBERS)}
        text = json.dumps(body)
        if self.rng.random() < 0.3:  # numbers json.dumps would not write
            text = text.replace("}", ', "k": %s}' % self.rng.choice(["1e99999", "-1e99999", "NaN", "1" * 6000, "0.0000001e-400"]))
        return self.rng.choice(["search", "explain"]), text.encode(), JSON

    def wrong_types(self):
        body = {self.rng.choice(KEYS): self.rng.choice(VALUES) for _ in range(self.rng.randint(1, 4))}
        if self.rng.random() < 0.1:
            body = self.rng.choice([[], "text", 7, None, [{"instance": UNKNOWN_ID}]])
        return self.route(), json.dumps(body).encode(), JSON

    def encodings(self):
        text = json.dumps({"instance": UNKNOWN_ID, "k": 3})
        body = self.rng.choice([
            text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"), b"\xef\xbb\xbf" + text.encode(),
            text.encode()[:-1] + b"\xff\xfe}", text.encode().replace(b"3", b"\x003"), b"\x00" * 64, b"{\"k\": \"\xc3\x28\"}",
            text.encode("latin-1") + b"\xe9", b"{\"instance\": \"\\ud800\"}", b"{" + b"\"a\":1," * 2000 + b"\"k\":1}",
        ])
        return self.rng.choice(["search", "explain"]), body, JSON

    def random_bytes(self):
        body = self.rng.randbytes(self.rng.choice([1, 16, 300, 5000]))
        return self.route(), body, self.rng.choice([JSON, DICOM])

    def truncated_dicom(self):
        cut = self.rng.randint(1, len(self.valid) - 1)
        data = bytearray(self.valid[:cut])
        for _ in range(self.rng.randint(0, 3)):  # and a few flipped bytes
            if data:
                data[self.rng.randrange(len(data))] ^= 0xFF
        if self.rng.random() < 0.3:
            return "search", json.dumps({"dicom": base64.b64encode(bytes(data)).decode()}).encode(), JSON
        return self.rng.choice(["search", "explain"]), bytes(data), DICOM

    def content_types(self):
        kind = self.rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                "application/json-patch", "", "application/dicom+json", "text/json"])
        return self.rng.choice(["search", "explain"]), json.dumps({"instance": UNKNOWN_ID}).encode(), {"Content-Type": kind}

    def headers(self):
        big = self.rng.choice(["1" * 6000, "x" * 3000, "-5", "50000000", "\u00e9".encode().decode("latin-1"), "true, false"])
        header = self.rng.choice(["X-Medcbir-K", "X-Medcbir-Exclude", "X-Medcbir-Modality", "X-Medcbir-Format", "X-Medcbir-Prior"])
        return "search", self.valid, {**DICOM, header: big}

    def origins(self):
        origin = self.rng.choice(["https://evil.example", "null", "http://127.0.0.1:1", "file://", "x" * 200])
        return "search", json.dumps({"instance": UNKNOWN_ID}).encode(), {**JSON, "Origin": origin}

    def bomb(self):
        if not self.bombs:
            return self.random_bytes()
        data = self.rng.choice(self.bombs)
        if self.rng.random() < 0.2:
            return "search", json.dumps({"dicom": base64.b64encode(data).decode()}).encode(), JSON
        if self.rng.random() < 0.5:
            return "search", data, DICOM
        # a bomb that is refused costs nothing; one answered (its first frame) is explained with
        # the cheapest method, so that the fuzz measures refusals, not explanations
        return "explain", data, {**DICOM, "X-Medcbir-Method": "gradcam", "X-Medcbir-K": "1", "X-Medcbir-Format": "json"}


# --- watching the worker -----------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def explain_processes(worker_pid: int) -> list[int]:
    """The worker's explanation process(es): its ``multiprocessing`` children that are not the
    resource tracker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker_pid and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found
