"""The medcbir plugin script, loaded by Orthanc's Python plugin (``"PythonScript"``).

It runs inside Orthanc's embedded interpreter, where only the main interpreter may call the SDK
and callbacks must return fast, so it does as little as possible:

- the change callback appends each NEW_INSTANCE id to the durable queue in the index folder
  (one SQLite insert) and returns; a DELETED resource is recorded the same way, and the worker
  tombstones its items;
- a worker *process* (the venv's python, ``medcbir.pacs.worker``) fetches, decodes, embeds,
  commits and answers searches; it talks to Orthanc over loopback HTTP with a token from
  ``GenerateRestApiAuthorizationToken`` (so it works with authentication enabled);
- the REST routes under ``/medcbir/`` check the request's envelope with byte operations only
  (size, content type, origin, JSON nesting: :mod:`medcbir.pacs.request_body`), forward the raw
  body to the worker, which parses and checks it, and wait with a timeout. No JSON parser runs
  on Orthanc's HTTP threads (their stacks are small: a deeply nested body crashed Orthanc).

Routes: ``GET /medcbir/status``, ``POST /medcbir/search``, ``POST /medcbir/explain``,
``POST /medcbir/reindex``, ``GET /medcbir/render/<instance>`` (the instance in its reading window,
PNG), and the viewer page ``GET /medcbir/ui/`` (``medcbir.pacs.viewer_page``).
A POST is ``Content-Type: application/json`` or ``application/dicom``. Orthanc does not pass
query-string arguments of POST requests to plugins, so options of a raw-DICOM body travel in
headers: ``X-Medcbir-K``, ``X-Medcbir-Exclude``, ``X-Medcbir-Modality``, ``X-Medcbir-Format``
(or use a JSON body).

Only the standard library and medcbir's stdlib-only modules are imported here.
"""

import json
import sys

import orthanc  # provided by Orthanc's Python plugin


def _section() -> dict:
    return json.loads(orthanc.GetConfiguration()).get("Medcbir", {})


def _prepare_path() -> None:
    # The repo holds the ``medcbir`` package; the venv's site-packages go *after* the system
    # paths so nothing there shadows the embedded interpreter's own standard library.
    section = _section()
    repo = section.get("Repo")
    if repo and repo not in sys.path:
        sys.path.insert(0, repo)
    site = section.get("SitePackages")
    if site and site not in sys.path:
        sys.path.append(site)


_prepare_path()

from medcbir.pacs.instance_queue import InstanceQueue  # noqa: E402
from medcbir.pacs.orthanc_config import PluginSettings  # noqa: E402
from medcbir.pacs.request_body import FORWARDED_HEADERS, check_envelope, check_origin  # noqa: E402
from medcbir.pacs.request_rules import BadRequest, without_paths  # noqa: E402
from medcbir.pacs.viewer_page import ui_file  # noqa: E402
from medcbir.pacs.worker_link import WorkerProcess, WorkerUnavailable  # noqa: E402


LEVELS = {orthanc.ResourceType.PATIENT: "patient", orthanc.ResourceType.STUDY: "study",
          orthanc.ResourceType.SERIES: "series", orthanc.ResourceType.INSTANCE: "instance"}


