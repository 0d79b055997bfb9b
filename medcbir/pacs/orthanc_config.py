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
      "SearchTimeout": 120.0,          # seconds a REST call waits for the worker
      "MaxK": 100,                     # neighbours per search query (also <= the index size)
      "MaxExplainK": 10,               # neighbours per explain request
      "MaxMasks": 5000,                # RELAX masks per explain request
      "MaxQueries": 8,                 # query instances per search request
      "MaxBodyBytes": 67108864,        # request body (a posted DICOM) in bytes
      "RequestSeconds": 60.0,          # a request waiting longer than this for the engine: 503
      "RequestMemoryMB": 1024,         # a request estimated to need more memory: 400
      "MaxDecodeMB": 1024,             # a DICOM whose decoding would cost more is refused/skipped
      "ExplainQueue": 2,               # explanations waiting behind the running one (more: 503)
      "AllowedOrigins": [],            # browser origins besides Orthanc's own allowed to call
      "Regions": true                  # a new index stores region descriptors (region search)
    }

A request over a bound is refused with HTTP 400 and a one-line reason (see
:mod:`medcbir.pacs.request_rules`); the body's envelope (size, content type, origin, JSON
nesting) is checked by :mod:`medcbir.pacs.request_body`.
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
        max_k: most neighbours a search query may ask for (k is also capped by the index size).
        max_explain_k: most neighbours an explain request may ask for.
        max_masks: most RELAX masks an explain request may ask for.
        max_queries: most query instances in one search request.
        max_body_bytes: largest request body (a posted DICOM file) accepted.
        request_seconds: longest a request waits for the engine (busy with another) before a 503.
        request_memory_mb: largest estimated working memory of one request.
        max_decode_mb: largest decoding cost (``medcbir.imaging.dicom.decode_cost``) of a DICOM
            the worker indexes or queries with; a costlier one is skipped (``too-large``) or
            refused (400) from its header, before any pixel is decoded.
        explain_queue: explanations that may wait behind the running one; one more is
            answered 503 at once.
        allowed_origins: browser origins (``https://viewer.example:443``) allowed to call the
            routes besides Orthanc's own; any other ``Origin`` is refused (403).
        explain_encoder: a torch checkpoint (or spec) with the index's fingerprint that the
            explanations use, so gradient methods (Grad-CAM, ...) run when ``encoder`` is an
            ONNX export; "" = explanations use ``encoder`` (RELAX and occlusion only on ONNX).
        regions: a new index stores each image's region descriptors, so ``"roi"`` queries work
            (``false``: no region extraction, faster indexing, no region search); an existing
            index keeps what it was built with.
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
    max_k: int = 100
    max_explain_k: int = 10
    max_masks: int = 5000
    max_queries: int = 8
    max_body_bytes: int = 64 * 1024 * 1024
    request_seconds: float = 60.0
    request_memory_mb: int = 1024
    max_decode_mb: int = 1024
    explain_queue: int = 2
    allowed_origins: list[str] = field(default_factory=list)
    explain_encoder: str = ""
    regions: bool = True
    extra: dict = field(default_factory=dict)

    KEYS = {
        "Index": "index", "Encoder": "encoder", "Window": "window", "BatchSize": "batch_size",
        "FlushSeconds": "flush_seconds", "Workers": "workers", "Venv": "venv", "Python": "python",
        "SitePackages": "site_packages", "Repo": "repo", "SearchTimeout": "search_timeout",
        "ShardSize": "shard_size", "Device": "device", "MaxK": "max_k", "MaxExplainK": "max_explain_k",
        "MaxMasks": "max_masks", "MaxQueries": "max_queries", "MaxBodyBytes": "max_body_bytes",
        "RequestSeconds": "request_seconds", "RequestMemoryMB": "request_memory_mb",
        "MaxDecodeMB": "max_decode_mb", "ExplainQueue": "explain_queue", "AllowedOrigins": "allowed_origins",
        "ExplainEncoder": "explain_encoder", "Regions": "regions",
    }
    LIMITS = ("MaxK", "MaxExplainK", "MaxMasks", "MaxQueries", "MaxBodyBytes", "RequestSeconds", "RequestMemoryMB")

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
        for name in ("batch_size", "workers", "shard_size", "max_k", "max_explain_k", "max_masks", "max_queries",
                     "max_body_bytes", "request_memory_mb", "max_decode_mb"):
            if int(getattr(settings, name)) < 1:
                raise ConfigError(f'"Medcbir" setting {name} must be >= 1')
            setattr(settings, name, int(getattr(settings, name)))
        if not isinstance(settings.regions, bool):
            raise ConfigError('"Medcbir" setting Regions must be true or false')
        settings.explain_queue = int(settings.explain_queue)
        if settings.explain_queue < 0:
            raise ConfigError('"Medcbir" setting ExplainQueue must be >= 0')
        origins = settings.allowed_origins
        if not isinstance(origins, list) or not all(isinstance(o, str) and "://" in o for o in origins):
            raise ConfigError('"Medcbir" setting AllowedOrigins must be a list of origins such as "https://viewer.example"')
        settings.allowed_origins = [o.strip().rstrip("/").lower() for o in origins]
        settings.flush_seconds = float(settings.flush_seconds)
        settings.search_timeout = float(settings.search_timeout)
        settings.request_seconds = float(settings.request_seconds)
        if settings.request_seconds <= 0:
            raise ConfigError('"Medcbir" setting RequestSeconds must be > 0')
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

    def limits(self) -> dict:
        """The request bounds by their configuration names (for :func:`check_request`)."""
        return {key: getattr(self, self.KEYS[key]) for key in self.LIMITS}

    @property
    def max_decode_bytes(self) -> int:
        return self.max_decode_mb * 1024 * 1024

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
    modalities: dict[str, tuple[str, str, int]] | None = None,
    allow_any_store: bool = False,
    plugin_settings: dict | None = None,
    explain_encoder: str | None = None,
    regions: bool = True,
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
        plugin_dir: folder holding ``libOrthancPython.so`` (and ``libOrthancDicomWeb.so``,
            ``libOrthancGdcm.so`` when installed).
        batch_size: items per forward pass and commit.
        flush_seconds: commit a partial batch after this long.
        workers: fetch+decode threads in the worker.
        window: windows the encoder must use (a check), or None.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        modalities: the DICOM modalities allowed to C-STORE into Orthanc: name →
            ``(AE title, IP address, port)``. Orthanc checks the calling AE title *and* the
            peer's address (``DicomCheckModalityHost``) and its own called AE title.
        allow_any_store: accept C-STORE from any host and AE title (Orthanc's default; every
            stored image is indexed). Off by default.
        plugin_settings: more ``"Medcbir"`` keys (e.g. ``{"MaxK": 50}``), checked.
        explain_encoder: a torch checkpoint with the index encoder's fingerprint for the
            explanations (gradient methods on an ONNX index), or None.
        regions: a new index stores region descriptors (``"Regions"``; False skips region
            extraction: faster indexing, no region search).
    """
    index = Path(index).resolve()
    if remote and user is None:
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
    # GDCM decodes what Orthanc's built-in DCMTK cannot (JPEG 2000, JPEG-LS) for its previews
    # and viewer (the medcbir viewer page shows those previews); medcbir decodes on its own.
    gdcm = plugin_dir / "libOrthancGdcm.so"
    if gdcm.exists():
        plugins.append(str(gdcm))
    # here, not at the top: Orthanc's embedded interpreter imports this module (standard library
    # only), and the encoder spec module needs numpy
    from medcbir.encoders.spec import canonical_source

    encoder = canonical_source(encoder)  # absolute: the worker runs in Orthanc's folder
    env = current_environment()
    storage = Path(storage).resolve() if storage else index.parent / "orthanc-storage"
    settings = PluginSettings(
        index=str(index), encoder=encoder, window=window, batch_size=batch_size,
        flush_seconds=flush_seconds, workers=workers, device=device,
        explain_encoder=canonical_source(explain_encoder) if explain_encoder else "", regions=bool(regions), **env,
    )
    if plugin_settings:
        settings = PluginSettings.from_section({**settings.to_section(), **plugin_settings})
    config = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": int(http_port),
        "DicomPort": int(dicom_port),
        "DicomAet": aet,
        "RemoteAccessAllowed": bool(remote),
        # Orthanc's defaults accept a C-STORE from any host, and medcbir indexes whatever is
        # stored: only the listed modalities may store, from their address, to our AE title.
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": bool(allow_any_store),
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomModalities": dicom_modalities(modalities or {}),
        "Plugins": plugins,
        "PythonScript": str(Path(env["repo"]) / "medcbir" / "pacs" / "orthanc_plugin.py"),
        "PythonVerbose": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        "Medcbir": settings.to_section(),
    }
    if user is not None:
        login, colon, password = user.partition(":")
        # An empty name or password is a login anyone can guess.
        if not colon or not login.strip() or not password.strip():
            raise ConfigError("--user must be NAME:PASSWORD with a non-empty name and password")
        config["AuthenticationEnabled"] = True
        config["RegisteredUsers"] = {login: password}
    else:
        config["AuthenticationEnabled"] = False
    return config


def parse_modality(text: str) -> tuple[str, tuple[str, str, int]]:
    """``[NAME=]AET@IP:PORT`` (the ``--modality`` option) → ``(name, (aet, ip, port))``.

    Raises:
        ConfigError: not of that form, an AE title over 16 characters, or a host that is not an
            IP address (Orthanc's ``DicomCheckModalityHost`` compares addresses, not names).
    """
    import ipaddress

    name, _, rest = text.rpartition("=")
    aet, at, address = rest.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and aet and host and port.isdigit()):
        raise ConfigError(f"--modality must be [NAME=]AET@IP:PORT, not {text!r}")
    if len(aet) > 16:
        raise ConfigError(f"the AE title {aet!r} has more than 16 characters")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--modality needs an IP address (Orthanc checks the peer's address), not {host!r}") from None
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"--modality port {port} is not between 1 and 65535")
    return (name or aet.lower()), (aet, host, int(port))


def dicom_modalities(modalities: dict[str, tuple[str, str, int]]) -> dict:
    """Orthanc's ``"DicomModalities"``: each may C-STORE (and C-ECHO), nothing else."""
    return {
        name: {"AET": aet, "Host": host, "Port": int(port), "AllowEcho": True, "AllowStore": True,
               "AllowFind": False, "AllowMove": False, "AllowGet": False}
        for name, (aet, host, port) in modalities.items()
    }


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
