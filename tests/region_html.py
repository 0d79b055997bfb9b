"""The region-match section of an HTML page, parsed (``medcbir demo``'s report, ``explain --roi --out``'s page)."""

from __future__ import annotations

from html.parser import HTMLParser


class RegionSection(HTMLParser):
    """Collects, inside ``<section class="region-match">``: its heading, its paragraphs by class,
    and its figures (class, text lines, image sources)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections = 0
        self.depth = 0  # > 0 inside the section
        self.heading = ""
        self.paragraphs: dict[str, list[str]] = {}
        self.figures: list[dict] = []
        self._text_of: list[str] | None = None
        self._p_class = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "region-match" in (attrs.get("class") or ""):
            self.sections += 1
            self.depth = 1
            return
        if not self.depth:
            return
        if tag == "section":
            self.depth += 1
        elif tag == "h2":
            self._text_of = []
        elif tag == "p":
            self._p_class = attrs.get("class") or ""
            self._text_of = []
        elif tag == "figure":
            self.figures.append({"class": attrs.get("class") or "", "lines": [], "images": []})
        elif tag == "img" and self.figures:
            self.figures[-1]["images"].append(attrs.get("src") or "")
        elif tag == "div" and self.figures:
            self._text_of = []

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag == "section":
            self.depth -= 1
        elif tag == "h2" and self._text_of is not None:
            self.heading = "".join(self._text_of)
            self._text_of = None
        elif tag == "p" and self._text_of is not None:
            self.paragraphs.setdefault(self._p_class, []).append("".join(self._text_of))
            self._text_of = None
        elif tag == "div" and self._text_of is not None and self.figures:
            text = "".join(self._text_of).strip()
            if text:
                self.figures[-1]["lines"].append(text)
            self._text_of = None

    def handle_data(self, data):
        if self.depth and self._text_of is not None:
            self._text_of.append(data)


def region_section(text: str) -> RegionSection:
    parser = RegionSection()
    parser.feed(text)
    return parser
