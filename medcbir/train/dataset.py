"""Training data: the archive decoded once into resized Hounsfield tensors, cached in HDF5.

Windowing is part of the augmentation (the two SimSiam views use different windows), so the
trainer needs modality units, not windowed images. The archive is walked once
(:func:`medcbir.imaging.walk`, worker processes), every frame resized in HU with
``Preprocessing.resize`` (aspect kept, padded with the image minimum; the same resize the
test-time ``Preprocessing.apply`` does) and stored as float16 (±0.5 HU at 1000 HU, well below
what any window resolves) in an HDF5 cache. Later runs, and every epoch, read the cache.

Cache layout (one file, written to a temporary name and renamed)::

    /hu                       N×S×S float16, HU
    /meta/sop_instance_uid    N strings
    /meta/frame               N int32
    /meta/patient             N strings (keyed pseudonym, study UID if none)
    attrs: format, version, size, signature (of the archive's file list), archive

Example:
    >>> data = load_hu_dataset("archive/", size=128)        # doctest: +SKIP
    >>> data.hu.shape, data.hu.dtype
    (torch.Size([80, 1, 128, 128]), torch.float16)
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.fsutil import atomic_path

CACHE_FORMAT = "medcbir-hu-cache"
CACHE_VERSION = 1


@dataclass
class HUDataset:
    """Resized HU images of an archive with the keys needed to split and label them.

    Attributes:
        hu: N×1×S×S float16 tensor in Hounsfield units.
        sop_instance_uid: N strings.
        frame: N ints.
        patient: N patient groups (keyed pseudonyms), for patient-disjoint splits.
        size: S.
    """

    hu: torch.Tensor
    sop_instance_uid: np.ndarray
    frame: np.ndarray
    patient: np.ndarray
    size: int

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def labels(self, labels_csv: str | Path) -> np.ndarray:
        """Per item, its label from ``labels.csv`` (``sop_instance_uid,frame,label``), "" if absent."""
        table = read_labels(labels_csv)
        return np.array([table.get((s, int(f)), "") for s, f in zip(self.sop_instance_uid, self.frame)], dtype=object)


def read_labels(labels_csv: str | Path) -> dict[tuple[str, int], str]:
    """``{(sop_instance_uid, frame): label}`` from a labels CSV.

    Raises:
        ConfigError: missing file or missing columns.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"sop_instance_uid", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path} lacks column(s) {', '.join(sorted(missing))} (want sop_instance_uid,frame,label)")
        return {(row["sop_instance_uid"], int(row.get("frame") or 0)): row["label"] for row in reader}


def archive_signature(archive: str | Path) -> str:
    """sha256 of the archive's file list (relative path, size, mtime): changes when files do."""
    from medcbir.imaging import list_files

    root = Path(archive).resolve()  # list_files yields absolute paths
    h = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    for path in list_files(root):
        st = path.stat()
        h.update(f"{path.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resize_hu(pixels: np.ndarray, size: int) -> np.ndarray:
    from medcbir.imaging import Preprocessing

    return Preprocessing(windows=("ct-liver-wide",), size=size).resize(pixels)


def build_hu_cache(archive: str | Path, cache: str | Path, size: int, *, workers: int = 0, progress: bool = False) -> Path:
    """Walk the archive once and write the HU cache atomically.

    Args:
        archive: DICOM folder (or file).
        cache: destination ``.h5``.
        size: side of the resized images.
        workers: decoding worker processes (0 = auto).
        progress: show a progress bar.

    Raises:
        ArchiveNotFound: no archive, or nothing decodable in it.
    """
    import h5py

    from medcbir.imaging import walk

    archive, cache = Path(archive), Path(cache)
    if not archive.exists():
        raise ArchiveNotFound(f"archive not found: {archive}")
    signature = archive_signature(archive)
    # A per-build random key: pseudonyms only need to group slices of one patient here.
    key = os.urandom(32)
    images, sops, frames, patients = [], [], [], []
    iterator = walk(archive, preprocessing=None, workers=workers, key=key)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="decoding archive", unit="img")
    for meta, pixels in iterator:
        images.append(_resize_hu(pixels, size).astype(np.float16))
        sops.append(meta.sop_instance_uid)
        frames.append(meta.frame)
        patients.append(meta.patient_pseudonym or meta.study_instance_uid)
    if not images:
        raise ArchiveNotFound(f"no decodable images in {archive}")
    with atomic_path(cache) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("hu", data=np.stack(images), chunks=(1, size, size))
        strings = h5py.string_dtype()
        f.create_dataset("meta/sop_instance_uid", data=np.array(sops, dtype=object), dtype=strings)
        f.create_dataset("meta/frame", data=np.array(frames, dtype=np.int32))
        f.create_dataset("meta/patient", data=np.array(patients, dtype=object), dtype=strings)
        f.attrs.update(format=CACHE_FORMAT, version=CACHE_VERSION, size=size, signature=signature, archive=str(archive.resolve()))
    return cache


