"""``ItemMeta.study_datetime``: StudyDate + StudyTime, sortable, orders a patient's exams."""

from __future__ import annotations

import pytest

from medcbir.imaging import read_dicom

from .dicomfiles import ct_dataset, hu_phantom, save


@pytest.mark.parametrize(
    "date, time, expected",
    [("20240102", "134501.123", "20240102134501"), ("20240102", None, "20240102000000"), ("20240102", "1345", "20240102134500"), (None, "1200", ""), ("2024", "1200", "")],
)
def test_study_datetime(tmp_path, date, time, expected):
    ds = ct_dataset(hu_phantom(16))
    if date is not None:
        ds.StudyDate = date
    if time is not None:
        ds.StudyTime = time
    [item] = read_dicom(save(ds, tmp_path / "ct.dcm"))
    assert item.meta.study_datetime == expected
