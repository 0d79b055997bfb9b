"""Fixtures for the PACS tests: a tiny phantom archive, a small encoder, a private Orthanc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import require_binary

USER = ("medcbir-test", "s3cret-pw")
# The only modality the test Orthancs accept C-STORE from (storescu below calls as PYTEST).
PYTEST_MODALITY = {"pytest": ("PYTEST", "127.0.0.1", 104)}


@pytest.fixture(scope="session")
def pacs_archive(tmp_path_factory) -> list[Path]:
    """3 patients × 10 slices at 64 px (real DICOM, mixed transfer syntaxes); sorted file list."""
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("pacs-phantom") / "archive"
    make_archive(out, patients=3, slices=10, seed=21, size=64)
    return sorted(out.rglob("*.dcm"))


@pytest.fixture(scope="session")
def load_archive(tmp_path_factory) -> list[Path]:
    """4 patients × 25 slices at 64 px = 100 instances, for the load test."""
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("pacs-load") / "archive"
    make_archive(out, patients=4, slices=25, seed=22, size=64)
    return sorted(out.rglob("*.dcm"))


@pytest.fixture(scope="session")
def small_encoder(tmp_path_factory) -> Path:
    """A random ResNet-18 encoder checkpoint with 64 px preprocessing (cheap forwards)."""
    from medcbir.imaging import Preprocessing
    from medcbir.encoders.checkpoint import save_checkpoint
    from medcbir.encoders.module import new_encoder_module

    path = tmp_path_factory.mktemp("pacs-encoder") / "enc64.pt"
    save_checkpoint(path, new_encoder_module("resnet18", Preprocessing(windows=("ct-liver-wide",), size=64), seed=3))
    return path


@pytest.fixture(scope="session")
def no_pixel_file(tmp_path_factory) -> Path:
    """A Basic Text SR (no PixelData): Orthanc stores it, the plugin must skip it with a reason."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SR-PATIENT"
    ds.PatientName = "Report^Only"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    path = tmp_path_factory.mktemp("pacs-sr") / "report.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.fixture
def browser():
    """Headless Chromium holding the test user's Orthanc credentials (an Authorization header on
    every request it makes), as a logged-in user's browser does."""
    import base64

    chromium, chromedriver = require_binary("chromium"), require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    token = base64.b64encode(":".join(USER).encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    try:
        yield driver
    finally:
        driver.quit()


def storescu(port: int, files, aet: str = "MEDCBIR") -> None:
    """C-STORE files with dcmtk's storescu (each file in its own transfer syntax)."""
    require_binary("storescu")
    from medcbir.pacs.orthanc_server import storescu as push

    push(port, files, aet=aet, calling_aet="PYTEST")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def _factory(tmp: Path):
    require_binary("Orthanc")
    from medcbir.pacs.orthanc_config import build_config, write_config
    from medcbir.pacs.orthanc_server import OrthancServer, free_port

    servers = []

    def start(index: Path, encoder: Path, name: str = "orthanc", config_path: Path | None = None, start_timeout: float = 90,
              **settings):
        """Start Orthanc + plugin (auth enabled with a test user) and wait for the worker.

        The plugin's new index stores no regions (``"Regions": false``: region extraction is a
        large share of the indexing time) unless ``regions=True``; region search through Orthanc is tested on
        servers that turn it on.
        """
        if config_path is None:
            settings.setdefault("modalities", PYTEST_MODALITY)
            settings.setdefault("regions", False)
            config = build_config(index, str(encoder), http_port=free_port(), dicom_port=free_port(),
                                  storage=tmp / f"{name}-storage", user=":".join(USER), **settings)
            config_path = write_config(tmp / f"{name}.json", config)
        server = OrthancServer(config_path, log_path=tmp / f"{name}.log")
        servers.append(server)
        server.start(timeout=start_timeout)
        return server

    return start, servers


@pytest.fixture
def orthanc_factory(tmp_path):
    """Start private Orthanc servers with the medcbir plugin; all are stopped at teardown."""
    start, servers = _factory(tmp_path)
    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def module_orthanc_factory(tmp_path_factory):
    """Like ``orthanc_factory``, shared by the tests of one module."""
    start, servers = _factory(tmp_path_factory.mktemp("orthanc"))
    yield start
    for server in servers:
        server.stop()


def _indexed_server(tmp_path_factory, name: str, archive, encoder, **settings):
    """A private Orthanc + plugin named ``name`` holding ``archive``, all indexed (a generator:
    yields the server, stops it after)."""
    start, servers = _factory(tmp_path_factory.mktemp(f"{name}-orthanc"))
    index = tmp_path_factory.mktemp(f"{name}-index") / "index"
    # generous: its worker imports torch while other test modules' servers may be busy too
    server = start(index, encoder, name=name, start_timeout=240, batch_size=8, flush_seconds=0.5, **settings)
    server.index = index
    try:
        storescu(server.config["DicomPort"], archive)
        wait_for(lambda: (lambda s: s.get("indexed") == len(archive) and s["queued"] == 0 and s["in_flight"] == 0)(server.status()),
                 timeout=240, what="the archive indexed")
        yield server
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="session")
def lesion_archive(tmp_path_factory) -> Path:
    """Phantom v3 (lesions of four kinds, ``lesion-boxes.csv``), 3 patients × 8 slices at 128 px:
    the archive folder."""
    from medcbir.imaging.phantom import make_archive

    out = tmp_path_factory.mktemp("lesion-phantom") / "archive"
    make_archive(out, patients=3, slices=8, seed=31, size=128, version=3)
    return out


@pytest.fixture(scope="session")
def results_archive(lesion_archive) -> list[Path]:
    """The files of ``lesion_archive``, sorted (what ``results_server`` holds)."""
    return sorted(lesion_archive.rglob("*.dcm"))


@pytest.fixture(scope="session")
def results_server(tmp_path_factory, results_archive, small_encoder):
    """A private Orthanc + plugin holding ``results_archive``, all indexed, with regions
    (``"Regions": true``): the DICOM-results and viewer tests (whole-image and region search)
    store medcbir's objects into it (the other plugin tests keep their own)."""
    yield from _indexed_server(tmp_path_factory, "results", results_archive, small_encoder, regions=True,
                               plugin_settings={"SearchTimeout": 600})


#: The hostile server's plugin settings: explanations give up after SearchTimeout, and one may
#: wait behind the running one.
HOSTILE_SETTINGS = {"SearchTimeout": 12, "ExplainQueue": 1}


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory, pacs_archive, small_encoder):
    """A private Orthanc + plugin holding ``pacs_archive``, all indexed, with a short
    ``SearchTimeout``: the hostile-request and REST fuzz tests send it what no client should."""
    yield from _indexed_server(tmp_path_factory, "hostile", pacs_archive, small_encoder, plugin_settings=HOSTILE_SETTINGS)
