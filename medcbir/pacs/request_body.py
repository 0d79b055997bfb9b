"""From an HTTP request to a route's arguments, in two steps on the two sides of the worker link.

On Orthanc's HTTP thread (the plugin) only byte-level checks run, none of which recurses or
allocates much (:func:`check_envelope`):

- a body over ``MaxBodyBytes`` is refused (400);
- a POST must say ``Content-Type: application/json`` or ``application/dicom`` (415): a page of
  another site can make a browser send ``text/plain`` or a form without asking the server
  first, but not these. A ``multipart/form-data`` upload is refused too: Orthanc hands each
  of its parts to the plugin with the part's own headers only (``Content-Disposition``, the
  part's ``Content-Type``; no ``Host``, no ``Origin``), so a form could dress a part as JSON;
- a request carrying an ``Origin`` other than the server's own (or one of ``AllowedOrigins``)
  is refused (403); on a loopback-only Orthanc the origin's host must also be a loopback
  address, so a DNS name rebound to 127.0.0.1 does not pass for the server;
- a JSON body nested deeper than :data:`MAX_JSON_DEPTH`, or with more than
  :data:`MAX_JSON_BRACKETS` arrays and objects, is refused (400) by a byte scan.

No JSON parser runs on Orthanc's thread: ``json.loads`` recurses on the C stack, and Orthanc's
HTTP threads have stacks too small for a body a few hundred levels deep. The worker parses the
body (:func:`request_arguments`, after the same scan) and merges the ``X-Medcbir-*`` options.

Standard library only: the plugin imports it inside Orthanc's embedded interpreter.
"""

from __future__ import annotations

import ipaddress
import json
import math

from medcbir.pacs.request_rules import BadRequest, Forbidden, UnsupportedMediaType

#: Request bodies are flat (``{"instances": [...]}`` is two levels deep); deeper is hostile.
MAX_JSON_DEPTH = 16
#: Arrays and objects in one body (each counts its two brackets).
MAX_JSON_BRACKETS = 512
MEDIA_TYPES = ("application/json", "application/dicom")
#: Request headers that carry options of a raw-DICOM body (Orthanc does not pass a POST's
#: query string to plugins).
OPTION_HEADERS = {"x-medcbir-k": "k", "x-medcbir-exclude": "exclude", "x-medcbir-modality": "modality",
                  "x-medcbir-format": "format", "x-medcbir-method": "method",
                  "x-medcbir-per-series": "per_series", "x-medcbir-group-by": "group_by", "x-medcbir-prior": "prior",
                  "x-medcbir-include-self": "include_self", "x-medcbir-store": "store",
                  "x-medcbir-min-percentile": "min_percentile"}
#: The headers the plugin forwards to the worker with the body.
FORWARDED_HEADERS = ("content-type", "accept", *OPTION_HEADERS)

#: Strings in one body (keys and values).
MAX_JSON_STRINGS = 4096

