"""Objects that carry pixels (or none) but are not images for retrieval are skipped as ``not-an-image``."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medcbir.imaging import SKIP_REASONS, SkipFile, read_dicom, walk

from .dicomfiles import ct_dataset, document_dataset, hu_phantom, medcbir_overlay, save, seg_dataset, sr_dataset

DOCUMENTS = {
    "kos": ("1.2.840.10008.5.1.4.1.1.88.59", "KO"),
    "presentation-state": ("1.2.840.10008.5.1.4.1.1.11.1", "PR"),
    "pdf": ("1.2.840.10008.5.1.4.1.1.104.1", "DOC"),
    "rtstruct": ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
}


def _skip(path: Path) -> SkipFile:
    with pytest.raises(SkipFile) as info:
        read_dicom(path)
    return info.value


def test_reason_is_in_the_vocabulary():
    assert "not-an-image" in SKIP_REASONS


def test_dicom_seg_is_skipped_although_pydicom_decodes_its_frames(tmp_path):
    path = save(seg_dataset(), tmp_path / "seg.dcm")
    assert pydicom.dcmread(path).pixel_array.shape == (2, 8, 8)  # pixel data is there and decodable
    skip = _skip(path)
    assert skip.reason == "not-an-image" and "Segmentation" in skip.detail


def test_a_public_seg_file_is_skipped():
    """pydicom's bundled liver SEG (one of the objects that went into an index before)."""
    path = get_testdata_file("liver_1frame.dcm")
    if path is None:
        pytest.skip("pydicom test file liver_1frame.dcm is not available locally")
    assert _skip(Path(path)).reason == "not-an-image"


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_documents_are_skipped(tmp_path, name):
    sop_class, modality = DOCUMENTS[name]
    skip = _skip(save(document_dataset(sop_class, modality), tmp_path / f"{name}.dcm"))
    assert skip.reason == "not-an-image", skip


def test_structured_report_is_not_an_image(tmp_path):
    skip = _skip(save(sr_dataset(), tmp_path / "sr.dcm"))
    assert skip.reason == "not-an-image" and "Basic Text SR" in skip.detail


def test_medcbir_derived_overlay_is_skipped_and_a_scanner_sc_is_not(tmp_path):
    skip = _skip(save(medcbir_overlay(hu_phantom(16)), tmp_path / "overlay.dcm"))
    assert skip.reason == "derived-by-medcbir" and "medcbir" in skip.detail
    plain = medcbir_overlay(hu_phantom(16))
    plain.Manufacturer = "SIEMENS"  # the same Secondary Capture from anyone else is an image
    assert len(read_dicom(save(plain, tmp_path / "sc.dcm"))) == 1


def test_walk_scan_and_index_count_them(tmp_path, capsys):
    from medcbir.cli.main import main

    root = tmp_path / "archive"
    for i in range(2):
        save(ct_dataset(hu_phantom(16, seed=i), instance=i + 1), root / "ct" / f"{i}.dcm")
    save(seg_dataset(), root / "seg" / "seg.dcm")
    save(document_dataset(*DOCUMENTS["kos"]), root / "kos" / "kos.dcm")
    save(medcbir_overlay(hu_phantom(16)), root / "ours" / "overlay.dcm")
    expected = {"not-an-image": 2, "derived-by-medcbir": 1}
    w = walk(root, workers=1)
    assert len(list(w)) == 2 and w.report.skipped == expected
    assert main(["scan", str(root), "--json", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == expected
    from medcbir.indexer import index_archive
    from tests.engine.indexes import make_encoder

    summary = index_archive(root, tmp_path / "index", str(make_encoder(tmp_path / "enc.pt")), workers=1, progress=False)
    assert summary.indexed == 2 and summary.skipped == expected
