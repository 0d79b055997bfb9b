"""Training data: the archive decoded once, per item exactly as at search time, cached in HDF5.

Windowing is part of the augmentation (the two SimSiam views may use different Hounsfield
windows), so the trainer keeps modality units, not windowed images. The archive is walked once
(:func:`medcbir.imaging.walk`, worker processes); every item goes through the encoder's own
geometry (``Preprocessing.geometry``: body crop, physical scale, resize, padding that is dark
after inversion) and its own window context (``WindowContext``: modality, the file's VOI,
MONOCHROME1, its percentile and foreground ranges). A channel's (lo, hi) is therefore the one
``Preprocessing.apply`` computes for that very item, never a statistic of the batch, and the
trainer's un-augmented view of an item equals its search-time input (tested item by item).
Items the encoder's window policy does not cover are left out (``modality-mismatch``, counted).

Pixels are stored as float32 after a per-item affine map onto about [0, 1] (the item's own
0.5/99.5 % range, kept in ``/affine``); :meth:`HUDataset.pixels` maps them back to modality
units. float16 was tried and is not enough: a narrow foreground window on raw MR values in the
thousands turned its rounding into errors of 4e-3 after windowing.

Cache layout (one file, written to a temporary name and renamed)::

    /hu                       N×S×S float32, (modality units after the geometry − offset) / scale
    /affine                   N×2 float64 (offset, scale) per item
    /meta/sop_instance_uid    N strings
    /meta/frame               N int32
    /meta/patient             N strings (keyed pseudonym with a per-build key, study UID if none)
    /meta/series              N strings (series UID)
    /meta/position            N float64 (slice position in mm, NaN if unknown)
    /context/modality         N strings
    /context/voi              N×2 float64 (centre, width; NaN if none)
    /context/inverted         N bool
    /context/percentile       N×2 float64
    /context/robust           N×2 float64
    attrs: format, version, size, geometry (JSON), signature (of the archive's file list), archive

Example:
    >>> data = load_hu_dataset("archive/", Preprocessing(size=128))        # doctest: +SKIP
    >>> data.hu.shape, data.hu.dtype
    (torch.Size([80, 1, 128, 128]), torch.float16)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.fsutil import atomic_path
from medcbir.imaging import Preprocessing, list_files, read_dicom
from medcbir.imaging.items import SkipFile
from medcbir.imaging.labels import read_labels
from medcbir.imaging.policy import WindowPolicy
from medcbir.imaging.preprocess import WindowContext

CACHE_FORMAT = "medcbir-hu-cache"
CACHE_VERSION = 3


@dataclass
class HUDataset:
    """Preprocessed-geometry images of an archive in modality units, with their window contexts.

    Attributes:
        hu: N×1×S×S float32 tensor, per item (modality units − offset) / scale; use :meth:`pixels`.
        sop_instance_uid: N strings.
        frame: N ints.
        patient: N patient groups (keyed pseudonyms), for patient-disjoint splits.
        size: S.
        contexts: N :class:`~medcbir.imaging.preprocess.WindowContext` (per-item window inputs).
        series: N series UIDs.
        position: N slice positions in mm along each slice's normal (NaN if unknown).
        plane: N slice planes (``axial``, ``coronal``, ``sagittal``, ``oblique``, ``""``).
        skipped: files left out by reason (e.g. ``modality-mismatch``).
    """

    hu: torch.Tensor
    sop_instance_uid: np.ndarray
    frame: np.ndarray
    patient: np.ndarray
    size: int
    contexts: list = field(default_factory=list)
    series: np.ndarray | None = None
    position: np.ndarray | None = None
    skipped: dict = field(default_factory=dict)
    affine: torch.Tensor | None = None
    plane: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def pixels(self, index=None) -> torch.Tensor:
        """B×1×S×S float32 in modality units (HU for CT) of the items ``index`` (default all)."""
        hu = self.hu if index is None else self.hu[index]
        if self.affine is None:
            return hu.float()
        affine = self.affine if index is None else self.affine[index]
        return hu.float() * affine[:, 1, None, None, None] + affine[:, 0, None, None, None]

    def ranges(self, policies, index=None) -> torch.Tensor:
        """(lo, hi) per item and channel for window policies: a N×C×2 float32 tensor.

        Args:
            policies: one window policy (or window) per channel.
            index: items to compute (default all).

        Raises:
            ConfigError: a policy does not cover an item's modality.
        """
        policies = [WindowPolicy.parse(p) for p in policies]
        rows = range(len(self)) if index is None else np.asarray(index).tolist()
        out = np.empty((len(rows), len(policies), 2), dtype=np.float64)
        for r, i in enumerate(rows):
            ctx = self.contexts[i]
            for c, policy in enumerate(policies):
                window = policy.window_for(ctx.modality)
                if window is None:
                    raise ConfigError(f"window policy {policy} does not cover modality {ctx.modality!r} of a training item")
                out[r, c] = ctx.range(window)
        return torch.from_numpy(out.astype(np.float32))

    @property
    def inverted(self) -> torch.Tensor:
        """N bool tensor: MONOCHROME1 items."""
        return torch.tensor([ctx.inverted for ctx in self.contexts], dtype=torch.bool)

    def labels(self, labels_csv: str | Path) -> np.ndarray:
        """Per item, its label from ``labels.csv`` (``sop_instance_uid,frame,label``), "" if absent."""
        table = read_labels(labels_csv).by_item()
        return np.array([table.get((s, int(f)), "") for s, f in zip(self.sop_instance_uid, self.frame)], dtype=object)


def archive_signature(archive: str | Path) -> str:
    """sha256 of the archive's file list (relative path, size, mtime): changes when files do."""
    root = Path(archive).resolve()  # list_files yields absolute paths
    h = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    for path in list_files(root):
        st = path.stat()
        h.update(f"{path.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _geometry_record(preprocessing) -> str:
    record = preprocessing.to_dict()
    record.pop("windows", None)
    return json.dumps(record, sort_keys=True)


def _as_geometry(size_or_preprocessing):
    if isinstance(size_or_preprocessing, Preprocessing):
        return size_or_preprocessing
    return Preprocessing(windows=("ct-liver-wide",), size=int(size_or_preprocessing))


def _decode_items(archive: Path, preprocessing, key: bytes, workers: int, progress: bool):
    """(item, context) for each frame of the archive, per-item geometry; skipped files counted."""
    skipped: dict[str, int] = {}
    paths = list(list_files(archive))
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="decoding archive", unit="file")
    out = []
    for path in paths:
        try:
            items = read_dicom(path, key=key)
            for item in items:
                preprocessing.channel_windows(item)  # modality-mismatch before any work
                context = WindowContext.of(item)
                out.append((item.meta, preprocessing.geometry(item, context), context, item.plane))
        except SkipFile as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # noqa: BLE001 - a degenerate image is skipped, as in the walk
            skipped["corrupt"] = skipped.get("corrupt", 0) + 1
    return out, skipped