# Every byte but brackets, quotes and backslashes becomes "a" (same length, so escapes still
# pair with what they escape); then only C-speed bytes operations run, whatever the body.
_TOKENS = bytes(b if b in b'[]{}"\\' else ord("a") for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body``, strings skipped (no parser runs).

    Raises:
        BadRequest: more than :data:`MAX_JSON_BRACKETS` arrays/objects or
            :data:`MAX_JSON_STRINGS` strings.
    """
    # Escapes pair left to right ("\\" first), so what remains of a backslash escapes one byte.
    text = body.translate(_TOKENS).replace(b"\\\\", b"").replace(b'\\"', b"")
    if text.count(b'"') > 2 * MAX_JSON_STRINGS:
        raise BadRequest(f"the JSON body has more than {MAX_JSON_STRINGS} strings")
    outside = b"".join(text.split(b'"')[0::2])  # even pieces lie outside strings
    brackets = outside.translate(None, _NOT_BRACKETS)
    if len(brackets) > 2 * MAX_JSON_BRACKETS:
        raise BadRequest(f"the JSON body has more than {MAX_JSON_BRACKETS} arrays and objects")
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in _OPENING else -1
        deepest = max(deepest, depth)
    return deepest


def check_json_shape(body: bytes) -> None:
    """:class:`BadRequest` when ``body`` nests deeper than :data:`MAX_JSON_DEPTH`."""
    if json_depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")


def media_type(headers: dict) -> str:
    return str(headers.get("content-type", "")).split(";", 1)[0].strip().lower()


def check_envelope(headers: dict, body: bytes, max_body_bytes: int) -> None:
    """The plugin's checks of a POST before anything is forwarded (see the module docstring)."""
    if len(body) > max_body_bytes:
        raise BadRequest(f"the request body has {len(body)} bytes; the server's MaxBodyBytes is {max_body_bytes}")
    if "content-disposition" in headers or "host" not in headers:
        raise UnsupportedMediaType("form uploads are not accepted: POST the JSON or DICOM body itself")
    kind = media_type(headers)
    if kind not in MEDIA_TYPES:
        raise UnsupportedMediaType("a POST needs Content-Type application/json or application/dicom")
    if kind == "application/json":
        check_json_shape(body)


def _host_of(authority: str) -> str:
    host = authority.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authority(text: str) -> str:
    """``host[:port]`` of an origin or a ``Host`` header, lower-case, without a default port
    (80/443) or a scheme: a TLS proxy in front of Orthanc makes the page's ``https://`` origin
    reach Orthanc as plain HTTP with the same host."""
    text = text.strip().rstrip("/").lower()
    text = text.split("://", 1)[1] if "://" in text else text
    for port in (":80", ":443"):
        if text.endswith(port):
            return text[: -len(port)]
    return text


def check_origin(headers: dict, *, allowed=(), loopback_only: bool = False) -> None:
    """:class:`Forbidden` when a browser page of another origin sends the request.

    Args:
        headers: the request's headers (lower-case names, as Orthanc gives them).
        allowed: more origins allowed (the ``AllowedOrigins`` setting).
        loopback_only: Orthanc accepts loopback connections only (``RemoteAccessAllowed`` false).
    """
    origin = headers.get("origin")
    if origin is None:
        return  # not sent by a browser page (curl, scripts, same-origin navigation)
    origin = str(origin).strip().rstrip("/").lower()
    if origin in {str(o).strip().rstrip("/").lower() for o in allowed}:
        return
    host = str(headers.get("host", ""))
    if "://" not in origin or not host.strip() or _authority(origin) != _authority(host):
        raise Forbidden("cross-origin request refused: the Origin is not this server (add it to the "
                        "\"Medcbir\" setting AllowedOrigins to allow it)")
    if loopback_only and not _is_loopback(_host_of(_authority(host))):
        raise Forbidden("cross-origin request refused: this server answers loopback names only")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"a number in the JSON body is out of range ({text[:20]})")
    return value


def _no_constant(name: str):
    raise BadRequest(f"{name} is not a JSON number")


def parse_json(body: bytes) -> dict:
    """The JSON object of a body: UTF-8, no deeper than :data:`MAX_JSON_DEPTH`, finite numbers."""
    check_json_shape(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the JSON body must be UTF-8") from None
    try:
        value = json.loads(text or "{}", parse_float=_finite, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"the body is not JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(value, dict):
        raise BadRequest("the JSON body must be an object")
    return value


def request_arguments(route: str, headers: dict, body: bytes) -> dict:
    """A request's keys: its JSON object or ``{"dicom": body}``, plus the ``X-Medcbir-*`` options
    it does not give itself (unchecked: :func:`medcbir.pacs.request_rules.check_request` follows).

    Args:
        route: ``search``, ``explain``, ``reindex``.
        headers: the forwarded headers (:data:`FORWARDED_HEADERS`).
        body: the request body.
    """
    kind = media_type(headers)
    if kind == "application/json":
        args = parse_json(body)
    elif kind == "application/dicom":
        args = {"dicom": bytes(body)} if body else {}
    else:
        raise UnsupportedMediaType("a POST needs Content-Type application/json or application/dicom")
    for header, key in OPTION_HEADERS.items():
        if header in headers and key not in args:
            args[key] = headers[header]
    if route == "explain" and "text/html" in str(headers.get("accept", "")) and "format" not in args:
        args["format"] = "html"
    return args
