"""Patient pseudonyms: keyed, stable, secret key file."""

from __future__ import annotations

import hashlib
import hmac
import stat

import pytest

from medcbir.errors import ConfigError
from medcbir.imaging import load_or_create_key, pseudonym


def test_key_file_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "sub" / "pseudonym.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert load_or_create_key(tmp_path / "other.key") != key


def test_pseudonym_stable_per_key_and_different_across_keys(tmp_path):
    a, b = load_or_create_key(tmp_path / "a.key"), load_or_create_key(tmp_path / "b.key")
    assert pseudonym("PAT-1", a) == pseudonym("PAT-1", a) == pseudonym(" PAT-1 ", a)
    assert pseudonym("PAT-1", a) != pseudonym("PAT-2", a)
    assert pseudonym("PAT-1", a) != pseudonym("PAT-1", b)
    # the documented construction: hex HMAC-SHA256, first 32 characters
    assert pseudonym("PAT-1", a) == hmac.new(a, b"PAT-1", hashlib.sha256).hexdigest()[:32]
    assert "PAT" not in pseudonym("PAT-1", a)


def test_a_damaged_key_file_is_an_error(tmp_path):
    path = tmp_path / "bad.key"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError):
        load_or_create_key(path)
