"""Fixtures of the encoder tests."""

from __future__ import annotations

import pytest

from tests.threads import one_torch_thread  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The built-in encoders are cached in a per-session folder, never in the user's home."""
    cache = tmp_path_factory.getbasetemp() / "medcbir-cache"
    monkeypatch.setenv("MEDCBIR_CACHE", str(cache))
    return cache
