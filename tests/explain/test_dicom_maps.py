"""Explanations as DICOM (``medcbir explain --dicom-out``): Secondary Capture overlays and Parametric Maps."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from tests.dicom_validate import dciodvfy_errors
from tests.explain.indexes import query_file


@pytest.fixture(scope="module")
def written(explain_index, phantom_archive, tmp_path_factory):
    """(CLI JSON answer, query path, {SOPClassUID: [datasets]}, files) of one gradcam explanation, k=2."""
    from click.testing import CliRunner

    from medcbir.cli.main import cli

    out = tmp_path_factory.mktemp("dicom-maps")
    query = query_file(phantom_archive, patient=2, slice_no=8)
    run = CliRunner().invoke(cli, ["explain", str(explain_index), str(query), "-k", "2", "--method", "gradcam",
                                   "--exclude", "same-patient", "--json", "--dicom-out", str(out)])
    assert run.exit_code == 0, run.output
    answer = json.loads(run.stdout)
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID: str(f)
              for f in phantom_archive.rglob("*.dcm")}
    for n in answer["neighbours"]:
        n["source"] = by_uid[n["sop_instance_uid"]]
    files = sorted(out.glob("*.dcm"))
    by_class: dict[str, list] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_class.setdefault(ds.SOPClassUID, []).append(ds)
    return answer, query, by_class, files


SC = "1.2.840.10008.5.1.4.1.1.7"
PM = "1.2.840.10008.5.1.4.1.1.30"


def test_every_object_validates(written):
    _, _, by_class, files = written
    assert sorted(len(v) for v in by_class.values()) == [3, 3] and set(by_class) == {SC, PM}
    for f in files:
        assert dciodvfy_errors(f) == [], f.name


def _sources(answer, query) -> list:
    return [pydicom.dcmread(query, stop_before_pixels=True)] + [
        pydicom.dcmread(n["source"], stop_before_pixels=True) for n in answer["neighbours"]]


def test_overlays_reference_their_sources_in_their_study(written):
    answer, query, by_class, _ = written
    sources = _sources(answer, query)
    overlays = sorted(by_class[SC], key=lambda d: int(d.InstanceNumber))
    for ds, src in zip(overlays, sources):
        ref = ds.SourceImageSequence[0]
        assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID) == (src.SOPInstanceUID, src.SOPClassUID)
        assert (ds.PatientID, ds.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.Manufacturer == "medcbir"
        assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "not for diagnosis" in ds.ImageComments.lower() and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
        assert ds.pixel_array.shape == (src.Rows, src.Columns, 3) and ds.PhotometricInterpretation == "RGB"
    # the query's patient was excluded: its overlay and the neighbours' are in different studies/series
    assert len({d.SeriesInstanceUID for d in overlays}) == len({d.StudyInstanceUID for d in overlays}) > 1


def test_parametric_maps_hold_the_heatmap_values_on_the_source_grid(written, explain_index):
    from medcbir.engine import Engine
    from medcbir.explain.dicom_maps import heatmap_on_source
    from medcbir.explain.runner import explain_search
    from medcbir.imaging import read_dicom

    answer, query, by_class, _ = written
    sources = _sources(answer, query)
    maps = sorted(by_class[PM], key=lambda d: int(d.InstanceNumber))
    engine = Engine.open(explain_index)
    again = explain_search(engine, str(query), k=2, method="gradcam", exclude="same-patient")
    paths = [str(query)] + [n["source"] for n in answer["neighbours"]]
    for i, (ds, src, path) in enumerate(zip(maps, sources, paths)):
        refs = [r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence]
        assert refs == [src.SOPInstanceUID] and (ds.PatientID, ds.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
        values = ds.pixel_array
        assert values.dtype == np.float32 and values.shape == (src.Rows, src.Columns)
        expected = heatmap_on_source(again.heatmaps[i], read_dicom(path)[0], engine.encoder.preprocessing)
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
        assert float(values.max()) > float(values.min())


def test_heatmap_goes_back_onto_the_cropped_region():
    from medcbir.explain.dicom_maps import heatmap_on_source
    from medcbir.imaging import Item, ItemMeta, Preprocessing

    pixels = np.full((100, 160), -1000.0, dtype=np.float32)
    pixels[30:70, 50:110] = 40.0  # the "body": 40×60 px of soft tissue in air
    item = Item(ItemMeta("1.2.3", modality="CT", rows=100, cols=160), pixels)
    prep = Preprocessing(("ct-liver-wide",), size=32, crop="body")
    region = prep.region(item)
    heat = heatmap_on_source(np.ones((32, 32), np.float32), item, prep)
    inside = np.zeros_like(heat, dtype=bool)
    inside[max(0, region.top):region.top + region.height, max(0, region.left):region.left + region.width] = True
    assert heat.shape == (100, 160) and np.all(heat[inside] == 1.0) and np.all(heat[~inside] == 0.0)
    assert inside[30:70, 50:110].all() and not inside.all()
    # crop="none": the longer side fills the input; a left-half heatmap lands on the left half
    half = np.zeros((32, 32), np.float32)
    half[:, :16] = 1.0
    whole = heatmap_on_source(half, item, Preprocessing(("ct-liver-wide",), size=32))
    assert whole[:, :70].min() > 0.99 and whole[:, 90:].max() < 0.01


def test_written_objects_are_skipped_as_derived(written):
    from medcbir.imaging import SkipFile, read_dicom

    for f in written[3]:
        with pytest.raises(SkipFile) as info:
            read_dicom(f)
        assert info.value.reason == "derived-by-medcbir"
