"""The ``"Medcbir"`` section of Orthanc's JSON configuration, and a ready-to-run configuration.

This module is imported by the plugin script inside Orthanc's embedded interpreter, so it uses
the standard library only (no numpy, no torch): the heavy work happens in the worker process.

The section, with its defaults::

    "Medcbir": {
      "Index": "/data/index",          # the medcbir index folder (created on first commit)
      "Encoder": "default",            # checkpoint / .onnx / "default"
      "Window": null,                  # optional check: the encoder's windows must match
      "BatchSize": 16,                 # items per forward pass and per commit
      "FlushSeconds": 2.0,             # commit a partial batch after this long
      "Workers": 2,                    # fetch+decode threads in the worker
      "Venv": "/opt/medcbir/.venv",    # virtualenv whose python runs the worker
      "Python": ".../bin/python",      # that interpreter (derived from Venv if absent)
      "SitePackages": ".../site-packages",
      "Repo": "/opt/medcbir",          # folder holding the ``medcbir`` package
      "SearchTimeout": 120.0           # seconds a REST call waits for the worker
    }
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medcbir.errors import ConfigError

QUEUE_FILE = "orthanc-queue.sqlite"
SOURCE_PREFIX = "orthanc://"
DEFAULT_PLUGIN_DIR = "/usr/share/orthanc/plugins"


def instance_uri(instance_id: str) -> str:
    """The ``source`` an item indexed from Orthanc records: ``orthanc://<instance-id>``."""
    return SOURCE_PREFIX + instance_id


def instance_of(source: str) -> str | None:
    """The Orthanc instance id in a ``source`` URI, or None for items indexed elsewhere."""
    return source[len(SOURCE_PREFIX):] if source.startswith(SOURCE_PREFIX) else None


@dataclass
class PluginSettings:
    """The ``"Medcbir"`` configuration section, validated.

    Args:
        index: index folder.
        encoder: encoder checkpoint, ``.onnx`` file or ``"default"``.
        window: windows the encoder must have been trained with (a check; preprocessing is
            part of the model and cannot be overridden), or None.
        batch_size: items per forward pass and per commit.
        flush_seconds: commit a partial batch after this many seconds without new items.
        workers: fetch+decode threads in the worker process.
        venv: the virtualenv the worker runs in.
        python: its interpreter.
        site_packages: its site-packages folder.
        repo: folder holding the ``medcbir`` package.
        search_timeout: seconds a REST call waits for the worker's answer.
        shard_size: passed to the index writer.
        device: ``"auto"`` or ``"cpu"``/``"cuda"``.
    """

    index: str
    encoder: str = "default"
    window: list[str] | None = None
    batch_size: int = 16
    flush_seconds: float = 2.0
    workers: int = 2
    venv: str = ""
    python: str = ""
    site_packages: str = ""
    repo: str = ""
    search_timeout: float = 120.0
    shard_size: int = 4096
    device: str = "auto"
    extra: dict = field(default_factory=dict)

    KEYS = {
        "Index": "index", "Encoder": "encoder", "Window": "window", "BatchSize": "batch_size",
        "FlushSeconds": "flush_seconds", "Workers": "workers", "Venv": "venv", "Python": "python",
        "SitePackages": "site_packages", "Repo": "repo", "SearchTimeout": "search_timeout",
        "ShardSize": "shard_size", "Device": "device",
    }

    @classmethod
    def from_section(cls, section: dict) -> "PluginSettings":
        """Parse and check the ``"Medcbir"`` section of an Orthanc configuration."""
        if not isinstance(section, dict) or not section.get("Index"):
            raise ConfigError('the Orthanc configuration needs a "Medcbir" section with "Index"')
        values: dict = {}
        extra = {}
        for key, value in section.items():
            if key in cls.KEYS:
                values[cls.KEYS[key]] = value
            else:
                extra[key] = value
        settings = cls(**values, extra=extra)
        if isinstance(settings.window, str):
            settings.window = [settings.window]
        for name in ("batch_size", "workers", "shard_size"):
            if int(getattr(settings, name)) < 1:
                raise ConfigError(f'"Medcbir" setting {name} must be >= 1')
            setattr(settings, name, int(getattr(settings, name)))
        settings.flush_seconds = float(settings.flush_seconds)
        settings.search_timeout = float(settings.search_timeout)
        if settings.venv and not settings.python:
            settings.python = str(Path(settings.venv) / "bin" / "python")
        if not settings.python:
            settings.python = sys.executable
        return settings

    def to_section(self) -> dict:
        """The JSON section (Orthanc's CamelCase keys)."""
        values = asdict(self)
        section = {key: values[attr] for key, attr in self.KEYS.items()}
        section.update(self.extra)
        return section

    @property
    def queue_path(self) -> Path:
        return Path(self.index) / QUEUE_FILE


