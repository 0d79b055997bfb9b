"""Indexer fixtures: a small real encoder checkpoint and an index of the phantom archive."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def make_encoder(path: Path, size: int = 64, seed: int = 0) -> Path:
    """A randomly initialised ResNet-18 checkpoint at ``size`` px (a real medcbir encoder)."""
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    save_checkpoint(path, new_encoder_module(preprocessing=Preprocessing(size=size), seed=seed))
    return path


@pytest.fixture(scope="session")
def encoder_path(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("enc") / "enc64.pt")


@pytest.fixture(scope="session")
def encoder(encoder_path):
    import torch

    torch.set_num_threads(1)
    from medcbir.device import Device
    from medcbir.encoders.runtime import open_encoder

    return open_encoder(str(encoder_path), device=Device.cpu())


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, phantom_archive, encoder):
    """The phantom archive indexed once (shard size 16 → 5 shards); copy it before modifying."""
    from medcbir.indexer import index_archive

    out = tmp_path_factory.mktemp("index") / "index"
    summary = index_archive(phantom_archive, out, encoder, shard_size=16, progress=False, workers=1)
    return out, summary


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(built_index[0], dst)
    (dst / "writer.lock").unlink(missing_ok=True)
    return dst


class Meta:
    """A stand-in ItemMeta for synthetic embeddings (same fields the indexer reads)."""

    COLUMNS = ("sop_instance_uid", "frame", "series_instance_uid", "study_instance_uid", "modality", "source")

    def __init__(self, i: int, series: int = 0) -> None:
        self.sop_instance_uid = f"1.2.3.{i}"
        self.frame = 0
        self.series_instance_uid = f"1.2.9.{series}"
        self.study_instance_uid = "1.2.8"
        self.modality = "CT"
        self.source = f"/synthetic/{i}.dcm"


class FakeEncoder:
    """Fingerprinted stand-in used only with ``add_embeddings`` (nothing to embed)."""

    def __init__(self, dim: int, fingerprint: str = "f" * 64) -> None:
        from medcbir.imaging import Preprocessing

        self.dim = dim
        self.fingerprint = fingerprint
        self.preprocessing = Preprocessing(size=32)
        self.source = "synthetic"

    def embed(self, images):  # pragma: no cover - add_embeddings never embeds
        raise AssertionError("not used")


def clustered(n: int, dim: int = 64, clusters: int = 20, intrinsic: int = 8, seed: int = 0) -> np.ndarray:
    """Unit vectors shaped like real embeddings: clusters in a low-dimensional subspace."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T
    centres = rng.standard_normal((clusters, intrinsic)) * 3
    z = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, intrinsic))
    x = (z @ basis + 0.05 * rng.standard_normal((n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def dicomweb_server(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin (no medcbir plugin) holding a small phantom (per module)."""
    import requests

    from medcbir.imaging.phantom import make_archive
    from medcbir.pacs.orthanc_config import build_config, write_config
    from medcbir.pacs.orthanc_server import OrthancServer, free_port
    from tests.conftest import require_binary

    require_binary("Orthanc")
    folder = tmp_path_factory.mktemp("dicomweb")
    archive = folder / "archive"
    make_archive(archive, patients=2, slices=6, seed=5, size=64)
    config = build_config(folder / "unused-index", "default", http_port=free_port(), dicom_port=free_port(), storage=folder / "storage")
    config["Plugins"] = [p for p in config["Plugins"] if "DicomWeb" in p]
    config.pop("PythonScript", None)
    config.pop("Medcbir", None)
    server = OrthancServer(write_config(folder / "orthanc.json", config), log_path=folder / "orthanc.log")
    server.start(timeout=90, wait_plugin=False)
    try:
        files = sorted(archive.rglob("*.dcm"))
        for path in files:
            requests.post(server.url + "/instances", data=path.read_bytes(), timeout=30).raise_for_status()
        yield server, files
    finally:
        server.stop()
