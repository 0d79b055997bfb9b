"""Hounsfield-window views on real phantom slices, and the batched kornia augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcbir.errors import ConfigError
from medcbir.imaging import Preprocessing, read_dicom
from medcbir.train.dataset import load_hu_dataset
from medcbir.train.views import VIEWS, BatchAugment, blur_kernel, make_views, parse_views, window_views


@pytest.fixture(scope="module")
def data(phantom_archive):
    return load_hu_dataset(phantom_archive, 64, workers=1)


def test_view_names_are_the_reference_windows():
    assert VIEWS == {"hu-narrow": "ct-liver-narrow", "hu-wide": "ct-liver-wide"}
    # A view replaces the CT rule of the encoder's policy (legacy CT-only policy here).
    assert parse_views("hu-narrow,hu-wide") == [("CT=ct-liver-narrow",), ("CT=ct-liver-wide",)]
    assert parse_views(None, ("ct-liver-wide",)) == [("ct-liver-wide",), ("ct-liver-wide",)]
    with pytest.raises(ConfigError, match="exactly two"):
        parse_views("hu-narrow")
    with pytest.raises(ConfigError, match="unknown view"):
        parse_views("hu-narrow,hu-bogus")


def test_narrow_view_saturates_where_the_wide_view_does_not(data):
    hu = data.pixels()
    narrow, wide = window_views(hu, parse_views("hu-narrow,hu-wide"))
    assert narrow.shape == wide.shape == hu.shape
    # Independent oracle: the windows' definitions applied by hand.
    np.testing.assert_allclose(narrow.numpy(), np.clip((hu.numpy() - 50) / 100, 0, 1), atol=1e-6)
    np.testing.assert_allclose(wide.numpy(), np.clip((hu.numpy() + 200) / 500, 0, 1), atol=1e-6)
    body = (hu > -150) & (hu < 250)  # soft tissue, fat, contrast-free organs
    saturated_narrow = ((narrow == 0) | (narrow == 1)) & body
    saturated_wide = ((wide == 0) | (wide == 1)) & body
    assert saturated_wide.sum() == 0
    assert saturated_narrow.float().sum() / body.float().sum() > 0.2
    # Both windows see structure the other flattens: narrow resolves liver vs. spleen contrast.
    assert (narrow - wide).abs().mean() > 0.05


def test_wide_view_of_the_hu_cache_is_the_test_time_preprocessing(data, phantom_archive):
    """Training windows resized HU exactly as Preprocessing.apply does at test time."""
    prep = Preprocessing(("ct-liver-wide",), 64)
    first = sorted(p for p in phantom_archive.rglob("*") if p.is_file() and p.suffix not in (".csv", ".h5", ".json"))[0]
    item = read_dicom(first)[0]
    row = int(np.flatnonzero((data.sop_instance_uid == item.meta.sop_instance_uid) & (data.frame == item.meta.frame))[0])
    view = window_views(data.pixels()[row : row + 1], [("ct-liver-wide",)])[0][0].numpy()
    # float16 HU storage: ±0.5 HU at 1000 HU, i.e. ≤ 1e-3 after a 500-HU window.
    np.testing.assert_allclose(view, prep.apply(item), atol=1.5e-3)


def test_batch_augment_draws_per_sample_and_is_seeded(data):
    hu = data.pixels()[:6]
    x = window_views(hu, [("ct-liver-wide",)])[0]
    same = x[:1].repeat(6, 1, 1, 1)
    torch.manual_seed(0)
    a = BatchAugment(64, rotation=10)(same)
    assert a.shape == same.shape and a.min() >= 0 and a.max() <= 1
    # One draw per sample: six copies of one image come out different.
    flat = a.flatten(1)
    assert min((flat[i] - flat[j]).abs().mean() for i in range(6) for j in range(i)) > 1e-3
    torch.manual_seed(0)
    b = BatchAugment(64, rotation=10)(same)
    assert torch.equal(a, b)
    assert blur_kernel(64) == 7 and blur_kernel(224) == 23


def test_make_views_gives_two_differently_windowed_augmented_views(data):
    torch.manual_seed(1)
    v1, v2 = make_views(data.pixels()[:4], parse_views("hu-narrow,hu-wide"), BatchAugment(64))
    assert v1.shape == v2.shape == (4, 1, 64, 64)
    assert not torch.allclose(v1, v2)
