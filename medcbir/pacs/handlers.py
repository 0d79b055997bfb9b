"""The plugin worker's request handlers: ``status``, ``search``, ``explain``, ``render``, ``reindex``.

:class:`RequestHandlers` is the request half of :class:`medcbir.pacs.worker.Worker`. Each request
from the plugin (:mod:`medcbir.pacs.worker_link`) is parsed and checked here
(:mod:`medcbir.pacs.request_body`, :mod:`medcbir.pacs.request_rules`), answered on an
:class:`~medcbir.engine.Engine` reopened when the index generation changes (at most once a
second, so a burst of commits does not reopen it for every search), and shaped for REST: Orthanc
ids and DICOM UIDs, never a file-system path. Explanations run in their own process
(:mod:`medcbir.pacs.explain_worker`). A failure is answered with the HTTP status of its exception
type (:func:`http_status`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Listener
from pathlib import Path

from medcbir.engine import Engine
from medcbir.engine.reading import NOTHING_SIMILAR, above_thresholds, context, header_context, similarity_record
from medcbir.errors import ConfigError, IndexCorrupt, IndexNotFound, MedcbirError
from medcbir.imaging import read_dicom
from medcbir.imaging.items import SkipFile
from medcbir.imaging.reading_window import windowed
from medcbir.indexer.manifest import committed_generation, read_manifest
from medcbir.pacs.deadline import Deadline, DeadlinePassed
from medcbir.pacs.dicom_store import store_search_kos
from medcbir.pacs.explain_route import explain_answer, explain_bytes
from medcbir.pacs.explain_worker import ExplainProcessLost, ExplainQueueFull
from medcbir.pacs.ingest import log
from medcbir.pacs.orthanc_config import instance_of, instance_uri
from medcbir.pacs.query_dicom import first_frame_query
from medcbir.pacs.request_body import request_arguments
from medcbir.pacs.request_rules import BadRequest, check_request, without_paths

ENGINE_REFRESH_SECONDS = 1.0


class UnknownInstance(MedcbirError):
    """The request names an instance Orthanc does not hold (answered with 404)."""

class EngineBusy(MedcbirError):
    """Another request held the engine longer than RequestSeconds (answered with 503)."""

#: The HTTP status of each failure other than a plain 400, by exception type (first match wins):
#: 404 an unknown instance, 409 nothing committed yet, 503 "try again" (the server is busy or the
#: request ran out of time).
STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownInstance, 404),
    (IndexNotFound, 409),
    (EngineBusy, 503),
    (DeadlinePassed, 503),
    (ExplainQueueFull, 503),
    (ExplainProcessLost, 503),
)


def http_status(exc: BaseException) -> int:
    """The HTTP status answering ``exc``: its :class:`BadRequest` status, :data:`STATUS_OF`, else 400."""
    if isinstance(exc, BadRequest):
        return exc.status
    for kind, status in STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 400


#: The search options a request may carry besides the query and k/exclude/modality.
SEARCH_OPTIONS = ("group_by", "prior", "per_series", "include_self")


def _flag(value, name: str) -> bool:
    """A JSON boolean, or the text of a header ("true"/"false"/"1"/"0")."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def search_options(request: dict) -> dict:
    """``group_by`` (None/"series"/"study"), ``prior``, ``per_series`` (default 2, 0 = off), ``include_self``."""
    group_by = request.get("group_by") or None
    if group_by not in (None, "series", "study"):
        raise ConfigError(f"group_by must be \"series\" or \"study\", not {group_by!r}")
    try:
        per_series = int(request.get("per_series", 2) if request.get("per_series") is not None else 2)
    except (TypeError, ValueError):
        raise ConfigError(f"per_series must be an integer ≥ 0, not {request.get('per_series')!r}") from None
    prior = _flag(request.get("prior"), "prior")
    if prior and group_by:
        raise ConfigError("prior and group_by cannot be combined")
    return {"group_by": group_by, "prior": prior, "per_series": per_series, "include_self": _flag(request.get("include_self"), "include_self")}