def build_hu_cache(archive: str | Path, cache: str | Path, size, *, workers: int = 0, progress: bool = False) -> Path:
    """Walk the archive once and write the cache atomically.

    Args:
        archive: DICOM folder (or file).
        cache: destination ``.h5``.
        size: the encoder's :class:`~medcbir.imaging.Preprocessing` (its geometry and window
            policies), or an int side for the legacy whole-image CT recipe.
        workers: unused (kept for compatibility; decoding is in-process so every item's
            context is computed with the item at hand).
        progress: show a progress bar.

    Raises:
        ArchiveNotFound: no archive, or nothing decodable in it.
    """
    import h5py

    preprocessing = _as_geometry(size)
    archive, cache = Path(archive), Path(cache)
    if not archive.exists():
        raise ArchiveNotFound(f"archive not found: {archive}")
    signature = archive_signature(archive)
    # A per-build random key: pseudonyms only need to group slices of one patient here.
    key = os.urandom(32)
    decoded, skipped = _decode_items(archive, preprocessing, key, workers, progress)
    if not decoded:
        what = f" (skipped: {', '.join(f'{r} {n}' for r, n in sorted(skipped.items()))})" if skipped else ""
        raise ArchiveNotFound(f"no usable images in {archive}{what}")
    s = preprocessing.size
    strings = h5py.string_dtype()
    nan2 = (math.nan, math.nan)
    contexts = [c for _, _, c, _ in decoded]
    affine = np.array([(c.percentile_range[0], c.percentile_range[1] - c.percentile_range[0]) for c in contexts], dtype=np.float64)
    with atomic_path(cache) as tmp, h5py.File(tmp, "w") as f:
        scaled = [((g - a[0]) / a[1]).astype(np.float32) for (_, g, _, _), a in zip(decoded, affine)]
        f.create_dataset("hu", data=np.stack(scaled), chunks=(1, s, s))
        f.create_dataset("affine", data=affine)
        metas = [m for m, _, _, _ in decoded]
        f.create_dataset("meta/sop_instance_uid", data=np.array([m.sop_instance_uid for m in metas], dtype=object), dtype=strings)
        f.create_dataset("meta/frame", data=np.array([m.frame for m in metas], dtype=np.int32))
        f.create_dataset("meta/patient", data=np.array([m.patient_pseudonym or m.study_instance_uid for m in metas], dtype=object), dtype=strings)
        f.create_dataset("meta/series", data=np.array([m.series_instance_uid for m in metas], dtype=object), dtype=strings)
        f.create_dataset("meta/position", data=np.array([m.slice_position for m in metas], dtype=np.float64))
        f.create_dataset("meta/plane", data=np.array([p for _, _, _, p in decoded], dtype=object), dtype=strings)
        f.create_dataset("context/modality", data=np.array([c.modality for c in contexts], dtype=object), dtype=strings)
        f.create_dataset("context/voi", data=np.array([c.voi if c.voi is not None else nan2 for c in contexts], dtype=np.float64))
        f.create_dataset("context/inverted", data=np.array([c.inverted for c in contexts], dtype=bool))
        f.create_dataset("context/percentile", data=np.array([c.percentile_range for c in contexts], dtype=np.float64))
        f.create_dataset("context/robust", data=np.array([c.robust_range for c in contexts], dtype=np.float64))
        f.attrs.update(
            format=CACHE_FORMAT, version=CACHE_VERSION, size=s, geometry=_geometry_record(preprocessing),
            signature=signature, archive=str(archive.resolve()), skipped=json.dumps(skipped, sort_keys=True),
        )
    return cache


