"""The link between the plugin (inside Orthanc) and its worker process.

The worker listens on a Unix socket in a private folder with ``multiprocessing.connection``
(length-framed pickles, HMAC challenge with a per-start random key), announces
``READY <socket path>`` on its stdout,
and answers one request per connection: ``{"op": ..., "timeout": seconds, "body": bytes,
"headers": {...}}`` (the REST request as it came, parsed by the worker) or ``{"op": ...,
"args": {...}}`` (keys already parsed; the request's keys in their own dict, so no request key
can collide with ``op``) → ``{"ok": True, ...}`` or ``{"ok": False, "status": http_status,
"error": message}``. The plugin opens a connection per REST call and waits with a timeout, so a
slow search never blocks Orthanc's other threads (the wait releases the GIL); the worker gives
up the request's work once that timeout has passed or the connection is closed.

Standard library only (imported inside Orthanc's embedded interpreter).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from multiprocessing.connection import Client

AUTHKEY_ENV = "MEDCBIR_WORKER_AUTHKEY"
TOKEN_ENV = "MEDCBIR_ORTHANC_TOKEN"


class WorkerUnavailable(Exception):
    """The worker is not running (yet) or did not answer in time."""


class WorkerProcess:
    """Start, reach and stop the worker process (``python -m medcbir.pacs.worker``).

    Args:
        python: the venv interpreter that runs the worker.
        repo: folder holding the ``medcbir`` package (put on the worker's PYTHONPATH).
        settings_json: the ``"Medcbir"`` section as JSON.
        orthanc_url: loopback URL of Orthanc's REST API.
        token: value of the ``Authorization`` header the worker sends to Orthanc, or "".
        log: callable for one-line log messages (Orthanc's log inside the plugin).
    """

    def __init__(self, python: str, repo: str, settings_json: str, orthanc_url: str, token: str = "", log=print) -> None:
        self.python = python
        self.repo = repo
        self.settings_json = settings_json
        self.orthanc_url = orthanc_url
        self.token = token
        self.log = log
        self.authkey = os.urandom(32)
        self.address: str | None = None
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the worker, and a watchdog that restarts it if it dies unexpectedly."""
        self._spawn()
        threading.Thread(target=self._watchdog, name="medcbir-worker-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        # A crashed worker (OOM kill, segfault in a native library) is restarted with back-off;
        # the durable queue and the index's crash safety make the restart lossless.
        delay = 1.0
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None and not self._stopping.is_set():
                self.log(f"medcbir: worker exited with status {self.proc.returncode}; restarting in {delay:.0f} s")
                if self._stopping.wait(delay):
                    return
                self.restarts += 1
                self._spawn()
                delay = min(delay * 2, 60.0)

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = self.repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[AUTHKEY_ENV] = self.authkey.hex()
        env[TOKEN_ENV] = self.token
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [self.python, "-m", "medcbir.pacs.worker", "--orthanc", self.orthanc_url,
             "--settings", self.settings_json, "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        threading.Thread(target=self._read_stdout, name="medcbir-worker-stdout", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("READY "):
                self.address = line.split(" ", 1)[1]
                self._ready.set()
            elif line:
                self.log(line)
        self._ready.clear()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, timeout: float, args: dict | None = None, *, body: bytes | None = None,
             headers: dict | None = None) -> dict:
        """Send one request and wait for its answer (raises WorkerUnavailable).

        Args:
            op: ``status``, ``search``, ``explain`` or ``reindex``.
            timeout: seconds to wait for the answer (the worker's deadline too).
            args: the request's keys, when already parsed.
            body: the REST request's body, parsed by the worker (instead of ``args``).
            headers: the REST request's headers that go with ``body``.
        """
        if not self._ready.wait(timeout=min(timeout, 30.0)) or not self.alive():
            raise WorkerUnavailable("the medcbir worker is not running")
        try:
            conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
        except OSError as exc:
            raise WorkerUnavailable(f"cannot reach the medcbir worker: {exc}") from exc
        try:
            message = {"op": op, "timeout": float(timeout)}
            if body is not None:
                message.update(body=body, headers=dict(headers or {}))
            else:
                message["args"] = dict(args or {})
            conn.send(message)
            if not conn.poll(timeout):
                raise WorkerUnavailable(f"the medcbir worker did not answer within {timeout:.0f} s")
            return conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerUnavailable(f"the medcbir worker went away: {exc}") from exc
        finally:
            conn.close()

    def stop(self, grace: float = 10.0) -> None:
        """Ask the worker to stop (stdin EOF + SIGTERM), kill it after ``grace`` seconds."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        except OSError:
            pass
