"""What a reader sees beside a hit: reading windows, series positions, percentiles, the
explanation's whole-frame overlay with its caveat, and queries given as pydicom datasets."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest

from medcbir.imaging.items import Item, ItemMeta


def _item(modality="CT", body_part="", voi=None, pixels=None) -> Item:
    pixels = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64) if pixels is None else pixels
    return Item(meta=ItemMeta(sop_instance_uid="1.2.3", modality=modality, body_part=body_part), pixels=pixels, voi=voi)


def test_reading_window_order_voi_then_ct_preset_then_percentiles():
    from medcbir.imaging.reading_window import reading_window, windowed
    from medcbir.imaging.windows import WINDOWS

    assert reading_window(_item(voi=(40.0, 400.0)))[:2] == (-160.0, 240.0)       # the image's own window first
    assert reading_window(_item(body_part="CHEST"))[:2] == WINDOWS["ct-mediastinum"]  # then a CT preset by body part
    assert reading_window(_item(body_part="HEAD"))[2] == "CT preset ct-brain"
    assert reading_window(_item())[2] == "CT preset ct-abdomen"                  # soft tissue when unknown
    mr = _item(modality="MR", pixels=np.arange(100 * 100, dtype=np.float32).reshape(100, 100))
    lo, hi, how = reading_window(mr)
    assert how == "1-99 %" and lo == pytest.approx(np.percentile(mr.pixels, 1)) and hi == pytest.approx(np.percentile(mr.pixels, 99))
    grey, _ = windowed(_item(voi=(0.0, 200.0)))
    assert grey.shape == (64, 64) and grey.min() == 0.0 and grey.max() == 1.0  # stored resolution, in [0, 1]


def test_percentile_of_a_sampled_distribution():
    from medcbir.indexer.similarity import percentile, sample_distribution

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    series = np.repeat(np.arange(6), 10)
    record = sample_distribution(vectors, series)
    # oracle: each row's top-10 cosines among rows of other series
    sims = vectors @ vectors.T
    sims[series[:, None] == series[None, :]] = -np.inf
    pairs = np.sort(sims, axis=1)[:, -10:].ravel()
    assert record["pairs"] == pairs.size and record["quantiles"][0] == pytest.approx(pairs.min(), abs=1e-6)
    assert record["quantiles"][-1] == pytest.approx(pairs.max(), abs=1e-6)
    median = float(np.median(pairs))
    assert percentile(median, record) == pytest.approx(50, abs=1.0)
    assert percentile(pairs.max() + 1, record) == 100 and percentile(pairs.min() - 1, record) == 0
    assert percentile(0.5, None) is None


def test_series_place_and_dataset_queries(flat_index, phantom_archive):
    from medcbir.engine import Engine
    from medcbir.engine.reading import context

    engine = Engine.open(flat_index)
    path = sorted(phantom_archive.rglob("*.dcm"))[5]
    ds = pydicom.dcmread(path)
    [by_path] = engine.search([str(path)], k=4, exclude="same-series")
    [by_dataset] = engine.search(ds, k=4, exclude="same-series")  # a dataset in memory is a query too
    assert [n.id for n in by_dataset] == [n.id for n in by_path]
    assert all(n.meta["series_instance_uid"] != ds.SeriesInstanceUID for n in by_path)
    for n in by_path:
        c = context(engine, n.meta, n.score)
        members = [m for m in engine.meta(np.flatnonzero(engine.live)) if m["series_instance_uid"] == n.meta["series_instance_uid"]]
        positions = sorted(m["slice_position"] for m in members)
        assert c["series_slices"] == len(members) and positions[c["index_in_series"] - 1] == pytest.approx(c["position_mm"], abs=0.01)
        assert not math.isnan(c["position_mm"]) and len(c["study_date"]) == 10 and 0 <= c["percentile"] <= 100


def test_overlay_covers_the_whole_frame_and_says_not_for_diagnosis():
    from medcbir.explain.dicom_maps import seen_region, whole_frame
    from medcbir.imaging.dicom_out.secondary_capture import overlay_rgb
    from medcbir.imaging import Preprocessing

    pixels = np.full((96, 128), -1000, np.float32)
    pixels[20:76, 30:100] = 40  # a body in the middle: the crop sees only it
    item = _item(pixels=pixels, voi=(40.0, 400.0))
    prep = Preprocessing(("ct-liver-wide",), size=32, crop="body")
    seen = seen_region(item, prep)
    assert seen.any() and not seen.all()
    heat = np.where(seen, np.linspace(0, 1, 96 * 128).reshape(96, 128), 0).astype(np.float32)
    full = whole_frame(heat, seen)
    assert full.shape == (96, 128) and full[~seen].min() == full[seen].min()  # outside: no importance, no box
    rgb = overlay_rgb(item, full, "RELAX: not evaluated. not for diagnosis", "RELAX - NOT FOR DIAGNOSIS")
    assert rgb.shape == (96, 128, 3)
    plain = overlay_rgb(item, full)
    assert not np.array_equal(rgb[-12:], plain[-12:]) and np.array_equal(rgb[:40], plain[:40])  # the caption band only