def manifest_recall(index: Path) -> dict:
    """``{recall_at_10, target_recall, index_spec, search_params}`` of the committed index (None values
    while it has no manifest or is exact and unmeasured)."""
    try:
        m = read_manifest(index)
    except (IndexNotFound, IndexCorrupt, OSError):
        m = {}
    measured = m.get("recall") or {}
    return {"recall_at_10": measured.get("recall_at_10"), "target_recall": measured.get("target", m.get("target_recall")),
            "index_spec": m.get("index_spec"), "search_params": m.get("search_params") or {}}


def encoder_kind(source: str) -> str:
    """``"onnx"`` for an ONNX model (a ``.onnx`` file, or a spec of kind onnx), else ``"torch"``
    (checkpoints, built-in names, Hugging Face folders, torch and TorchScript specs)."""
    text = str(source)
    if text.lower().endswith(".onnx"):
        return "onnx"
    if text.lower().endswith(".json"):
        try:
            return "onnx" if json.loads(Path(text).read_text()).get("kind") == "onnx" else "torch"
        except (OSError, ValueError, AttributeError):
            return "torch"
    return "torch"


class RequestHandlers:
    """Request handlers of the worker (a mixin of :class:`medcbir.pacs.worker.Worker`, which holds
    the state they use: ``settings``, ``rest``, ``index``, ``queue``, ``writer``, ``stop``,
    ``state``/``error``, ``indexed``/``items``, ``encoder_info``, ``tmp``, ``_tmp_dir``, the
    engine cache and its lock, ``_reindex``, ``_explainer``)."""

    def engine(self):
        """The engine on the newest committed generation (reopened when it changes)."""
        generation = committed_generation(self.index)
        if generation is None:
            raise IndexNotFound(f"the index {self.index} has nothing committed yet")
        # While a burst is being indexed every commit is a new generation; reopening at most once
        # a second keeps searches fast at the price of answers at most ~1 s behind the index.
        stale = generation != self._engine_generation and time.monotonic() - self._engine_opened >= ENGINE_REFRESH_SECONDS
        if self._engine is None or stale:
            self._engine = Engine.open(self.index, encoder=getattr(self.writer, "encoder", None) or self.settings.encoder)
            self._engine_generation = int(self._engine.store.generation)
            self._engine_opened = time.monotonic()
        return self._engine

    def preopen(self) -> None:
        """Open the engine on the committed index and build, in the background, the codes the first
        query needs (:meth:`medcbir.engine.Engine.warm`), so the first search after Orthanc starts
        does not pay for them (seconds on a large index). Nothing to do without a committed index;
        a failure here is left to the first request to report. Engines reopened on a new
        generation are not warmed (while indexing that would rebuild them every second)."""
        try:
            if committed_generation(self.index) is None:
                return
            with self._engine_lock:
                self.engine().warm()
        except Exception as exc:  # noqa: BLE001 - the first request opens it again and answers the error
            log(f"engine not opened ahead of the first request ({exc.__class__.__name__}: {exc}); the first request opens it")

    def handle(self, request: dict, gone=None) -> dict:
        """Answer one request from the plugin (see :mod:`medcbir.pacs.worker_link`).

        The body is parsed here, not on Orthanc's thread, and the arguments are checked again
        here (the plugin checked only the envelope) because this is where they become URLs and
        sizes: an unknown key, a malformed Orthanc id or a value over a bound is a 400, never a
        call to Orthanc. The work stops once the plugin's timeout has passed or ``gone()`` says
        the plugin hung up. No answer names a file of the worker.
        """
        op = request.get("op", "")
        handler = {"status": self.op_status, "search": self.op_search, "explain": self.op_explain,
                   "reindex": self.op_reindex, "render": self.op_render}.get(op)
        if handler is None:
            return {"ok": False, "status": 404, "error": f"unknown operation {str(op)[:40]!r}"}
        try:
            timeout = float(request.get("timeout") or self.settings.search_timeout)
        except (TypeError, ValueError):
            timeout = self.settings.search_timeout
        # A little before the plugin gives up, so that the caller reads why the work stopped.
        deadline = Deadline(min(max(timeout - min(1.0, timeout / 20), 0.0), 86400.0), gone)
        try:
            if "body" in request:
                args = request_arguments(op, request.get("headers") or {}, request["body"])
            else:
                args = request.get("args", {})
            if op != "status":
                args = check_request(op, args, self.settings.limits())
            return handler(args, deadline)
        except BadRequest as exc:
            return self._failed(http_status(exc), str(exc))
        except MedcbirError as exc:
            return self._failed(http_status(exc), str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
        except MemoryError:
            return self._failed(503, "the request ran out of memory; ask for fewer neighbours or masks")
        except Exception as exc:  # noqa: BLE001 - answered as a 500, the worker keeps serving
            traceback.print_exc()
            return self._failed(500, f"{exc.__class__.__name__}: {exc}".splitlines()[0])

    def _failed(self, status: int, message: str) -> dict:
        # The query's temporary file, the index's files: nothing of the worker's disk is answered.
        if self._tmp_dir is not None:
            message = re.sub(re.escape(str(self._tmp_dir)) + r"/[^\s:'\"]*", "<query>", message)
        return {"ok": False, "status": status, "error": without_paths(message)[:500]}

    @contextmanager
    def _engine_for_request(self, deadline: Deadline | None = None):
        """The engine, held for one request; a request that waits longer than RequestSeconds
        (or past its deadline) for another one to finish is answered 503 instead of piling up
        behind it."""
        wait = self.settings.request_seconds
        if deadline is not None:
            wait = max(0.0, min(wait, deadline.remaining()))
        if not self._engine_lock.acquire(timeout=wait):
            if deadline is not None:
                deadline.check("waiting for the engine")
            raise EngineBusy(f"the engine stayed busy for {self.settings.request_seconds:g} s (the server's RequestSeconds); try again")
        try:
            yield self.engine()
        finally:
            self._engine_lock.release()

    def _check_memory(self, what: str, nbytes: float) -> None:
        budget = self.settings.request_memory_mb
        if nbytes > budget * 1024 * 1024:
            raise BadRequest(f"{what} needs about {nbytes / 2**20:.0f} MB; the server's RequestMemoryMB is {budget}")

    def op_status(self, request: dict, deadline: Deadline | None = None) -> dict:
        counts = self.queue.counts()
        return {"ok": True, "result": {
            "worker": self.state, "pid": os.getpid(), "error": without_paths(self.error), "indexed": self.indexed,
            "items_committed": self.items, "generation": committed_generation(self.index),
            "encoder": self.encoder_info, "index": str(self.index),
            "batch_size": self.settings.batch_size, "recent_skips": self.queue.skipped(10), **counts,
            **manifest_recall(self.index),
            **({"explain": self._explainer.state()} if self._explainer is not None else {}),
            "explain_methods": self.explain_methods(), "limits": self.settings.limits(),
        }}

    def explain_methods(self) -> list[str]:
        """The methods explanations can run with: RELAX and occlusion always, the gradient methods
        when the explanation encoder (``ExplainEncoder``, else ``Encoder``) is a torch module
        (judged from how it is named: no model is loaded for a status answer)."""
        from medcbir.explain.status import offered_methods

        if self._explain_kind is None:
            self._explain_kind = encoder_kind(self.settings.explain_encoder or self.settings.encoder)
        return offered_methods(self._explain_kind)

    def op_render(self, request: dict, deadline: Deadline | None = None) -> dict:
        """An instance's first frame as PNG at its stored resolution in its reading window."""
        from PIL import Image

        instance = request["instance"]
        data = self.rest.instance_file(instance)
        if data is None:
            raise UnknownInstance(f"Orthanc has no instance {instance}")
        try:
            decoded = read_dicom(io.BytesIO(first_frame_query(data, self.settings.max_decode_bytes)), uri=instance_uri(instance),
                                 max_bytes=self.settings.max_decode_bytes)
        except SkipFile as exc:
            raise BadRequest(f"instance {instance} cannot be shown ({exc.reason})") from None
        if not decoded:
            raise BadRequest(f"instance {instance} has no image")
        grey, how = windowed(decoded[0])
        buf = io.BytesIO()
        Image.fromarray((grey * 255).round().astype("uint8")).save(buf, format="PNG")
        return {"ok": True, "body": buf.getvalue(), "mime": "image/png"}

    def op_reindex(self, request: dict, deadline: Deadline | None = None) -> dict:
        # Skip decisions are forgotten, so the indexing loop retries those instances.
        self.queue.clear_skipped()
        self._reindex.set()
        return {"ok": True, "result": {"reindex": "scheduled", **self.queue.counts()}}

    def _query_files(self, request: dict, deadline: Deadline | None = None) -> list[tuple[Path, str | None]]:
        """Write the queries' DICOM to temporary files (the engine reads them with the index key).

        ``request`` is checked (:func:`check_request`): instance ids have Orthanc's format. Each
        query is checked from its header and cut to its first frame
        (:func:`medcbir.pacs.query_dicom.first_frame_query`) before the engine decodes it.
        """

        if request.get("instances"):
            wanted = list(request["instances"])
        elif request.get("instance"):
            wanted = [request["instance"]]
        else:
            wanted = [None]
        out = []
        try:
            for instance in wanted:
                if instance is not None:
                    data = self.rest.instance_file(instance)
                    if data is None:
                        raise UnknownInstance(f"Orthanc has no instance {instance}")
                else:
                    data = request["dicom"]
                    if isinstance(data, str):
                        try:
                            data = base64.b64decode(data, validate=True)
                        except (binascii.Error, ValueError):
                            raise BadRequest("dicom in a JSON body must be base64") from None
                label = f"instance {instance}" if instance else "the posted DICOM"
                try:
                    data = first_frame_query(data, self.settings.max_decode_bytes)
                except SkipFile as exc:
                    raise BadRequest(f"{label} cannot be a query ({exc.reason}): {exc.detail}".splitlines()[0]) from None
                if deadline is not None:
                    deadline.check("reading the query")
                fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.tmp)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                out.append((Path(name), instance))
        except BaseException:
            for path, _ in out:
                path.unlink(missing_ok=True)
            raise
        return out

    def _orthanc_ids(self, meta: dict) -> dict:
        instance = instance_of(str(meta.get("source", "")))
        if instance is None and meta.get("sop_instance_uid"):
            instance = self.rest.lookup_sop(str(meta["sop_instance_uid"]))
        parents = self.rest.parents(instance) if instance else None
        series, study = parents if parents else (None, None)
        return {"instance": instance, "series": series, "study": study}

    def _series_tags(self, series: str | None) -> dict:
        """``{"series_description", "series_number"}`` of an Orthanc series (cached per series)."""
        if not series:
            return {"series_description": "", "series_number": ""}
        cache = self.__dict__.setdefault("_series_cache", {})
        if series not in cache:
            try:
                tags = (self.rest.get_json(f"/series/{series}") or {}).get("MainDicomTags", {})
            except Exception:  # noqa: BLE001 - a series deleted meanwhile: no description
                tags = {}
            if len(cache) > 10000:
                cache.clear()
            cache[series] = {"series_description": tags.get("SeriesDescription", ""), "series_number": tags.get("SeriesNumber", "")}
        return cache[series]

    def _query_context(self, engine, path: Path, instance: str | None) -> dict:
        """What a reader needs about the query: its place in its series (when indexed), series
        description and study date (from its header)."""

        out = {k: v for k, v in header_context(path).items() if v}
        try:
            import pydicom

            uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            [own] = engine.lookup.find([uid], [0])
            if own >= 0:
                meta = engine.meta([int(own)])[0]
                out.update({k: v for k, v in context(engine, meta).items() if v not in (None, "")})
        except Exception:  # noqa: BLE001 - the query's context is a courtesy, never a failure
            pass
        return out

    def _neighbour(self, n, engine=None) -> dict:
        """A neighbour as REST answers it: Orthanc ids and DICOM UIDs, never a file-system path;
        with ``engine``, what a reader needs too (:mod:`medcbir.engine.reading`)."""
        meta = dict(n.meta)
        ids = self._orthanc_ids(meta)
        out = {
            "rank": int(n.rank), "score": float(n.score), "id": int(n.id), **ids,
            "sop_instance_uid": meta.get("sop_instance_uid"), "frame": meta.get("frame"),
            "series_instance_uid": meta.get("series_instance_uid"),
            "study_instance_uid": meta.get("study_instance_uid"), "modality": meta.get("modality"),
        }
        if engine is not None:
            out.update(context(engine, meta, n.score))
            out.update(self._series_tags(ids.get("series")))
        if getattr(n, "region", None) is not None:
            out["region"] = [int(v) for v in n.region]  # the matched box in the neighbour's pixel grid
            out["percentile"] = None  # percentiles are of whole-image similarities, not of region scores
        return out

    def op_search(self, request: dict, deadline: Deadline | None = None) -> dict:
        deadline = deadline or Deadline(self.settings.search_timeout)
        options = search_options(request)
        started = time.perf_counter()
        k = int(request.get("k", min(10, self.settings.max_k)))
        queries = self._query_files(request, deadline)
        try:
            with self._engine_for_request(deadline) as engine:
                generation = self._engine_generation
                # k beyond the live items only allocates empty answer slots: cap it.
                k = max(1, min(k, int(engine.store.n_live)))
                # FAISS answers k × k_factor candidates per query (+ an id mask per group).
                k_factor = int(engine.store.search_params.get("k_factor", 1) or 1)
                self._check_memory("this search", len(queries) * (k * max(k_factor, 1) * 12 + len(engine.store) + 4 * 512 * 512))
                search_started = time.perf_counter()
                # the query's own series is left out unless asked otherwise: its neighbouring slices
                # are always the nearest, and say nothing about similar images
                exclude, modality = request.get("exclude") or "same-series", request.get("modality") or None
                paths = [str(path) for path, _ in queries]
                roi = request.get("roi")
                if roi is not None and (options["prior"] or options["group_by"] or request.get("min_percentile") is not None
                                        or request.get("min_score") is not None):
                    raise ConfigError("roi (a region query) does not combine with prior, group_by, min_percentile or min_score")
                if roi is not None:
                    results = engine.search(paths, k=k, exclude=exclude, modality=modality, per_series=options["per_series"],
                                            include_self=options["include_self"], roi=tuple(roi))
                elif options["prior"]:
                    results = [engine.prior(path, modality=modality).to_dict() for path in paths]
                elif options["group_by"]:
                    results = engine.search_cases(paths, k=k, group_by=options["group_by"], exclude=exclude, modality=modality,
                                                  include_self=options["include_self"])
                else:
                    results = engine.search(paths, k=k, exclude=exclude, modality=modality,
                                            per_series=options["per_series"], include_self=options["include_self"])
                    if request.get("min_percentile") is not None or request.get("min_score") is not None:
                        results = [above_thresholds(engine, row, request.get("min_score"), request.get("min_percentile"))
                                   for row in results]
                search_seconds = time.perf_counter() - search_started
                deadline.check("the search")  # nobody waits for it: store nothing
                stored = self._store_kos(engine, request, options, queries, results)
                contexts = [self._query_context(engine, path, instance) for path, instance in queries]
        finally:
            for path, _ in queries:
                path.unlink(missing_ok=True)
        regions = [list(row[0].query_region) if request.get("roi") is not None and row else None for row in results] \
            if not (options["prior"] or options["group_by"]) else [None] * len(results)
        answers = [{"query": instance, **({"query_context": context} if context else {}),
                    **({"query_region": region} if region is not None else {}),
                    **self._answer_of(row, options, instance, engine), **({"stored": [kos]} if kos else {})}
                   for (_, instance), row, kos, context, region in zip(queries, results, stored, contexts, regions)]
        timing = {"engine_seconds": round(search_seconds, 6), "worker_seconds": round(time.perf_counter() - started, 6)}
        extra = {"group_by": options["group_by"]} if options["group_by"] else {}
        if request.get("instances"):
            return {"ok": True, "result": {"k": k, "generation": generation, **extra, "results": answers, **timing}}
        return {"ok": True, "result": {"k": k, "generation": generation, **extra, **answers[0], **timing}}

    def _store_kos(self, engine, request: dict, options: dict, queries, results) -> list:
        """With ``"store": true``: each query's KOS stored into Orthanc (else Nones)."""
        if not _flag(request.get("store"), "store"):
            return [None] * len(queries)

        if options["prior"] or options["group_by"]:
            raise ConfigError("store writes image neighbours: it does not combine with prior or group_by")
        fingerprint = str(engine.store.encoder_info.get("fingerprint", ""))
        other = request.get("kos_other_patients")
        other = True if other is None else _flag(other, "kos_other_patients")
        return [store_search_kos(self.rest, path, row, fingerprint, other_patients=other) for (path, _), row in zip(queries, results)]

    def _answer_of(self, row, options: dict, instance: str | None = None, engine=None) -> dict:
        """One query's answer: ``neighbours``, ``cases`` (group_by) or ``prior``; Orthanc ids, no paths."""
        if options["prior"]:
            for study in row["studies"]:
                study["slice"].update(self._orthanc_ids(study["slice"]))
                study["slice"].pop("source", None)
            # the engine names the query by its (temporary) file: name it by its Orthanc id
            return {"prior": {**row, "query": instance}}
        if options["group_by"]:
            cases = []
            for case in row:
                entry = case.to_dict()
                for piece in entry["slices"]:
                    piece.update(self._orthanc_ids(piece))
                    piece.pop("source", None)
                cases.append(entry)
            return {"cases": cases}

        answer = {"neighbours": [self._neighbour(n, engine) for n in row]}
        if engine is not None:
            answer["similarity_sampled"] = similarity_record(engine) is not None
        if not row:
            answer["message"] = NOTHING_SIMILAR
        return answer

    def op_explain(self, request: dict, deadline: Deadline | None = None) -> dict:
        """An explanation of a query's neighbours (with ``roi``: of its region matches)."""
        if request.get("roi") is not None:
            from medcbir.explain.regions import RELAX_MASKS as default_masks
            from medcbir.explain.regions import check_region_method

            check_region_method(str(request.get("method") or "relax"))
        else:
            from medcbir.explain.relax import FAST_DEFAULTS

            default_masks = FAST_DEFAULTS["n_masks"]
        deadline = deadline or Deadline(self.settings.search_timeout)
        # The defaults stay within the configured bounds too.
        request = {"k": min(5, self.settings.max_explain_k), "n_masks": min(default_masks, self.settings.max_masks), **request}
        method = str(request.get("method") or "relax")
        offered = self.explain_methods()
        if method not in offered:
            from medcbir.explain.status import display_name

            raise ConfigError(f"{display_name(method)} needs the gradients of a torch encoder, and this server explains with "
                              f"an ONNX one: its administrator can name the torch checkpoint it was exported from as "
                              f'"ExplainEncoder" (orthanc-config --explain-encoder). Available here: {", ".join(offered)}')
        if self._explainer is not None:
            self._explainer.check_room()  # a full queue answers at once, before any Orthanc request
        [(path, instance)] = self._query_files(request, deadline)
        label = f"instance {instance}" if instance else "the posted DICOM"
        try:
            with self._engine_for_request(deadline) as engine:
                self._check_memory("this explanation", explain_bytes(engine, request))
                if self._explainer is None:
                    body, mime = explain_answer(engine, self.rest, path, request, label=label)
            if self._explainer is not None:  # its own process: searches keep answering meanwhile
                body, mime = self._explainer.explain(path, request, label=label, deadline=deadline)
        finally:
            path.unlink(missing_ok=True)
        return {"ok": True, "body": body, "mime": mime}

    # -- serving ----------------------------------------------------------------------------
    def serve(self, listener: Listener) -> None:
        while not self.stop.is_set():
            try:
                conn = listener.accept()
            except OSError:
                if self.stop.is_set():
                    return
                continue  # a client failed the authentication challenge
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        try:
            request = conn.recv()
            # The plugin sends nothing after its request: the connection turns readable only
            # when the plugin closes it (it gave up waiting, or Orthanc stopped).
            conn.send(self.handle(request, gone=lambda: conn.poll(0)))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
