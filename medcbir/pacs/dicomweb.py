"""A DICOMweb server as an archive for the indexer (``medcbir index dicomweb+http://HOST/dicom-web``).

QIDO-RS lists studies → series → instances; WADO-RS retrieves each instance; the bytes are
decoded in-process by :func:`medcbir.imaging.decode_bytes`. Every item records the source URI
``dicomweb+http://HOST/dicom-web/studies/<study>/series/<series>/instances/<sop>``, and the
indexer's ``skip_source`` predicate is asked *before* the retrieve, so a re-run downloads only
what is not committed yet (incremental).

Example::

    from medcbir.indexer import index_archive
    from medcbir.pacs.dicomweb import DicomwebSource

    index_archive(DicomwebSource("dicomweb+http://127.0.0.1:8042/dicom-web"), "index", "default")
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.imaging import decode_bytes
from medcbir.imaging.items import Decoded, SkipFile, WalkReport

SCHEME = "dicomweb+"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def _value(dataset: dict, tag: str) -> str | None:
    values = dataset.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pw@host/x`` → (``http://host/x``, (user, pw)): credentials never reach a source URI."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), (unquote(parts.username), unquote(parts.password or ""))


def _env_credentials() -> tuple[str, str] | None:
    import os

    user = os.environ.get("MEDCBIR_DICOMWEB_USER")
    return (user, os.environ.get("MEDCBIR_DICOMWEB_PASSWORD", "")) if user else None


class DicomwebSource:
    """The instances of a DICOMweb server, in a stable order (study, series, SOP UID).

    Credentials: ``auth``, else ``user:password@`` in the URL (removed from the recorded source
    URIs), else the ``MEDCBIR_DICOMWEB_USER`` / ``MEDCBIR_DICOMWEB_PASSWORD`` environment variables.

    Args:
        url: ``dicomweb+http(s)://[USER:PASSWORD@]HOST[:PORT]/ROOT`` (``dicomweb+`` optional here).
        workers: instances retrieved and decoded in parallel (threads).
        auth: ``(user, password)`` for HTTP basic authentication, or None.
        timeout: seconds per HTTP request.
        session: a ``requests.Session`` to use (e.g. with custom headers).
    """

    def __init__(self, url: str, workers: int = 4, auth: tuple[str, str] | None = None, timeout: float = 60.0, session=None) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        base = url[len(SCHEME):] if url.startswith(SCHEME) else url
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"not a DICOMweb URL: {url} (expected dicomweb+http://HOST/dicom-web)")
        base, url_auth = _split_credentials(base)
        auth = auth or url_auth or _env_credentials()
        self.base = base.rstrip("/")
        self.name = SCHEME + self.base
        self.workers = max(1, int(workers))
        self.report = WalkReport()
        session = session or requests.Session()
        if auth:
            session.auth = tuple(auth)
        self.session = session
        self.timeout = timeout
        self.client = DICOMwebClient(self.base, session=session, timeout=timeout)

    def _check_reachable(self) -> None:
        # dicomweb-client retries refused connections with back-off (~30 s); one plain request
        # first turns a wrong host/port into an immediate, one-line error.
        import requests

        try:
            resp = self.session.get(self.base + "/studies", params={"limit": 1}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ArchiveNotFound(f"cannot reach the DICOMweb server {self.base}: {exc.__class__.__name__}") from None
        if resp.status_code in (401, 403):
            raise ArchiveNotFound(f"the DICOMweb server {self.base} refused our credentials (HTTP {resp.status_code})")
        if resp.status_code >= 400 and resp.status_code != 204:
            raise ArchiveNotFound(f"{self.base} does not answer QIDO-RS (HTTP {resp.status_code})")

    def uri(self, study: str, series: str, sop: str) -> str:
        """The ``source`` an item from this server records."""
        return f"{self.name}/studies/{study}/series/{series}/instances/{sop}"

    def instances(self) -> list[tuple[str, str, str]]:
        """(study, series, sop) of every instance, sorted; QIDO-RS, paged by the client."""
        import requests

        self._check_reachable()
        out = []
        try:
            for study_ds in self.client.search_for_studies(fields=[STUDY_UID], get_remaining=True):
                study = _value(study_ds, STUDY_UID)
                if not study:
                    continue
                for series_ds in self.client.search_for_series(study, fields=[SERIES_UID], get_remaining=True):
                    series = _value(series_ds, SERIES_UID)
                    if not series:
                        continue
                    for inst in self.client.search_for_instances(study, series, fields=[SOP_UID], get_remaining=True):
                        sop = _value(inst, SOP_UID)
                        if sop:
                            out.append((study, series, sop))
        except requests.ConnectionError as exc:
            raise ArchiveNotFound(f"cannot reach the DICOMweb server {self.base}: {exc.__class__.__name__}") from None
        except requests.HTTPError as exc:
            raise ArchiveNotFound(f"the DICOMweb server {self.base} refused the search: {exc}") from None
        return sorted(set(out))

    def _retrieve(self, key: tuple[str, str, str], preprocessing, pseudonym_key: bytes | None):
        """(uri, decoded items | None, skip reason, detail) for one instance."""
        import pydicom

        study, series, sop = key
        uri = self.uri(study, series, sop)
        try:
            dataset = self.client.retrieve_instance(study, series, sop)
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=getattr(dataset, "file_meta", None) is not None)
            return uri, decode_bytes(buffer.getvalue(), uri, pseudonym_key, preprocessing), "", ""
        except SkipFile as exc:
            return uri, None, exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001 - one bad instance never stops the job
            return uri, None, "corrupt", f"retrieve/decode failed: {exc.__class__.__name__}: {exc}"

    def decoded(
        self,
        preprocessing,
        key: bytes | None,
        skip_source: Callable[[str], bool] | None = None,
    ) -> Iterator[Decoded]:
        """Decoded items of every instance not yet committed (see the Source protocol).

        Args:
            preprocessing: applied to every item.
            key: the pseudonym key.
            skip_source: True for a source URI already committed (it is not downloaded).
        """
        self.report = report = WalkReport()
        start = time.monotonic()
        todo = []
        for study, series, sop in self.instances():
            report.files += 1
            if skip_source is not None and skip_source(self.uri(study, series, sop)):
                report.passed += 1
            else:
                todo.append((study, series, sop))
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wado") as pool:
            # map keeps the stable order; at most ``workers`` retrieves run ahead of the consumer.
            window = self.workers * 2
            for lo in range(0, len(todo), window):
                for uri, decoded, reason, detail in pool.map(lambda k: self._retrieve(k, preprocessing, key), todo[lo:lo + window]):
                    if decoded is None:
                        report.count_skip(uri, reason, detail)
                        continue
                    report.count_items([d.meta for d in decoded])
                    report.elapsed_s = time.monotonic() - start
                    yield from decoded
        report.elapsed_s = time.monotonic() - start
