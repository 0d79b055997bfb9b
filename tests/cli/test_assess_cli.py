"""``medcbir assess``: the label-free score of an index equals the score computed from the archive directly."""

from __future__ import annotations

import json

import numpy as np

from medcbir.cli.main import main


def test_assess_scores_an_index_as_the_archive_scores(tmp_path, capsys):
    import medcbir
    from medcbir.encoders.agreement import agreement
    from medcbir.imaging.phantom import make_archive

    archive = tmp_path / "archive"
    make_archive(archive, patients=3, slices=12, seed=4, size=64)
    medcbir.index(tmp_path / "index", archive, "thumbnail:8", workers=1, key_file=tmp_path / "k.key")
    assert main(["assess", str(tmp_path / "index"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_queries"] == result["items"] == 36 and result["patients"] == 3 and result["coverage"] == 1.0

    # the same score from the archive's embeddings (exact search, the index's patients)
    found = medcbir.embed(archive, "thumbnail:8", key=(tmp_path / "k.key").read_bytes(), workers=1)
    patient = np.array([m.patient_pseudonym for m in found.metas])
    direct = agreement(found.vectors, patient, [m.series_instance_uid for m in found.metas], [m.slice_position for m in found.metas])
    assert result["agreement_at_k"] == direct.score

    assert main(["assess", str(tmp_path / "index")]) == 0
    assert capsys.readouterr().out.startswith(f"agreement@5 {direct.score:.3f} over 36 queries of 36 items (3 patients")


def test_assess_of_no_index_is_one_line(tmp_path, capsys):
    assert main(["assess", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
