"""The viewer page ``/medcbir/ui/``: plain HTML + JS + CSS shipped in ``medcbir/pacs/ui``.

No build step and no CDN: the three files are served by the plugin as they are. The page talks
only to relative, same-origin URLs (Orthanc's REST API and ``/medcbir/...``), so it works behind
Orthanc's authentication with the browser's own credentials.

Standard library only: the plugin imports it inside Orthanc's embedded interpreter.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).with_name("ui")
#: The only files served (a name not listed here is a 404: no path ever reaches the disk).
FILES = {"": "index.html", "index.html": "index.html", "viewer.js": "viewer.js", "viewer.css": "viewer.css"}
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def ui_file(name: str) -> tuple[bytes, str] | None:
    """``(body, MIME type)`` of a page file, or None for any other name."""
    real = FILES.get(name)
    if real is None:
        return None
    path = FOLDER / real
    return path.read_bytes(), MIME[path.suffix]
