"""A real index for the runner and CLI tests: the phantom archive embedded by a 64 px ResNet-18."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.threads import one_torch_thread  # noqa: F401 - re-exported to conftest.py

SIZE = 64


@pytest.fixture(scope="session")
def explain_index(phantom_archive, tmp_path_factory) -> Path:
    """(index folder) of the session's phantom archive, encoder = seeded random ResNet-18 at 64 px."""
    from medcbir.imaging import Preprocessing
    from medcbir.indexer import index_archive
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    root = tmp_path_factory.mktemp("explain-index")
    encoder = save_checkpoint(root / "encoder.pt", new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), size=SIZE), seed=0))
    index_archive(phantom_archive, root / "index", str(encoder), shard_size=32, workers=1, progress=False, regions=False)
    return root / "index"


def query_file(archive: Path, patient: int = 1, slice_no: int = 10) -> Path:
    """One slice of one phantom patient."""
    folder = json.loads((archive / "phantom.json").read_text())["patients"][patient]["folder"]
    files = sorted((archive / folder).rglob("*.dcm"))
    return files[slice_no]
