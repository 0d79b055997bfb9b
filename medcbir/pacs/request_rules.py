"""What a request to ``/medcbir/...`` may contain: one table of keys per route, and the checks.

The worker parses every REST request's body (:mod:`medcbir.pacs.request_body`; the plugin
checks only its envelope, on Orthanc's thread) and checks its keys with :func:`check_request`
before anything is used:

- a key not in the route's table is refused (``op`` or ``timeout`` in a JSON body used to
  collide with internal argument names);
- an Orthanc id must have Orthanc's exact format (a SHA-1 written as five dash-separated
  groups of 8 lower-case hex digits, see https://orthanc.uclouvain.be/book/faq/orthanc-ids.html)
  before it is put in any URL, so ``../../patients/X/archive?`` never reaches another route;
- every number is bounded on both sides: by the ``"Medcbir"`` settings (``MaxK``, ``MaxMasks``,
  ...) or by a fixed range (``seed`` is a 32-bit unsigned integer), so no value reaches a
  library that would overflow on it.

A refused request raises :class:`BadRequest` with a one-line reason (answered with its
``status``: 400, or 403/415 for the envelope checks of :mod:`medcbir.pacs.request_body`).
To add a request key, add one line to :data:`ROUTES` (its parser turns the raw JSON value into
the checked one or raises ``BadRequest``).

Standard library only: the plugin imports it inside Orthanc's embedded interpreter.
"""

from __future__ import annotations

import re

ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
EXCLUDE = ("none", "same-patient", "same-study", "same-series")
FORMATS = ("png", "html", "json")
# every method of medcbir.explain.METHODS (tests/pacs keep the two equal); spelled out here so that
# validating a request does not import torch
METHODS = ("relax", "gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion",
           "clustered_cam", "ablation_cam", "gradient", "guided_backprop", "smoothgrad_ig", "wildcat")
MODALITY = re.compile(r"[A-Z0-9_]{1,16}")  # a DICOM CS value (Modality is at most 16 chars)


class BadRequest(ValueError):
    """The request is refused with HTTP ``status`` (400 unless a subclass says otherwise); the
    message is one line."""

    status = 400


class Forbidden(BadRequest):
    """A request from a browser page of another origin (HTTP 403)."""

    status = 403


