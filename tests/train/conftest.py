"""Fixtures of the training tests: a tiny trained checkpoint and its ONNX export, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.threads import one_torch_thread  # noqa: F401 - fixture

#: Small heads keep checkpoints (and the tests) light; the method code is the same.
SMALL_HEADS = {"proj_dim": 128, "pred_dim": 32}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The default encoder is cached in a per-session folder, never in the user's home."""
    cache = tmp_path_factory.getbasetemp() / "medcbir-cache"
    monkeypatch.setenv("MEDCBIR_CACHE", str(cache))
    return cache


@pytest.fixture(scope="package")
def trained(phantom_archive, tmp_path_factory) -> dict:
    """SimSiam + HU views, 1 epoch at 64 px on the phantom, with the held-out monitor."""
    from medcbir.device import Device
    from medcbir.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "enc.pt"
    summary = train(
        TrainConfig(
            archive=phantom_archive,
            out=out,
            epochs=1,
            batch_size=16,
            size=64,
            views="hu-narrow,hu-wide",
            labels=phantom_archive / "labels.csv",
            method_options=SMALL_HEADS,
            device=Device.cpu(),
            progress=False,
            workers=1,
        )
    )
    return {"checkpoint": Path(out), "summary": summary}


@pytest.fixture(scope="package")
def exported(trained, phantom_archive) -> dict:
    from medcbir.train.onnx_export import export_onnx

    out = trained["checkpoint"].with_suffix(".onnx")
    report = export_onnx(trained["checkpoint"], out, archive=phantom_archive)
    return {"onnx": out, "report": report, **trained}
