"""The HU cache (real HDF5, real DICOM) and the patient-disjoint split."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.imaging import Preprocessing, read_dicom
from medcbir.imaging.labels import read_labels
from medcbir.train.dataset import load_hu_dataset, patient_split


def _dicoms(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".csv", ".h5", ".json"))


def test_cache_is_built_once_reused_and_rebuilt_when_the_archive_changes(phantom_archive, tmp_path):
    archive = tmp_path / "archive"
    files = _dicoms(phantom_archive)[:6]
    for f in files:
        (archive / f.relative_to(phantom_archive)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, archive / f.relative_to(phantom_archive))
    cache = tmp_path / "hu.h5"
    data = load_hu_dataset(archive, 48, cache, workers=1)
    assert len(data) == 6 and data.hu.shape == (6, 1, 48, 48)
    with h5py.File(cache) as f:
        assert f["hu"].dtype == np.float32 and f.attrs["size"] == 48
    # The stored HU are the items' resized modality values (an independent decode of the file).
    item = read_dicom(files[0])[0]
    row = list(data.sop_instance_uid).index(item.meta.sop_instance_uid)
    expected = Preprocessing(("ct-liver-wide",), 48).resize(item.pixels)
    np.testing.assert_allclose(data.pixels()[row, 0].numpy(), expected, atol=1e-2)
    stamp = cache.stat().st_mtime_ns
    again = load_hu_dataset(archive, 48, cache, workers=1)
    assert cache.stat().st_mtime_ns == stamp and np.array_equal(again.hu.numpy(), data.hu.numpy())
    os.unlink(archive / files[-1].relative_to(phantom_archive))
    fewer = load_hu_dataset(archive, 48, cache, workers=1)
    assert len(fewer) == 5 and cache.stat().st_mtime_ns != stamp
    # Every slice of one patient shares one group.
    assert len(set(fewer.patient.tolist())) == 1


def test_patient_split_is_disjoint_and_seeded():
    patients = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 2, dtype=object)
    train, held = patient_split(patients, 0.25, seed=0)
    assert set(patients[train]).isdisjoint(patients[held])
    assert len(set(patients[held])) == 1 and len(train) + len(held) == len(patients)
    assert np.array_equal(patient_split(patients, 0.25, seed=0)[1], held)
    with pytest.raises(ConfigError, match="at least 2 patients"):
        patient_split(np.array(["a", "a"], dtype=object))


def test_labels_and_missing_inputs(phantom_archive, tmp_path):
    labels = read_labels(phantom_archive / "labels.csv").by_item()
    assert len(labels) == 80 and set(labels.values()) == {"thorax", "liver-dome", "liver-kidney", "kidney", "pelvis"}
    with pytest.raises(ConfigError, match="does not exist"):
        read_labels(tmp_path / "nope.csv")
    with pytest.raises(ArchiveNotFound):
        load_hu_dataset(tmp_path / "nowhere", 64, tmp_path / "c.h5")