class UnsupportedMediaType(BadRequest):
    """A POST body that is neither ``application/json`` nor ``application/dicom`` (HTTP 415)."""

    status = 415


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a refusal never echoes long input."""
    text = repr(value) if not isinstance(value, int) or isinstance(value, bool) or abs(value) < 10**limit else "a huge number"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FILE_URL = re.compile(r"file://\S+")
_ABSOLUTE_PATH = re.compile(r"(?:^|(?<=[\s'\"(\[=,]))/[^\s'\"]*[^\s'\":,.;)\]]")


def without_paths(text: str) -> str:
    """``text`` with every absolute file-system path (and ``file://`` URL) replaced by ``<path>``:
    an error answered over REST never shows where the worker keeps its files."""
    return _ABSOLUTE_PATH.sub("<path>", _FILE_URL.sub("<path>", str(text)))


def orthanc_id(value, name: str = "instance") -> str:
    """``value`` if it is an Orthanc id, else :class:`BadRequest` (never echoes long input)."""
    if not isinstance(value, str) or ORTHANC_ID.fullmatch(value) is None:
        raise BadRequest(f"{name} must be an Orthanc id (5 groups of 8 hex digits), not {shown(value)}")
    return value


def _int(name: str, low: int, high_setting: str | None = None, high: int | None = None):
    """A parser of an integer in ``[low, high]``; ``high`` is the setting ``high_setting`` when given."""
    def parse(value, limits: dict) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BadRequest(f"{name} must be an integer, not {type(value).__name__}")
        text = value.strip() if isinstance(value, str) else None
        if text is not None and not (text.isascii() and text.lstrip("+-").isdigit() and len(text) <= 20):
            raise BadRequest(f"{name} must be an integer, not {shown(value, 40)}")
        number = int(value)
        top = limits.get(high_setting) if high_setting else high
        if number < low:
            raise BadRequest(f"{name} must be >= {low}, not {shown(number, 40)}")
        if top is not None and number > top:
            where = f" (the server's {high_setting})" if high_setting else ""
            raise BadRequest(f"{name} must be <= {top}{where}, not {shown(number, 40)}")
        return number
    return parse


def _choice(name: str, choices: tuple[str, ...]):
    def parse(value, limits: dict) -> str:
        text = str(value).lower() if isinstance(value, str) else None
        if text not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}")
        return text
    return parse


def _bool(name: str):
    def parse(value, limits: dict) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise BadRequest(f"{name} must be true or false")
    return parse


def _number(name: str, low: float, high: float):
    """A parser of a finite number in ``[low, high]`` (a JSON number or its text in a header)."""
    def parse(value, limits: dict) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise BadRequest(f"{name} must be a number, not {type(value).__name__}")
        try:
            number = float(value.strip()[:40] if isinstance(value, str) else value)
        except ValueError:
            raise BadRequest(f"{name} must be a number, not {shown(value, 40)}") from None
        if not low <= number <= high:  # NaN fails this too
            raise BadRequest(f"{name} must be between {low:g} and {high:g}, not {shown(value, 40)}")
        return number
    return parse


def _modality(value, limits: dict) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or MODALITY.fullmatch(value) is None:
        raise BadRequest("modality must be a DICOM modality code such as CT or MR")
    return value


def _instance(value, limits: dict) -> str:
    return orthanc_id(value, "instance")


def _instances(value, limits: dict) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest("instances must be a non-empty list of Orthanc ids")
    high = limits.get("MaxQueries")
    if high is not None and len(value) > high:
        raise BadRequest(f"at most {high} queries per request (the server's MaxQueries), not {len(value)}")
    return [orthanc_id(v, "instances[]") for v in value]


#: The largest coordinate a region box may name (a frame is at most this many pixels a side).
MAX_PIXEL = 1 << 16


def _roi(value, limits: dict) -> tuple[int, int, int, int]:
    """``[x, y, w, h]``: four whole numbers, w and h ≥ 1 (checked against the frame by the engine)."""
    if not isinstance(value, list) or len(value) != 4:
        raise BadRequest("roi must be [x, y, w, h]: four numbers in the query image's pixel grid")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not 0 <= v <= MAX_PIXEL:
            raise BadRequest(f"roi must be [x, y, w, h] of whole numbers between 0 and {MAX_PIXEL}, not {shown(value, 60)}")
        out.append(int(round(v)))
    if out[2] < 1 or out[3] < 1:
        raise BadRequest("roi width and height must be at least 1 pixel")
    return tuple(out)


def _dicom(value, limits: dict):
    # bytes: a raw DICOM body (the plugin); str: base64 in a JSON body.
    if not isinstance(value, (bytes, bytearray, str)) or not value:
        raise BadRequest("dicom must be a non-empty DICOM body (or base64 text in JSON)")
    return value


COMMON = {
    "instance": _instance,
    "dicom": _dicom,
    "exclude": _choice("exclude", EXCLUDE),
    "modality": _modality,
}

#: route → {request key: parser(value, limits) → checked value}. One line per allowed key.
ROUTES: dict[str, dict] = {
    "search": {
        **COMMON,
        "instances": _instances,
        "k": _int("k", 1, "MaxK"),
        # hits per series, cases, the prior exam, the query itself
        "per_series": _int("per_series", 0, "MaxK"),
        "group_by": _choice("group_by", ("series", "study")),
        "prior": _bool("prior"),
        "include_self": _bool("include_self"),
        # the result as a DICOM Key Object Selection stored into Orthanc
        "store": _bool("store"),
        "kos_other_patients": _bool("kos_other_patients"),
        # a hit below these is not shown; none left: "no sufficiently similar image"
        "min_percentile": _number("min_percentile", 0.0, 100.0),
        "min_score": _number("min_score", -1.0, 1.0),
        # a region query: the box in the query image's pixel grid; neighbours by their best region
        "roi": _roi,
    },
    "explain": {
        **COMMON,
        "k": _int("k", 1, "MaxExplainK"),
        "method": _choice("method", METHODS),
        "format": _choice("format", FORMATS),
        "n_masks": _int("n_masks", 1, "MaxMasks"),
        "seed": _int("seed", 0, high=2**32 - 1),  # the random generators' seed range
        "pairwise": _bool("pairwise"),
        # overlays and parametric maps stored into Orthanc (the answer is then JSON)
        "store": _bool("store"),
        # a region-match explanation: the query box; each neighbour's map over its matched box
        "roi": _roi,
    },
    "reindex": {},
    # the viewer's picture of an instance: its first frame in its reading window
    "render": {"instance": _instance},
}


def check_request(route: str, args: dict, limits: dict) -> dict:
    """The checked arguments of a request to ``/medcbir/<route>``.

    Args:
        route: ``search``, ``explain`` or ``reindex``.
        args: the request's keys (JSON body or ``X-Medcbir-*`` headers, and ``dicom``).
        limits: the bounds (``PluginSettings.limits()``: ``MaxK``, ``MaxExplainK``, ...).

    Raises:
        BadRequest: an unknown key, a malformed id, a value out of bounds, or too many queries.
    """
    rules = ROUTES.get(route)
    if rules is None:
        raise BadRequest(f"unknown route {route!r}")
    if not isinstance(args, dict):
        raise BadRequest("the JSON body must be an object")
    unknown = sorted(shown(key, 40) if not isinstance(key, str) else key[:40] for key in args if key not in rules)
    if unknown:
        allowed = ", ".join(sorted(rules)) or "none"
        raise BadRequest(f"unknown key(s) {', '.join(unknown)} for /medcbir/{route} (allowed: {allowed})")
    checked = {key: rules[key](value, limits) for key, value in args.items()}
    given = [key for key in ("instance", "instances", "dicom") if checked.get(key) not in (None, "")]
    if route != "reindex" and len(given) != 1:
        raise BadRequest('give exactly one of "instance": "<orthanc id>", "instances": [...] or a DICOM body')
    return checked