def _cache_is_current(cache: Path, archive: Path, size: int) -> bool:
    import h5py

    try:
        with h5py.File(cache, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return False
    return (
        attrs.get("format") == CACHE_FORMAT
        and int(attrs.get("version", 0)) == CACHE_VERSION
        and int(attrs.get("size", -1)) == size
        and attrs.get("signature") == archive_signature(archive)
    )


def default_cache_path(out: str | Path, size: int) -> Path:
    """The HU cache next to a checkpoint: ``CKPT.hu<size>.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.hu{size}.h5")


def load_hu_dataset(
    archive: str | Path, size: int, cache: str | Path | None = None, *, workers: int = 0, progress: bool = False
) -> HUDataset:
    """The archive as resized HU tensors, from the cache when it is current.

    Args:
        archive: DICOM folder.
        size: image side.
        cache: HDF5 cache path (None = a temporary build, not kept).
        workers: decoding workers for a (re)build.
        progress: progress bar for a (re)build.
    """
    import h5py

    archive = Path(archive)
    if not archive.exists():
        raise ArchiveNotFound(f"archive not found: {archive}")
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="medcbir-hu-") as tmp:
            return load_hu_dataset(archive, size, Path(tmp) / "hu.h5", workers=workers, progress=progress)
    cache = Path(cache)
    if not (cache.is_file() and _cache_is_current(cache, archive, size)):
        build_hu_cache(archive, cache, size, workers=workers, progress=progress)
    with h5py.File(cache, "r") as f:
        hu = torch.from_numpy(f["hu"][...]).unsqueeze(1)
        sops = np.array([s.decode() if isinstance(s, bytes) else s for s in f["meta/sop_instance_uid"][...]], dtype=object)
        frames = f["meta/frame"][...].astype(np.int64)
        patients = np.array([s.decode() if isinstance(s, bytes) else s for s in f["meta/patient"][...]], dtype=object)
    return HUDataset(hu=hu, sop_instance_uid=sops, frame=frames, patient=patients, size=size)


def patient_split(patients: np.ndarray, holdout: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patient-disjoint train/held-out split.

    Args:
        patients: per-item patient group.
        holdout: fraction of *patients* held out (at least one, and at least one kept).
        seed: which patients (a seeded permutation of the sorted patient list).

    Returns:
        ``(train_index, heldout_index)`` int arrays of item indices.

    Raises:
        ConfigError: fewer than two patients.
    """
    unique = np.array(sorted(set(patients.tolist())), dtype=object)
    if len(unique) < 2:
        raise ConfigError(f"a patient-disjoint split needs at least 2 patients; the archive has {len(unique)}")
    n_out = min(len(unique) - 1, max(1, round(holdout * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    held = set(unique[order[:n_out]].tolist())
    mask = np.array([p in held for p in patients.tolist()], dtype=bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