def _cache_is_current(cache: Path, archive: Path, preprocessing) -> bool:
    import h5py

    try:
        with h5py.File(cache, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return False
    return (
        attrs.get("format") == CACHE_FORMAT
        and int(attrs.get("version", 0)) == CACHE_VERSION
        and int(attrs.get("size", -1)) == preprocessing.size
        and attrs.get("geometry") == _geometry_record(preprocessing)
        and attrs.get("signature") == archive_signature(archive)
    )


def default_cache_path(out: str | Path, size: int) -> Path:
    """The cache next to a checkpoint: ``CKPT.hu<size>.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.hu{size}.h5")


def _strings(values) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else s for s in values], dtype=object)


def load_hu_dataset(
    archive: str | Path, size, cache: str | Path | None = None, *, workers: int = 0, progress: bool = False
) -> HUDataset:
    """The archive as preprocessed-geometry tensors with window contexts, from the cache when current.

    Args:
        archive: DICOM folder.
        size: the encoder's :class:`~medcbir.imaging.Preprocessing`, or an int side (legacy
            whole-image CT recipe).
        cache: HDF5 cache path (None = a temporary build, not kept).
        workers: decoding workers for a (re)build.
        progress: progress bar for a (re)build.
    """
    import h5py

    preprocessing = _as_geometry(size)
    archive = Path(archive)
    if not archive.exists():
        raise ArchiveNotFound(f"archive not found: {archive}")
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="medcbir-hu-") as tmp:
            return load_hu_dataset(archive, preprocessing, Path(tmp) / "hu.h5", workers=workers, progress=progress)
    cache = Path(cache)
    if not (cache.is_file() and _cache_is_current(cache, archive, preprocessing)):
        build_hu_cache(archive, cache, preprocessing, workers=workers, progress=progress)
    with h5py.File(cache, "r") as f:
        hu = torch.from_numpy(f["hu"][...]).unsqueeze(1)
        affine = torch.from_numpy(f["affine"][...].astype(np.float32))
        sops = _strings(f["meta/sop_instance_uid"][...])
        frames = f["meta/frame"][...].astype(np.int64)
        patients = _strings(f["meta/patient"][...])
        series = _strings(f["meta/series"][...])
        position = f["meta/position"][...].astype(np.float64)
        plane = _strings(f["meta/plane"][...])
        modality = _strings(f["context/modality"][...])
        voi = f["context/voi"][...]
        inverted = f["context/inverted"][...]
        percentile = f["context/percentile"][...]
        robust = f["context/robust"][...]
        skipped = json.loads(f.attrs.get("skipped", "{}"))
    contexts = [
        WindowContext(
            modality=str(modality[i]),
            voi=None if np.isnan(voi[i]).any() else (float(voi[i, 0]), float(voi[i, 1])),
            inverted=bool(inverted[i]),
            percentile_range=(float(percentile[i, 0]), float(percentile[i, 1])),
            robust_range=(float(robust[i, 0]), float(robust[i, 1])),
        )
        for i in range(len(sops))
    ]
    return HUDataset(
        hu=hu, sop_instance_uid=sops, frame=frames, patient=patients, size=preprocessing.size,
        contexts=contexts, series=series, position=position, skipped=skipped, affine=affine, plane=plane,
    )


def patient_split(patients: np.ndarray, holdout: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patient-disjoint train/held-out split.

    Args:
        patients: per-item patient group, in the archive's walk order.
        holdout: fraction of *patients* held out (at least one, and at least one kept).
        seed: which patients: a seeded permutation of the patients in order of first
            appearance, so the split depends on the seed and the archive only, not on the
            (per-build, random-keyed) pseudonyms.

    Returns:
        ``(train_index, heldout_index)`` int arrays of item indices.

    Raises:
        ConfigError: fewer than two patients.
    """
    _, first = np.unique(np.asarray(patients, dtype=object).astype(str), return_index=True)
    unique = np.asarray(patients, dtype=object)[np.sort(first)]
    if len(unique) < 2:
        raise ConfigError(f"a patient-disjoint split needs at least 2 patients; the archive has {len(unique)}")
    n_out = min(len(unique) - 1, max(1, round(holdout * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    held = set(unique[order[:n_out]].tolist())
    mask = np.array([p in held for p in patients.tolist()], dtype=bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
