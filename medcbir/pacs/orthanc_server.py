"""Run a private Orthanc (never the system service) with a generated configuration.

Used by the tests and the load benchmark; also handy for an administrator trying the plugin:
``OrthancServer(config_path).start()`` launches ``Orthanc CONFIG`` and waits until both the REST
API and the plugin's ``/medcbir/status`` answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from medcbir.errors import ConfigError, MedcbirError
from medcbir.pacs.orthanc_rest import OrthancRest


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_binary() -> str:
    path = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
    if path is None:
        raise ConfigError("Orthanc is not installed (apt-get install orthanc orthanc-python orthanc-dicomweb)")
    return path


class OrthancServer:
    """One Orthanc process started from a configuration file.

    Args:
        config_path: the JSON configuration (e.g. from ``medcbir orthanc-config``).
        log_path: where Orthanc's output goes (default: next to the configuration).
        auth: ``(user, password)`` when the configuration enables authentication.
    """

    def __init__(self, config_path: str | Path, log_path: str | Path | None = None, auth: tuple[str, str] | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = json.loads(self.config_path.read_text())
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        if auth is None and self.config.get("AuthenticationEnabled") and self.config.get("RegisteredUsers"):
            auth = next(iter(self.config["RegisteredUsers"].items()))
        self.auth = auth
        self.url = f"http://127.0.0.1:{self.config.get('HttpPort', 8042)}"
        self.rest = OrthancRest(self.url, auth=auth)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, wait_plugin: bool = True) -> "OrthancServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([orthanc_binary(), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MedcbirError(f"Orthanc exited with status {self.proc.returncode}; see {self.log_path}")
            if self.rest.alive() and (not wait_plugin or self._plugin_up()):
                return self
            time.sleep(0.2)
        self.stop()
        raise MedcbirError(f"Orthanc did not start within {timeout:.0f} s; see {self.log_path}")

    def _plugin_up(self) -> bool:
        import requests

        try:
            resp = self.rest.session.get(self.url + "/medcbir/status", timeout=10)
        except requests.RequestException:  # the plugin still starting its worker (slow under load): ask again
            return False
        return resp.ok and resp.json().get("worker") in ("running", "failed")

    def status(self) -> dict:
        resp = self.rest.session.get(self.url + "/medcbir/status", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop Orthanc (SIGTERM: its normal shutdown, which also stops the plugin's worker)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> "OrthancServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# storescu proposes uncompressed syntaxes unless told otherwise, and one compressed family per
# run: files are sent grouped by their transfer syntax, each group with its own option.
_STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.90": "-xv",   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",   # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",      # RLE lossless
    "1.2.840.10008.1.2.4.70": "-xs",   # JPEG lossless SV1
    "1.2.840.10008.1.2.4.50": "-xy",   # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",   # JPEG extended
    "1.2.840.10008.1.2.4.80": "-xt",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",   # JPEG-LS near-lossless
    "1.2.840.10008.1.2.1.99": "-xd",   # deflated
}


def storescu_commands(port: int, files, aet: str = "ORTHANC", calling_aet: str = "MEDCBIR-SCU", host: str = "127.0.0.1") -> list[list[str]]:
    """dcmtk ``storescu`` command lines that C-STORE ``files`` without transcoding them.

    Args:
        port: the SCP's DICOM port.
        files: DICOM files.
        aet: the SCP's AE title.
        calling_aet: our AE title.
        host: the SCP's host.
    """
    import pydicom

    binary = shutil.which("storescu")
    if binary is None:
        raise ConfigError("storescu is not installed (apt-get install dcmtk)")
    groups: dict[str, list[str]] = {}
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.get("TransferSyntaxUID", ""))
        groups.setdefault(_STORESCU_PROPOSE.get(syntax, ""), []).append(str(path))
    commands = []
    for option, paths in sorted(groups.items()):
        commands.append([binary, *([option] if option else []), "-aec", aet, "-aet", calling_aet, host, str(port), *paths])
    return commands


def storescu(port: int, files, aet: str = "ORTHANC", **kwargs) -> None:
    """C-STORE ``files`` to ``host:port`` (see :func:`storescu_commands`); raises on failure."""
    for cmd in storescu_commands(port, files, aet=aet, **kwargs):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or "E: " in proc.stderr:
            raise MedcbirError(f"storescu failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-300:]}")
