"""Search results as DICOM Key Object Selection documents (``medcbir search --dicom-out``)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.dicom_validate import dciodvfy_errors
from tests.explain.indexes import query_file


def _references(kos) -> list[str]:
    return [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in kos.ContentSequence if item.ValueType == "IMAGE"]


def _evidence(kos) -> dict[str, tuple[str, str, str]]:
    out = {}
    for study in kos.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            for sop in series.ReferencedSOPSequence:
                out[sop.ReferencedSOPInstanceUID] = (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPClassUID)
    return out


def _search_json(index, query, tmp_path, capsys, *extra) -> tuple[list[dict], list[Path]]:
    from medcbir.cli.main import main

    out = tmp_path / "kos"
    assert main(["search", str(index), str(query), "-k", "5", "--json", "--dicom-out", str(out), *extra]) == 0
    answer = json.loads(capsys.readouterr().out)
    return answer[0]["neighbours"], sorted(out.glob("*.dcm"))


def test_kos_references_query_and_neighbours_in_rank_order_and_validates(flat_index, phantom_archive, tmp_path, capsys):
    query = query_file(phantom_archive, patient=1, slice_no=10)
    neighbours, files = _search_json(flat_index, query, tmp_path, capsys, "--per-series", "0")
    assert len(files) == 1
    assert dciodvfy_errors(files[0]) == []
    kos = pydicom.dcmread(files[0])
    q = pydicom.dcmread(query, stop_before_pixels=True)
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and kos.Modality == "KO"
    assert (kos.PatientID, kos.PatientName, kos.StudyInstanceUID) == (q.PatientID, q.PatientName, q.StudyInstanceUID)
    assert kos.Manufacturer == "medcbir" and kos.ConceptNameCodeSequence[0].CodeValue == "113000"
    assert kos.SeriesInstanceUID != q.SeriesInstanceUID
    # query first, then the neighbours exactly in the order the search answered them
    assert _references(kos) == [q.SOPInstanceUID] + [n["sop_instance_uid"] for n in neighbours]
    evidence = _evidence(kos)
    for n in neighbours:
        header = pydicom.dcmread(n["source"], stop_before_pixels=True)
        assert evidence[n["sop_instance_uid"]] == (n["study_instance_uid"], n["series_instance_uid"], header.SOPClassUID)
    assert evidence[q.SOPInstanceUID] == (q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPClassUID)
    [text] = [item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT"]
    from medcbir.indexer import IndexStore

    store = IndexStore.open(flat_index)
    fingerprint = store.encoder_info["fingerprint"]
    store.close()
    assert len(fingerprint) >= 16 and text.startswith(f"similar images (medcbir, encoder {fingerprint})")
    assert kos.SeriesDescription == f"similar images (medcbir, encoder {fingerprint[:30]})"
    for n in neighbours:
        assert f"rank {n['rank']}: score {n['score']:.6f} sop {n['sop_instance_uid']}" in text


def test_other_patients_are_referenced_only_when_allowed(flat_index, phantom_archive, tmp_path, capsys):
    query = query_file(phantom_archive, patient=1, slice_no=10)
    q = pydicom.dcmread(query, stop_before_pixels=True)
    neighbours, [allowed] = _search_json(flat_index, query, tmp_path / "a", capsys, "-k", "12", "--per-series", "0")
    patients = {n["sop_instance_uid"]: pydicom.dcmread(n["source"], stop_before_pixels=True).PatientID for n in neighbours}
    others = {uid for uid, pid in patients.items() if pid != q.PatientID}
    own = {uid for uid, pid in patients.items() if pid == q.PatientID}
    assert others and own, "the test needs neighbours of both kinds"
    assert others | own <= set(_references(pydicom.dcmread(allowed)))
    _, [same] = _search_json(flat_index, query, tmp_path / "s", capsys, "-k", "12", "--per-series", "0", "--kos-same-patient")
    kos = pydicom.dcmread(same)
    assert dciodvfy_errors(same) == []
    refs = set(_references(kos))
    assert refs == own | {q.SOPInstanceUID} and not refs & others
    assert not set(_evidence(kos)) & others
    [text] = [item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT"]
    assert f"{len(others)} neighbour(s) of other patients withheld" in text


def test_dicom_out_refuses_case_search(flat_index, phantom_archive, tmp_path, capsys):
    from medcbir.cli.main import main

    code = main(["search", str(flat_index), str(query_file(phantom_archive)), "--group-by", "study", "--dicom-out", str(tmp_path)])
    assert code != 0 and "--dicom-out" in capsys.readouterr().err


def test_written_kos_is_skipped_as_derived(flat_index, phantom_archive, tmp_path, capsys):
    from medcbir.imaging import SkipFile, read_dicom

    _, [kos] = _search_json(flat_index, query_file(phantom_archive), tmp_path, capsys)
    with pytest.raises(SkipFile) as info:
        read_dicom(kos)
    assert info.value.reason == "derived-by-medcbir"
