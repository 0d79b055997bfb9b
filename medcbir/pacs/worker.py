"""The plugin's worker process: indexes what Orthanc receives and answers the plugin's searches.

Started by the plugin (``python -m medcbir.pacs.worker``) with the venv's interpreter, so torch
and FAISS never load inside Orthanc. This module is the process: it

1. listens on a Unix socket in a private folder for the plugin's requests (``status``,
   ``search``, ``explain``, ``render``, ``reindex``; see :mod:`medcbir.pacs.worker_link`),
   answered by :mod:`medcbir.pacs.handlers`, and prints ``READY <socket path>``; it reaches
   Orthanc's REST API over loopback HTTP with the plugin's ``GenerateRestApiAuthorizationToken``
   token (so it works with authentication enabled);
2. starts the explanation process (:mod:`medcbir.pacs.explain_worker`);
3. runs the indexing loop (:mod:`medcbir.pacs.ingest`) on its own thread.

The worker exits when its parent (Orthanc) goes away: stdin EOF, SIGTERM, or parent death.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing.connection import Listener
from pathlib import Path

from medcbir.indexer.background import BackgroundMaintenance
from medcbir.pacs.explain_worker import ExplainWorker
from medcbir.pacs.handlers import RequestHandlers
from medcbir.pacs.ingest import RETRY, Ingest, log
from medcbir.pacs.instance_queue import InstanceQueue
from medcbir.pacs.orthanc_config import PluginSettings
from medcbir.pacs.orthanc_rest import OrthancRest
from medcbir.pacs.worker_link import AUTHKEY_ENV, TOKEN_ENV

TMP_PREFIX = "medcbir-worker-"

__all__ = ["RETRY", "Worker", "main"]


class Worker(Ingest, RequestHandlers):
    """The worker's state, its indexing loop (:class:`~medcbir.pacs.ingest.Ingest`) and its
    request handlers (:class:`~medcbir.pacs.handlers.RequestHandlers`).

    Args:
        settings: the plugin's ``"Medcbir"`` settings.
        rest: client of Orthanc's REST API.
    """

    def __init__(self, settings: PluginSettings, rest: OrthancRest) -> None:
        self.settings = settings
        self.rest = rest
        self.index = Path(settings.index)
        self.queue = InstanceQueue(settings.queue_path)
        self.stop = threading.Event()
        self.state = "starting"
        self.error = ""
        self.indexed = 0          # Orthanc instances whose items are committed
        self.items = 0            # items (frames) committed by this worker since start
        self.writer = None
        self.encoder_info: dict = {"source": settings.encoder}
        self._engine = None
        self._engine_generation = None
        self._engine_opened = 0.0
        self._engine_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._reindex = threading.Event()
        self._explainer = None  # ExplainWorker, started by main()
        self._explain_kind: str | None = None
        self.maintenance = BackgroundMaintenance(self.index, on_done=lambda done: log(f"maintenance: {done}"))
        self._tmp_dir: Path | None = None

    @property
    def tmp(self) -> Path:
        """The worker's private (0700) folder: its socket and the queries' temporary files."""
        if self._tmp_dir is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
            (self._tmp_dir / "pid").write_text(str(os.getpid()))
        return self._tmp_dir


def _watch_parent(worker: Worker, parent: int) -> None:
    """Stop when Orthanc goes away: stdin EOF (the plugin's pipe) or a new parent pid."""
    def stdin_eof() -> None:
        try:
            sys.stdin.buffer.read()
        except (OSError, ValueError):
            pass
        worker.stop.set()

    def parent_gone() -> None:
        while not worker.stop.wait(1.0):
            if os.getppid() != parent:
                worker.stop.set()

    threading.Thread(target=stdin_eof, daemon=True).start()
    threading.Thread(target=parent_gone, daemon=True).start()


def remove_stale_folders() -> None:
    """Remove the private folders of workers that were killed (SIGKILL leaves them behind)."""
    for folder in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            if folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / "pid").read_text())
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue  # another worker starting up, or not ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medcbir.pacs.worker")
    parser.add_argument("--orthanc", required=True, help="loopback URL of Orthanc's REST API")
    parser.add_argument("--settings", required=True, help='the "Medcbir" section as JSON')
    parser.add_argument("--parent", type=int, default=os.getppid())
    args = parser.parse_args(argv)
    settings = PluginSettings.from_section(json.loads(args.settings))
    rest = OrthancRest(args.orthanc, token=os.environ.get(TOKEN_ENV) or None)
    worker = Worker(settings, rest)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    remove_stale_folders()
    authkey = bytes.fromhex(os.environ[AUTHKEY_ENV])
    # A Unix socket in a private (0700) folder: no TCP Nagle/delayed-ACK stalls on the small
    # request/answer messages (a visible delay per call over loopback TCP), and no port to pick.
    listener = Listener(str(worker.tmp / "link.sock"), family="AF_UNIX", authkey=authkey)
    worker._explainer = ExplainWorker(worker.index, settings.explain_encoder or settings.encoder, args.orthanc, os.environ.get(TOKEN_ENV) or None,
                                      waiting=settings.explain_queue, scratch=worker.tmp / "explain")
    threading.Thread(target=worker.serve, args=(listener,), daemon=True).start()
    print(f"READY {listener.address}", flush=True)
    threading.Thread(target=worker.preopen, name="preopen", daemon=True).start()
    _watch_parent(worker, args.parent)

    # torch/faiss threads: the worker shares the machine with Orthanc.
    try:
        import torch

        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
    except ImportError:
        pass
    runner = threading.Thread(target=worker.run, name="indexer", daemon=True)
    runner.start()
    while runner.is_alive() and not worker.stop.is_set():
        runner.join(0.5)
    worker.stop.set()
    runner.join(10.0)  # let a commit in progress finish; a kill here is still crash-safe
    listener.close()
    if worker.writer is not None and not runner.is_alive():
        try:
            worker.writer.close()
        except Exception:  # noqa: BLE001
            pass
    worker._explainer.close()
    shutil.rmtree(worker.tmp, ignore_errors=True)
    log("stopped")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
