"""Several writer processes add to one index: every commit atomic, no item lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from medcbir.indexer import IndexStore, verify

# One writer process: items lo..hi-1 (unit vectors seeded by item number), committed in small
# batches so the two processes' commits interleave.
WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, sys.argv[4])
    from tests.indexer.conftest import FakeEncoder, Meta
    from medcbir.indexer import IndexWriter
    ix, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    w = IndexWriter.open(ix, FakeEncoder(8), shard_size=7)
    for start in range(lo, hi, 5):
        ids = range(start, min(start + 5, hi))
        x = np.stack([np.random.default_rng(i).standard_normal(8) for i in ids]).astype(np.float32)
        w.add_embeddings([Meta(i) for i in ids], x / np.linalg.norm(x, axis=1, keepdims=True))
        w.commit()
    w.close()
    print(w.items_committed)
""")


def test_two_writer_processes_both_commit_and_the_count_is_exact(tmp_path):
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    ix = tmp_path / "ix"
    # Overlapping ranges: items 60..99 are offered by both writers and must be committed once.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(ix), lo, hi, repo], stdout=subprocess.PIPE, text=True)
             for lo, hi in (("0", "100"), ("60", "160"))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    committed = [int(o.split()[-1]) for o in outs]
    assert all(c > 0 for c in committed) and sum(committed) == 160  # both committed; nothing twice

    report = verify(ix)  # also checks that no item key appears twice
    assert report.ok, report.problems
    store = IndexStore.open(ix)
    assert len(store.ids) == 160
    sops = store.columns["sop_instance_uid"]
    assert sorted(sops) == sorted(f"1.2.3.{i}" for i in range(160))
    # Each item's embedding is the one its number seeds, whichever writer committed it.
    for row in (0, 59, 60, 99, 159):
        i = int(str(sops[row]).rsplit(".", 1)[1])
        x = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        np.testing.assert_allclose(store.embeddings(np.array([row]))[0], x / np.linalg.norm(x), rtol=1e-6)
    assert report.generation >= 2 * (160 // 5) // 2  # many small interleaved commits