class MedcbirPlugin:
    """State of the plugin: settings, the durable queue and the worker process."""

    def __init__(self) -> None:
        config = json.loads(orthanc.GetConfiguration())
        self.settings = PluginSettings.from_section(config.get("Medcbir", {}))
        self.queue = InstanceQueue(self.settings.queue_path)
        port = int(config.get("HttpPort", 8042))
        self.loopback_only = not config.get("RemoteAccessAllowed", False)
        scheme = "https" if config.get("SslEnabled") else "http"
        token = ""
        if hasattr(orthanc, "GenerateRestApiAuthorizationToken"):
            token = orthanc.GenerateRestApiAuthorizationToken()
        self.worker = WorkerProcess(
            python=self.settings.python, repo=self.settings.repo,
            settings_json=json.dumps(self.settings.to_section()),
            orthanc_url=f"{scheme}://127.0.0.1:{port}", token=token, log=orthanc.LogWarning,
        )

    # -- change callback -------------------------------------------------------------------
    def on_change(self, change_type, level, resource_id) -> None:
        if change_type == orthanc.ChangeType.NEW_INSTANCE:
            self.queue.enqueue([resource_id])
        elif change_type == orthanc.ChangeType.DELETED:
            # The worker tombstones the items of a deleted instance (or, for a series, study
            # or patient, of every instance Orthanc no longer holds).
            self.queue.mark_deleted(LEVELS.get(level, "unknown"), resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            # Orthanc's REST API answers from now on: the worker reconciles and starts.
            self.worker.start()
            orthanc.LogWarning("medcbir: worker started (index %s)" % self.settings.index)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            self.worker.stop(grace=5.0)
            self.queue.close()

    # -- REST ------------------------------------------------------------------------------
    def on_rest(self, output, uri, **request) -> None:
        route = request["groups"][0]
        method = request["method"]
        headers = request.get("headers") or {}
        try:
            self.check_origin(headers)
            if route == "status":
                if method != "GET":
                    return output.SendMethodNotAllowed("GET")
                return self._answer(output, self._status())
            if method != "POST":
                return output.SendMethodNotAllowed("POST")
            body = request.get("body") or b""
            check_envelope(headers, body, self.settings.max_body_bytes)
            forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
            reply = self.worker.call(route, self.settings.search_timeout, body=bytes(body), headers=forwarded)
        except WorkerUnavailable as exc:
            return self._error(output, 503, str(exc))
        except BadRequest as exc:
            return self._error(output, exc.status, str(exc).splitlines()[0] if str(exc) else "bad request")
        if not reply.get("ok"):
            return self._error(output, int(reply.get("status", 500)), reply.get("error", "worker error"))
        if "body" in reply:
            output.AnswerBuffer(reply["body"], reply.get("mime", "application/octet-stream"))
        else:
            self._answer(output, reply["result"])

    def check_origin(self, headers: dict) -> None:
        check_origin(headers, allowed=self.settings.allowed_origins, loopback_only=self.loopback_only)

    def _status(self) -> dict:
        status = {"worker": "down", "index": self.settings.index, "encoder": {"source": self.settings.encoder}}
        try:
            reply = self.worker.call("status", 10.0, {})
            if reply.get("ok"):
                status.update(reply["result"])
        except WorkerUnavailable as exc:
            status["worker"] = "down" if self.worker.proc is not None and not self.worker.alive() else "starting"
            status["detail"] = str(exc)
        status["worker_restarts"] = self.worker.restarts
        # The queue is read here, not in the worker, so it is exact even while the worker works.
        status.update(self.queue.counts())
        return status

    @staticmethod
    def _answer(output, result) -> None:
        output.AnswerBuffer(json.dumps(result, indent=2), "application/json")

    @staticmethod
    def _error(output, status: int, message: str) -> None:
        # SendHttpStatus takes (status, str body, its size) and refuses 200/3xx/401/405;
        # json.dumps escapes to ASCII, so characters == bytes.
        body = json.dumps({"error": without_paths(message)})
        output.SendHttpStatus(status, body, len(body))


def on_render(output, uri, **request) -> None:
    """``GET /medcbir/render/<instance>``: the instance as PNG at its stored resolution in its
    reading window (rendered by the worker)."""
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    try:
        _plugin.check_origin(request.get("headers") or {})
        reply = _plugin.worker.call("render", _plugin.settings.search_timeout, {"instance": request["groups"][0]})
    except WorkerUnavailable as exc:
        return MedcbirPlugin._error(output, 503, str(exc))
    except BadRequest as exc:
        return MedcbirPlugin._error(output, exc.status, str(exc))
    if not reply.get("ok"):
        return MedcbirPlugin._error(output, int(reply.get("status", 500)), reply.get("error", "worker error"))
    output.AnswerBuffer(reply["body"], reply.get("mime", "image/png"))


def on_ui(output, uri, **request) -> None:
    """``GET /medcbir/ui/<file>``: the viewer page's files (a fixed list)."""
    if request["method"] != "GET":
        return output.SendMethodNotAllowed("GET")
    try:
        _plugin.check_origin(request.get("headers") or {})
    except BadRequest as exc:
        return MedcbirPlugin._error(output, exc.status, str(exc))
    groups = request.get("groups") or ("",)
    found = ui_file(groups[0] if groups else "")
    if found is None:
        body = json.dumps({"error": "no such file"})
        return output.SendHttpStatus(404, body, len(body))
    output.AnswerBuffer(*found)


_plugin = MedcbirPlugin()
orthanc.RegisterOnChangeCallback(_plugin.on_change)
orthanc.RegisterRestCallback("/medcbir/(status|search|explain|reindex)", _plugin.on_rest)
orthanc.RegisterRestCallback("/medcbir/ui/(.*)", on_ui)
orthanc.RegisterRestCallback("/medcbir/render/([^/]*)", on_render)
# Orthanc drops a trailing slash: /medcbir/ui/ arrives here as /medcbir/ui, and the page itself
# moves the browser to the slashed URL so that its relative links resolve under /medcbir/ui/.
orthanc.RegisterRestCallback("/medcbir/ui", on_ui)
