"""Positional positives across series (relative slice position in one plane) and the slice
geometry they rest on (plane and position along the normal from the DICOM header)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from medcbir.imaging.dicom import _slice_plane, _slice_position
from medcbir.train.pairs import PositionPartners, relative_positions


def _ds(iop, ipp):
    ds = Dataset()
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    return ds


@pytest.mark.parametrize(
    "iop, ipp, plane, position",
    [
        ((1, 0, 0, 0, 1, 0), (-120, -130, 42.5), "axial", 42.5),
        ((1, 0, 0, 0, 0, -1), (-120, 17.0, 90), "coronal", 17.0),
        ((0, 1, 0, 0, 0, -1), (-33.0, -120, 90), "sagittal", -33.0),
        # a feet-first axial series (rows flipped): the position is still z
        ((-1, 0, 0, 0, 1, 0), (120, -130, -12.0), "axial", -12.0),
        ((1, 0, 0, 0, 0.7071, -0.7071), (0, 0, 0), "oblique", 0.0),
    ],
)
def test_plane_and_position_along_the_normal(iop, ipp, plane, position):
    ds = _ds(iop, ipp)
    assert _slice_plane(ds, 0) == plane
    assert _slice_position(ds, 0) == pytest.approx(position)


def test_without_orientation_the_position_is_z_and_the_plane_unknown():
    ds = Dataset()
    ds.ImagePositionPatient = [1.0, 2.0, 3.0]
    assert _slice_plane(ds, 0) == ""
    assert _slice_position(ds, 0) == 3.0
    assert np.isnan(_slice_position(Dataset(), 0))


def _toy():
    # series a, b: axial of two patients with different extents and spacings; c: sagittal;
    # d: two slices only (too short for a relative position)
    series = np.array(["a"] * 5 + ["b"] * 9 + ["c"] * 4 + ["d"] * 2, dtype=object)
    position = np.concatenate([np.arange(5) * 10.0, 100 + np.arange(9)[::-1] * 2.5, np.arange(4) * 3.0, [0.0, 5.0]])
    plane = np.array(["axial"] * 14 + ["sagittal"] * 4 + ["axial"] * 2, dtype=object)
    return series, position, plane


def test_relative_positions_run_from_0_to_1_per_series():
    series, position, _ = _toy()
    t = relative_positions(series, position)
    np.testing.assert_allclose(t[:5], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(t[5:14], np.arange(9)[::-1] / 8)
    assert np.isnan(t[18:]).all()


def test_positional_partners_are_other_series_same_plane_within_delta():
    series, position, plane = _toy()
    t = relative_positions(series, position)
    for delta in (0.0, 0.1, 0.3):
        partners = PositionPartners(series, position, plane, delta)
        for i in range(len(series)):
            expected = sorted(
                j for j in range(len(series))
                if series[j] != series[i] and plane[j] == plane[i] and np.isfinite(t[i]) and np.isfinite(t[j])
                and abs(t[i] - t[j]) <= delta + 1e-9
            )
            assert sorted(partners.candidates(i).tolist()) == expected, (delta, i)
    partners = PositionPartners(series, position, plane, 0.1)
    assert partners.candidates(0).tolist() == [13]  # a's first slice ↔ b's lowest slice (listed last)
    assert len(partners.candidates(15)) == 0  # the only sagittal series has no partner series


def test_positional_draws_are_deterministic_and_respect_allowed_items():
    series, position, plane = _toy()
    allowed = np.ones(len(series), dtype=bool)
    allowed[5:10] = False
    partners = PositionPartners(series, position, plane, 0.5, allowed=allowed)
    index = torch.arange(len(series))
    a = partners.draw(index, 1.0, torch.Generator().manual_seed(3))
    b = partners.draw(index, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i, j in zip(index.tolist(), a.tolist()):
        if j != i:
            assert allowed[j] and series[j] != series[i] and plane[j] == plane[i]
    assert torch.equal(partners.draw(index, 0.0, torch.Generator().manual_seed(3)), index)


def test_supervised_contrastive_loss_matches_its_definition_and_plain_nt_xent():
    from medcbir.train.simclr import nt_xent

    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    plain = nt_xent(a, b, 0.2)
    # no extra positives: the same loss as NT-Xent
    torch.testing.assert_close(nt_xent(a, b, 0.2, torch.zeros(8, 8, dtype=torch.bool)), plain)
    positives = torch.zeros(8, 8, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True  # views 0 and 1 show the same anatomy
    got = nt_xent(a, b, 0.2, positives)
    u = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    sim = u @ u.t() / 0.2
    total = 0.0
    for i in range(8):
        others = [j for j in range(8) if j != i]
        log_p = sim[i, others] - torch.logsumexp(sim[i, others], 0)
        pos = {(i + 4) % 8} | ({1 - i} if i in (0, 1) else set())
        total += -sum(log_p[others.index(j)] for j in pos) / len(pos)
    torch.testing.assert_close(got, total / 8)


def test_positive_mask_marks_same_plane_same_relative_position():
    series, position, plane = _toy()
    partners = PositionPartners(series, position, plane, 0.1)
    items = torch.tensor([0, 13, 4, 5, 14, 18])
    mask = partners.positive_mask(items)
    assert mask[0, 1] and mask[1, 0]  # a's lowest ↔ b's lowest slice
    assert mask[2, 3]  # a's highest ↔ b's highest
    assert not mask[0, 2] and not mask[0, 4]  # other position; sagittal series
    assert not mask[5].any()  # too-short series: no relative position


def test_positional_training_marks_same_anatomy_positives(phantom_archive, tmp_path):
    """A step of the positional recipe hands the loss a positive mask that pairs each anchor with
    its partner and with the other views at the same relative position."""
    from medcbir.device import Device
    from medcbir.train.simclr import SimCLR
    from medcbir.train.trainer import TrainConfig, train

    seen = []
    original = SimCLR.forward

    def spy(self, views):
        seen.append(None if self.batch_positives is None else self.batch_positives.clone())
        return original(self, views)

    SimCLR.forward = spy
    try:
        summary = train(TrainConfig(archive=phantom_archive, out=tmp_path / "p.pt", method="simclr", epochs=1, batch_size=16, size=64,
                                    augment="archive", position_delta=0.05, position_p=1.0, method_options={"proj_dim": 32},
                                    device=Device.cpu(), progress=False, workers=1))
    finally:
        SimCLR.forward = original
    assert summary.epochs_run == 1 and seen and all(m is not None for m in seen)
    mask = seen[0]
    assert mask.shape == (32, 32) and torch.equal(mask, mask.t())
    # each anchor's partner (view b of the same row) is another series at the same anatomy
    assert bool(mask[torch.arange(16), torch.arange(16, 32)].all())
