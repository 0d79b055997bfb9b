"""Fixtures of the training tests (the tiny trained checkpoint is in tests/conftest.py: the encoder tests use it too)."""

from __future__ import annotations

import pytest

from tests.threads import one_torch_thread  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The default encoder is cached in a per-session folder, never in the user's home."""
    cache = tmp_path_factory.getbasetemp() / "medcbir-cache"
    monkeypatch.setenv("MEDCBIR_CACHE", str(cache))
    return cache
