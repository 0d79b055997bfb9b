"""`explain --roi --out DIR` writes one HTML page of the region explanation (report.html), and the
demo's region query boxes a lesion of the query slice when the archive lists lesion boxes."""

from __future__ import annotations

import csv
import json

import pytest

from medcbir.cli.demo import _pick_region
from medcbir.cli.main import main
from tests.region_html import region_section


@pytest.fixture(scope="module")
def v3_small(tmp_path_factory):
    """Phantom v3, 3 patients × 10 slices of 128 px, indexed with regions."""
    from medcbir.imaging.phantom import make_archive
    from medcbir.indexer import index_archive

    root = tmp_path_factory.mktemp("page")
    make_archive(root / "archive", patients=3, slices=10, seed=5, size=128, version=3, workers=1)
    index_archive(root / "archive", root / "index", "thumbnail:8", workers=1, progress=False)
    return root


def test_the_demo_boxes_the_query_slices_lesion(v3_small):
    archive = v3_small / "archive"
    rows = list(csv.DictReader(open(archive / "lesion-boxes.csv")))
    assert rows
    from medcbir.cli.demo import _sop_of

    by_sop = {_sop_of(p): p for p in archive.rglob("*.dcm")}
    row = rows[0]
    lesions = [r for r in rows if r["sop_instance_uid"] == row["sop_instance_uid"]]
    largest = max(lesions, key=lambda r: int(r["w"]) * int(r["h"]))
    box, chosen = _pick_region(archive, by_sop[row["sop_instance_uid"]])
    assert box == tuple(int(largest[c]) for c in "xywh") and largest["label"] in chosen
    # a slice without a lesion: its most prominent proposed region
    plain = next(p for sop, p in sorted(by_sop.items()) if sop not in {r["sop_instance_uid"] for r in rows})
    box, chosen = _pick_region(archive, plain)
    assert "proposed region" in chosen and min(box[2:]) >= 1


def test_explain_roi_out_writes_a_page(v3_small, tmp_path, capsys):
    archive = v3_small / "archive"
    query = sorted(archive.rglob("*.dcm"))[5]
    box, _ = _pick_region(archive, query)
    code = main(["explain", str(v3_small / "index"), str(query), "--roi", ",".join(map(str, box)), "-k", "2", "--masks", "20",
                 "--exclude", "same-patient", "--out", str(tmp_path / "out"), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert str(tmp_path / "out" / "report.html") in payload["files"]
    page = (tmp_path / "out" / "report.html").read_text()
    section = region_section(page)
    assert section.sections == 1 and "region-match RELAX" in section.heading
    assert section.paragraphs["status"] == [payload["status"]["text"]] and section.paragraphs["caveat"] == [payload["caveat"]]
    query_fig, *neighbours = section.figures
    assert query_fig["class"] == "query" and query_fig["images"]
    assert [f["lines"][0] for f in neighbours] == [f"#{n['rank']}" for n in payload["neighbours"]]
    for fig, n in zip(neighbours, payload["neighbours"]):
        assert f"matched region {','.join(map(str, n['region']))}" in fig["lines"]
        assert f"map in region {n['share_in_region']:.0%}" in fig["lines"]
        assert fig["images"][0].startswith("data:image/png;base64,")
