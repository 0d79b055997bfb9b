"""Fuzz: ≥ 1,000 mutated DICOM files through the walk with 2 workers.

Truncations, flipped bytes, wrong element lengths, bogus transfer syntax UIDs and absurd
Rows/Columns/NumberOfFrames, on small real files in several transfer syntaxes. Nothing may
crash or hang, and every file is counted as decoded or skipped (with a known reason).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from medcbir.imaging import SKIP_REASONS, walk

from .dicomfiles import ct_dataset, hu_phantom, mr_monochrome1, rgb_dataset, save

N_FILES = 1100
SEED = 20261123
PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
ROWS_TAG_LE = b"\x28\x00\x10\x00"


def _seeds(folder: Path) -> list[bytes]:
    hu = hu_phantom(32, seed=5)
    datasets = [
        ct_dataset(hu, tsyntax=ExplicitVRLittleEndian),
        ct_dataset(hu, intercept=0.0, signed=True, tsyntax=ImplicitVRLittleEndian),
        ct_dataset(hu, tsyntax=RLELossless),
        ct_dataset(hu, intercept=0.0, signed=True, tsyntax=JPEG2000Lossless),
        ct_dataset(hu, tsyntax=DeflatedExplicitVRLittleEndian),
        mr_monochrome1(32),
        rgb_dataset(32)[0],
    ]
    return [save(ds, folder / f"seed{i}.dcm").read_bytes() for i, ds in enumerate(datasets)]


def _huge(folder: Path, rng: np.random.Generator) -> bytes:
    ds = ct_dataset(hu_phantom(32, seed=6), tsyntax=[ExplicitVRLittleEndian, RLELossless][int(rng.integers(2))])
    ds.Rows = int(rng.choice([0, 1, 31, 33, 4096, 40000, 65535]))
    ds.Columns = int(rng.choice([0, 1, 32, 4096, 65535]))
    if rng.random() < 0.5:
        ds.NumberOfFrames = int(rng.choice([0, 2, 1000, 2**31 - 1]))
    path = folder / "tmp-huge.dcm"
    data = save(ds, path).read_bytes()
    path.unlink()
    return data


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    if len(buf) < 256:  # already cut short by an earlier mutation: cut again
        return bytes(buf[: int(rng.integers(0, len(buf) + 1))])
    kind = rng.integers(5)
    if kind == 0:  # truncation anywhere, including inside the header
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    if kind == 1:  # flipped bytes (more often after the preamble, where they matter)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(128, len(buf)))
            buf[pos] ^= int(rng.integers(1, 256))
        return bytes(buf)
    if kind == 2:  # wrong length of Pixel Data or of Rows
        tag = PIXEL_TAG_LE if rng.random() < 0.6 else ROWS_TAG_LE
        pos = buf.find(tag)
        if pos < 0:
            pos = int(rng.integers(132, len(buf) - 8))
        length = int(rng.choice([0, 1, 3, 0xFFFFFFFF, 0x7FFFFFFF, int(rng.integers(0, 1 << 32))]))
        width = 4 if buf[pos + 4 : pos + 6] in (b"OB", b"OW") or rng.random() < 0.5 else 2
        offset = pos + (8 if buf[pos + 4 : pos + 6] in (b"OB", b"OW") else 4)
        buf[offset : offset + width] = (length & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        return bytes(buf)
    if kind == 3:  # bogus transfer syntax UID (same or different length)
        pos = buf.find(b"1.2.840.10008.1.2")
        if pos < 0:
            return bytes(buf)
        end = pos
        while end < len(buf) and buf[end] in b"0123456789.":
            end += 1
        bogus = ("1.2." + ".".join(str(int(v)) for v in rng.integers(0, 99999, size=int(rng.integers(1, 5))))).encode()
        if rng.random() < 0.5:
            bogus = (bogus * 4)[: end - pos]
        return bytes(buf[:pos] + bogus + buf[end:])
    # several flips plus a truncation
    for _ in range(int(rng.integers(1, 30))):
        pos = int(rng.integers(0, len(buf)))
        buf[pos] = int(rng.integers(0, 256))
    return bytes(buf[: int(rng.integers(len(buf) // 2, len(buf) + 1))])


def write_corpus(folder: Path, n: int, seed: int = SEED) -> Path:
    """``n`` mutated files in ``folder/files`` (also used by ``benchmarks/fuzz.py`` at 10,000)."""
    seeds = _seeds(folder / "seeds")
    rng = np.random.default_rng(seed)
    out = folder / "files"
    out.mkdir()
    for i in range(n):
        if i % 20 == 0:
            data = _huge(folder, rng)
        else:
            data = _mutate(seeds[i % len(seeds)], rng)
            if rng.random() < 0.2:
                data = _mutate(data, rng)
        (out / f"{i:05d}").write_bytes(data)
    return out


@pytest.fixture(scope="module")
def fuzz_archive(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("fuzz"), N_FILES)


def test_fuzzed_files_never_crash_or_hang_the_walk(fuzz_archive, tmp_path):
    seen = []
    t0 = time.monotonic()
    w = walk(fuzz_archive, workers=2, timeout=10.0, quarantine=tmp_path / "q.log", on_file=lambda p, n, r: seen.append(r))
    n_items = 0
    for decoded in w:
        n_items += 1
        assert decoded.image.dtype == np.float32
        assert decoded.image.shape == (decoded.meta.rows, decoded.meta.cols)
    elapsed = time.monotonic() - t0
    report = w.report
    assert report.files == N_FILES == len(seen)
    assert report.decoded_files + sum(report.skipped.values()) == N_FILES
    assert report.items == n_items
    assert set(report.skipped) <= set(SKIP_REASONS)
    # the corpus really exercises both sides and several reasons
    assert report.decoded_files > 50 and sum(report.skipped.values()) > 300
    assert {"truncated", "too-large", "not-dicom"} <= set(report.skipped), report.skipped
    assert len((tmp_path / "q.log").read_text().splitlines()) == sum(report.skipped.values())
    print(f"\nfuzz: {N_FILES} files in {elapsed:.1f} s, {report.decoded_files} decoded, skipped {report.skipped}")
    assert elapsed < 90, f"fuzz walk took {elapsed:.0f} s (target < 40 s)"
