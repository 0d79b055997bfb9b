"""Real test indexes for the engine and CLI tests: a phantom archive embedded by a small encoder.

The encoder is a seeded random ResNet-18 at 64 px (the trainer's ``new_encoder_module``) saved as a
real checkpoint; the index is written by the real indexer (HDF5 shards + manifest).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SIZE = 64


def make_encoder(path: Path, seed: int = 0) -> Path:
    """A medcbir checkpoint of a random ResNet-18 taking 1×64×64 (ct-liver-wide) inputs."""
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    save_checkpoint(path, new_encoder_module("resnet18", Preprocessing(("ct-liver-wide",), size=SIZE), seed=seed))
    return path


def build_index(archive: Path, out: Path, encoder: Path) -> Path:
    """Index ``archive`` exactly (Flat) in small shards, as ``medcbir index`` would."""
    from medcbir.indexer import index_archive

    index_archive(archive, out, str(encoder), shard_size=32, workers=1, progress=False, regions=False)
    return out


def rebuild_with_spec(index: Path, out: Path, spec: str) -> Path:
    """The same items and stored embeddings under another FAISS spec (no re-encoding)."""
    from medcbir.imaging import ItemMeta
    from medcbir.indexer import IndexStore, IndexWriter

    store = IndexStore.open(index)
    try:
        ids = np.asarray(store.ids)
        embeddings = store.embeddings(ids)
        metas = [ItemMeta.from_dict(row) for row in store.meta(ids)]
        encoder = store.encoder_info["source"]
    finally:
        store.close()
    with IndexWriter.open(out, encoder, index_spec=spec, shard_size=32) as writer:
        writer.add_embeddings(metas, embeddings)
    return out


def copy_index(index: Path, out: Path) -> Path:
    shutil.copytree(index, out, ignore=shutil.ignore_patterns("writer.lock"))
    return out


# -- fixtures (imported by tests/engine/conftest.py and tests/cli/test_search_cli.py) --------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_encoder(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("encoder") / "small.pt")


@pytest.fixture(scope="session")
def flat_index(phantom_archive, small_encoder, tmp_path_factory) -> Path:
    """The phantom archive (4 patients × 20 slices) indexed exactly; never modified by tests."""
    return build_index(phantom_archive, tmp_path_factory.mktemp("index") / "flat", small_encoder)
