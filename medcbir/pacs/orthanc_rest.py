"""A small client for the parts of Orthanc's REST API that medcbir uses.

The worker uses it to list and fetch instances and to map items to Orthanc's instance, series
and study ids; the tests and the load benchmark use it to talk to a running Orthanc.
"""

from __future__ import annotations

from functools import lru_cache

import requests

from medcbir.errors import ArchiveNotFound
from medcbir.pacs.request_rules import orthanc_id


class OrthancRest:
    """Loopback HTTP access to Orthanc.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8042``.
        token: value for the ``Authorization`` header (the plugin's
            ``GenerateRestApiAuthorizationToken``), or None.
        auth: ``(user, password)`` for HTTP basic authentication, or None.
        timeout: seconds per request.
    """

    def __init__(self, url: str, *, token: str | None = None, auth: tuple[str, str] | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = token
        if auth:
            self.session.auth = auth
        self._parents = lru_cache(maxsize=65536)(self._parents_uncached)

    def _get(self, path: str, **kwargs) -> requests.Response:
        try:
            return self.session.get(self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ArchiveNotFound(f"cannot reach Orthanc at {self.url}: {exc.__class__.__name__}") from exc

    def get_json(self, path: str, **kwargs):
        resp = self._get(path, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, data=None, json=None, headers=None, timeout: float | None = None) -> requests.Response:
        return self.session.post(self.url + path, data=data, json=json, headers=headers, timeout=timeout or self.timeout)

    def alive(self) -> bool:
        try:
            return self.session.get(self.url + "/system", timeout=2).ok
        except requests.RequestException:
            return False

    def instances(self, page: int = 10000) -> list[str]:
        """Every instance id Orthanc holds (paged, so a large PACS is not one huge answer)."""
        out: list[str] = []
        since = 0
        while True:
            chunk = self.get_json("/instances", params={"since": since, "limit": page})
            out.extend(chunk)
            if len(chunk) < page:
                return out
            since += page

    def instance_file(self, instance: str) -> bytes | None:
        """The stored DICOM file, or None if Orthanc no longer has the instance.

        Raises:
            BadRequest: ``instance`` is not an Orthanc id (it is never put in a URL then).
        """
        orthanc_id(instance)
        resp = self._get(f"/instances/{instance}/file")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.content

    def _parents_uncached(self, instance: str) -> tuple[str, str] | None:
        orthanc_id(instance)
        resp = self._get(f"/instances/{instance}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        series = orthanc_id(resp.json()["ParentSeries"], "series")
        study = orthanc_id(self.get_json(f"/series/{series}")["ParentStudy"], "study")
        return series, study

    def parents(self, instance: str) -> tuple[str, str] | None:
        """``(series_id, study_id)`` of an instance (cached: Orthanc ids never change)."""
        return self._parents(instance)

    def lookup_sop(self, sop_instance_uid: str) -> str | None:
        """Orthanc's instance id for a SOP Instance UID, or None."""
        resp = self.post("/tools/lookup", data=sop_instance_uid)
        resp.raise_for_status()
        for hit in resp.json():
            if hit.get("Type") == "Instance":
                return hit["ID"]
        return None

    def tags(self, instance: str) -> dict | None:
        """The instance's tags as ``{keyword: value}`` (Orthanc's simplified tags), or None."""
        orthanc_id(instance)
        resp = self._get(f"/instances/{instance}/simplified-tags")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def store(self, data: bytes) -> dict:
        """Upload one DICOM file (``POST /instances``); Orthanc's answer (``ID``, ``ParentStudy``...)."""
        resp = self.post("/instances", data=data, headers={"Content-Type": "application/dicom"})
        resp.raise_for_status()
        return resp.json()

    def statistics(self) -> dict:
        return self.get_json("/statistics")
