"""Soak: two writer processes stream items into one index while it is searched, compacted,
retrained, and the writers are killed with SIGKILL at random moments.

- ``--items`` items (default 100,000, 64-d clustered embeddings of ``benchmarks/search.py``'s
  geometry) in ``--commits`` commits (default 200) split between two writer processes (each
  its own half, in batches of items/commits, one commit per batch); a killed writer is
  restarted at once and resumes (items already committed are skipped by key);
- a searcher thread opens the newest committed generation (at most once a second, like the
  Orthanc plugin) and answers one query every ``--search-interval`` (100 ms); at every
  generation it opens it also measures recall@10 of 20 queries against exact search over
  that generation's items;
- a maintenance thread runs ``run_due`` (compaction of the small shards, retraining) every 2 s;
- ``--kills`` (20) SIGKILLs of a random writer at random moments.

Afterwards: ``verify`` must be ok, the item count exact, zero duplicate keys, every search
answered. Results in ``results/soak.json`` / RESULTS.md.

Usage::

    .venv/bin/python benchmarks/soak.py [--items 100000 --commits 200 --kills 20]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402

DIM = 64


def batch_embeddings(batch: int, size: int) -> np.ndarray:
    """The embeddings of batch ``batch`` (deterministic: a restarted writer re-draws the same)."""
    from search import Embeddings

    return Embeddings(dim=DIM, seed=11).draw(size, seed=batch)


def run_writer(index: str, first_batch: int, last_batch: int, batch_size: int) -> None:
    """Writer process: commit batches first..last-1 (items batch*batch_size ...), one commit each."""
    from medcbir.imaging import ItemMeta
    from medcbir.indexer import IndexWriter

    writer = IndexWriter.open(index, _results.synthetic_encoder(DIM, "5" * 64), shard_size=4096)
    for batch in range(first_batch, last_batch):
        lo = batch * batch_size
        metas = [ItemMeta(sop_instance_uid=f"1.2.{i}", series_instance_uid=f"1.3.{i // 100}",
                          study_instance_uid=f"1.4.{i // 1000}", modality="CT", source=f"/soak/{i}.dcm")
                 for i in range(lo, lo + batch_size)]
        if all(writer.has_key(m.sop_instance_uid, 0) for m in metas):
            continue  # committed before a kill
        writer.add_embeddings(metas, batch_embeddings(batch, batch_size))
        writer.commit()
    writer.close()


class Searcher(threading.Thread):
    """One query every ``interval`` s on the newest generation (reopened at most once a second)."""

    def __init__(self, index: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.index, self.interval = index, interval
        self.stop = threading.Event()
        self.asked = self.answered = 0
        self.errors: list[str] = []
        self.latency_ms: list[float] = []
        self.recall: list[dict] = []
        self._store = None
        self._opened = 0.0

    def _refresh(self) -> None:
        from medcbir.indexer import IndexStore
        from medcbir.indexer.manifest import read_manifest

        try:
            generation = read_manifest(self.index)["generation"]
        except Exception:  # noqa: BLE001 - nothing committed yet
            return
        if self._store is not None and (generation == self._store.generation or time.monotonic() - self._opened < 1.0):
            return
        store = IndexStore.open(self.index, verify="sizes")
        old, self._store, self._opened = self._store, store, time.monotonic()
        if old is not None:
            old.close()
        self._measure_recall(store)

    def _measure_recall(self, store) -> None:
        import faiss

        if len(store.ids) < 100:
            return
        rng = np.random.default_rng(store.generation)
        x = store.embeddings(store.ids)
        q = x[rng.choice(len(x), 20, replace=False)] + 0.01 * rng.standard_normal((20, DIM), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        _, found = store.faiss_index.search(q, 10, params=store.search_parameters())
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
        self.recall.append({"generation": store.generation, "items": len(store.ids), "spec": store.index_spec, "recall": recall})

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                self._refresh()
                if self._store is not None:
                    self.asked += 1
                    q = rng.standard_normal((1, DIM), dtype=np.float32)
                    q /= np.linalg.norm(q)
                    _, found = self._store.faiss_index.search(q, 10, params=self._store.search_parameters())
                    if (found[0] >= 0).sum() == min(10, len(self._store.ids)):
                        self.answered += 1
                    self.latency_ms.append(1000 * (time.perf_counter() - t0))
            except Exception as exc:  # noqa: BLE001 - counted: every search must be answered
                self.errors.append(f"{exc.__class__.__name__}: {exc}")
            self.stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--search-interval", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", nargs=4, metavar=("INDEX", "FIRST", "LAST", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        index, first, last, size = args.writer
        run_writer(index, int(first), int(last), int(size))
        return 0

    from medcbir.indexer import IndexStore, verify
    from medcbir.indexer.background import run_due

    if args.items % args.commits:
        parser.error("--items must be a multiple of --commits")
    batch = args.items // args.commits
    index = HERE / "work" / "soak"
    shutil.rmtree(index, ignore_errors=True)
    halves = [(0, args.commits // 2), (args.commits // 2, args.commits)]
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    def start(w: int) -> subprocess.Popen:
        first, last = halves[w]
        return subprocess.Popen([sys.executable, __file__, "--writer", str(index), str(first), str(last), str(batch)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    writers = [start(0), start(1)]
    searcher = Searcher(index, args.search_interval)
    searcher.start()
    maintenance_runs: list[dict] = []
    maintenance_errors: list[str] = []
    stop = threading.Event()

    def maintain() -> None:
        while not stop.wait(2.0):
            try:
                done = run_due(index) if (index / "manifest.json").exists() else {}
                if done:
                    maintenance_runs.append(done)
            except Exception as exc:  # noqa: BLE001 - reported
                maintenance_errors.append(f"{exc.__class__.__name__}: {exc}")

    maint = threading.Thread(target=maintain, daemon=True)
    maint.start()

    rng = random.Random(args.seed)
    kills, restarts, failures = [], 0, []
    while len(kills) < args.kills and any(p.poll() is None for p in writers):
        time.sleep(rng.uniform(0.2, 3.0))
        alive = [w for w, p in enumerate(writers) if p.poll() is None]
        if not alive:
            break
        w = rng.choice(alive)
        os.kill(writers[w].pid, signal.SIGKILL)
        writers[w].wait()
        kills.append({"writer": w, "at_s": round(time.perf_counter() - t_start, 2)})
        writers[w] = start(w)
        restarts += 1
    for w, p in enumerate(writers):
        p.wait()
        if p.returncode != 0:
            failures.append(f"writer {w} exited {p.returncode}: {p.stderr.read()[-500:]}")
    stop.set()
    maint.join()
    final_maintenance = run_due(index)
    time.sleep(1.2)
    searcher.stop.set()
    searcher.join()
    elapsed = time.perf_counter() - t_start

    report = verify(index)
    store = IndexStore.open(index)
    sops = store.columns["sop_instance_uid"][store.live_mask]
    duplicates = int(len(sops) - len(np.unique(sops)))
    expected = {f"1.2.{i}" for i in range(args.items)}
    missing = len(expected - set(map(str, sops)))
    lat = np.asarray(searcher.latency_ms) if searcher.latency_ms else np.zeros(1)
    recalls = searcher.recall
    approx = [r for r in recalls if r["spec"] != "Flat"]
    data = {
        "items": args.items, "commits": args.commits, "batch": batch, "kills": kills, "restarts": restarts,
        "writer_failures": failures, "verify_ok": report.ok, "verify_problems": report.problems[:5],
        "items_in_index": int(store.n_live), "missing": missing, "duplicates": duplicates,
        "generation": store.generation, "shards": len(store.manifest["shards"]), "spec": store.index_spec,
        "searches_asked": searcher.asked, "searches_answered": searcher.answered, "search_errors": searcher.errors[:5],
        "search_ms_p50": float(np.percentile(lat, 50)), "search_ms_p95": float(np.percentile(lat, 95)),
        "recall_per_generation": recalls, "maintenance_runs": maintenance_runs + ([final_maintenance] if final_maintenance else []),
        "maintenance_errors": maintenance_errors[:5], "elapsed_s": elapsed,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    ok = (report.ok and missing == 0 and duplicates == 0 and store.n_live == args.items and not failures
          and searcher.asked == searcher.answered and not searcher.errors and not maintenance_errors)
    data["ok"] = ok
    n_compact = sum(1 for r in data["maintenance_runs"] if "compact" in r)
    n_retrain = sum(1 for r in data["maintenance_runs"] if "retrain" in r)
    md = [
        f"{args.items:,} items ({DIM}-d) in {args.commits} commits of {batch} by two writer processes, "
        f"{len(kills)} SIGKILLs of a random writer at random moments (each restarted at once), searches every "
        f"{int(args.search_interval * 1000)} ms on the newest generation, `run_due` (compaction/retraining) every 2 s; "
        f"{elapsed:.0f} s; load average {load_before[0]:.1f} before / {data['loadavg_after'][0]:.1f} after "
        f"(2 CPUs shared with other engineers).", "",
        "| check | result |", "|---|---|",
        f"| `verify` | {'ok' if report.ok else 'BROKEN: ' + '; '.join(report.problems[:2])} |",
        f"| items in the index (expected {args.items:,}) | {store.n_live:,} (missing {missing}, duplicates {duplicates}) |",
        f"| writer failures (besides the kills) | {len(failures)} |",
        f"| searches answered / asked | {searcher.answered:,} / {searcher.asked:,} (errors {len(searcher.errors)}) |",
        f"| search latency p50 / p95 (incl. reopening a new generation) | {data['search_ms_p50']:.1f} / {data['search_ms_p95']:.1f} ms |",
        f"| compactions / retrainings committed during the run | {n_compact} / {n_retrain} (errors {len(maintenance_errors)}) |",
        f"| final generation, shards, spec | {store.generation}, {len(store.manifest['shards'])}, {store.index_spec} |",
        "| recall@10 vs exact per opened generation (min / median; approximate ones) | "
        + (f"{min(r['recall'] for r in approx):.3f} / {np.median([r['recall'] for r in approx]):.3f} over {len(approx)} generations |"
           if approx else "- (stayed exact) |"),
        f"| **all checks** | **{'passed' if ok else 'FAILED'}** |",
    ]
    if recalls:
        md += ["", "Recall@10 at a few of the generations the searcher opened:", "", "| generation | items | spec | recall@10 |",
               "|---:|---:|---|---:|"]
        step = max(1, len(recalls) // 10)
        md += [f"| {r['generation']} | {r['items']:,} | {r['spec']} | {r['recall']:.3f} |" for r in recalls[::step]]
    command = ".venv/bin/python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    _results.record("soak", data, "\n".join(md), command.strip())
    print("\n".join(md))
    store.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