def current_environment() -> dict:
    """Paths of the running interpreter: venv, python, site-packages, repo."""
    in_venv = sys.prefix != sys.base_prefix
    return {
        "venv": sys.prefix if in_venv else "",
        "python": str(Path(sys.prefix) / "bin" / "python") if in_venv else sys.executable,
        "site_packages": sysconfig.get_paths()["purelib"],
        # this file is REPO/medcbir/pacs/orthanc_config.py
        "repo": str(Path(__file__).resolve().parents[2]),
    }


def build_config(
    index: str | Path,
    encoder: str,
    *,
    http_port: int = 8042,
    dicom_port: int = 4242,
    storage: str | Path | None = None,
    aet: str = "MEDCBIR",
    name: str = "medcbir",
    user: str | None = None,
    remote: bool = False,
    plugin_dir: str | Path = DEFAULT_PLUGIN_DIR,
    batch_size: int = 16,
    flush_seconds: float = 2.0,
    workers: int = 2,
    window: list[str] | None = None,
    device: str = "auto",
) -> dict:
    """A complete Orthanc configuration running the medcbir plugin.

    Args:
        index: the medcbir index folder the plugin fills and searches.
        encoder: encoder checkpoint, ``.onnx`` file or ``"default"``.
        http_port: Orthanc's HTTP port (REST, DICOMweb, ``/medcbir/...``).
        dicom_port: Orthanc's DICOM (C-STORE) port.
        storage: Orthanc's storage folder.
        aet: Orthanc's DICOM application entity title.
        name: Orthanc's name.
        user: ``"name:password"`` to enable HTTP authentication with that user; without it the
            HTTP server is reachable from loopback only and needs no password.
        remote: accept HTTP/DICOM connections from other hosts (needs ``user``).
        plugin_dir: folder holding ``libOrthancPython.so`` (and ``libOrthancDicomWeb.so``).
        batch_size: items per forward pass and commit.
        flush_seconds: commit a partial batch after this long.
        workers: fetch+decode threads in the worker.
        window: windows the encoder must use (a check), or None.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    index = Path(index).resolve()
    if remote and not user:
        raise ConfigError("--remote needs --user NAME:PASSWORD (never expose Orthanc without authentication)")
    if not (1 <= http_port <= 65535 and 1 <= dicom_port <= 65535):
        raise ConfigError("ports must be between 1 and 65535")
    if not aet or len(aet) > 16:
        raise ConfigError("the AE title must have 1 to 16 characters")
    plugin_dir = Path(plugin_dir)
    python_plugin = plugin_dir / "libOrthancPython.so"
    if not python_plugin.exists():
        raise ConfigError(f"{python_plugin} not found (install orthanc-python)")
    plugins = [str(python_plugin)]
    dicomweb = plugin_dir / "libOrthancDicomWeb.so"
    if dicomweb.exists():
        plugins.append(str(dicomweb))
    from medcbir.train.encoder import is_builtin

    if not is_builtin(encoder):
        encoder_path = Path(encoder).resolve()
        if not encoder_path.exists():
            raise ConfigError(f"encoder {encoder} not found")
        encoder = str(encoder_path)
    env = current_environment()
    storage = Path(storage).resolve() if storage else index.parent / "orthanc-storage"
    settings = PluginSettings(
        index=str(index), encoder=encoder, window=window, batch_size=batch_size,
        flush_seconds=flush_seconds, workers=workers, device=device, **env,
    )
    config = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": int(http_port),
        "DicomPort": int(dicom_port),
        "DicomAet": aet,
        "RemoteAccessAllowed": bool(remote),
        "DicomCheckCalledAet": False,
        "Plugins": plugins,
        "PythonScript": str(Path(env["repo"]) / "medcbir" / "pacs" / "orthanc_plugin.py"),
        "PythonVerbose": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        "Medcbir": settings.to_section(),
    }
    if user:
        if ":" not in user:
            raise ConfigError("--user must be NAME:PASSWORD")
        login, password = user.split(":", 1)
        config["AuthenticationEnabled"] = True
        config["RegisteredUsers"] = {login: password}
    else:
        config["AuthenticationEnabled"] = False
    return config


def write_config(out: str | Path, config: dict) -> Path:
    """Write ``config`` as JSON (mode 0600: it may hold a password)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, out)
    return out
