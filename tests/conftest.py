"""Shared fixtures: real phantom archives (written once per session) and system-tool checks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE_SYSTEM = os.environ.get("MEDCBIR_REQUIRE_SYSTEM") == "1" or os.environ.get("CI") == "true"


def require_binary(name: str) -> str:
    """Path of a system binary the test needs.

    Under `make test` / CI the setup has installed it, so its absence is a failure, not a skip.
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (scripts/setup.sh installs it)"
        if REQUIRE_SYSTEM:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> Path:
    """A small phantom CT archive: 4 patients × 20 slices at 128 px (labels.csv, masks.h5)."""
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("phantom") / "archive"
    make_archive(out, patients=4, slices=20, seed=7, size=128)
    return out


#: Small heads keep checkpoints (and the tests) light; the method code is the same.
SMALL_HEADS = {"proj_dim": 128, "pred_dim": 32}


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def exported(trained, phantom_archive) -> dict:
    from medcbir.train.onnx_export import export_onnx

    out = trained["checkpoint"].with_suffix(".onnx")
    report = export_onnx(trained["checkpoint"], out, archive=phantom_archive)
    return {"onnx": out, "report": report, **trained}


@pytest.fixture(scope="session")
def byo_models(tmp_path_factory) -> dict:
    """Users' own models in every format an encoder spec reads (tests/byo_models.py), saved once."""
    from tests.byo_models import write_models

    return write_models(tmp_path_factory.mktemp("byo-models"))
