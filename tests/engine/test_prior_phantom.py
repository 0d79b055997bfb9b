"""Prior exam on phantom v2 (several exams per patient): the retrieved slice is at the true level.

Truth (``slices.csv``): the other exam's slice of nearest body position ``z``; "within one slice"
= |InstanceNumber(retrieved) − InstanceNumber(truth)| ≤ 1 (docs/contracts.md, phantom).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medcbir.engine import Engine
from tests.engine.indexes import build_index


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("phantom-v2") / "archive"
    make_archive(out, patients=3, slices=16, seed=5, size=64, studies_per_patient=3)
    return out


@pytest.fixture(scope="module")
def engine(archive, small_encoder, tmp_path_factory):
    return Engine.open(build_index(archive, tmp_path_factory.mktemp("pv2") / "index", small_encoder))


def test_prior_slice_within_one_slice_for_90_percent(engine, archive):
    with open(archive / "slices.csv", newline="") as fh:
        truth = {r["sop_instance_uid"]: (r["patient"], r["study_instance_uid"], int(r["instance_number"]), float(r["z"]), r["study_date"]) for r in csv.DictReader(fh)}
    by_study: dict = {}
    for patient, study, inst, z, _ in truth.values():
        by_study.setdefault(study, []).append((z, inst))
    errors = []
    for sop, (patient, study, inst, z, date) in truth.items():
        result = engine.prior(sop)
        others = {s for p, s, *_ in truth.values() if p == patient} - {study}
        assert {s.study_instance_uid for s in result.studies} == others  # the patient's other exams, no one else's
        dates = [s.study_datetime for s in result.studies]
        assert dates == sorted(dates, reverse=True) and all(d[:8] == truth[s.slice.meta["sop_instance_uid"]][4] for d, s in zip(dates, result.studies))
        for other in result.studies:
            got = truth[other.slice.meta["sop_instance_uid"]]
            nearest = min(by_study[other.study_instance_uid], key=lambda t: abs(t[0] - z))
            errors.append(abs(got[2] - nearest[1]))
    errors = np.asarray(errors)
    assert len(errors) == 3 * 3 * 16 * 2
    assert np.mean(errors <= 1) >= 0.9, np.bincount(errors)
