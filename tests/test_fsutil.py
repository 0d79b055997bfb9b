"""The shared durable-write primitive: all or nothing, at the final name only."""

from __future__ import annotations

import os
import stat

import pytest

from medcbir.fsutil import atomic_path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "ckpt.pt"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half a new file")
            raise RuntimeError("killed mid-write")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_completed_write_replaces_the_file_with_the_requested_mode(tmp_path):
    final = tmp_path / "sub" / "secret.json"
    with atomic_path(final, mode=0o600) as tmp:
        assert tmp.parent == final.parent and tmp != final
        tmp.write_text("{}")
        assert not final.exists()
    assert final.read_text() == "{}"
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o600
    assert sorted(p.name for p in final.parent.iterdir()) == ["secret.json"]
