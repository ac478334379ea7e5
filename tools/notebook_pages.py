"""Post-processing of the notebook pages that mkdocs-jupyter renders (called by the mkdocs hook).

nbconvert inlines all of JupyterLab's stylesheet, about 570 KB, into every notebook page. ``slim`` keeps only the
rules whose selectors can match an element of that page (every class a selector needs, outside ``:not(...)``, is
used on the page), which brings a page under 1 MB with its figures. It also makes code and output boxes, which
scroll sideways, reachable by keyboard, and drops nbconvert's mermaid loader: a module script that would import
mermaid from cdnjs.cloudflare.com if a page had a diagram. No page here has one, and no page may fetch from another
origin; mkdocs-jupyter 0.26 has no option to leave it out (its template always calls nbconvert's ``mermaid_js``).
"""
from __future__ import annotations

import base64
import functools
import re
import struct
from pathlib import Path

import tinycss2

from tools import build_speed

STYLE = re.compile(r"(<style[^>]*>)(.*?)(</style>)", re.S)
NOT = re.compile(r":not\([^)]*\)")
CLASS = re.compile(r"\.([\w-]+)")
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.S | re.I)
COMMENT = re.compile(r"<!--.*?-->\s*", re.S)
DATA_PNG = re.compile(r'<img (?P<before>[^>]*?)src="data:image/png;base64,(?P<data>[A-Za-z0-9+/=\s]{44})')


def _selectors(prelude: str) -> list[frozenset[str]]:
    """The classes each selector of a rule needs."""
    return [frozenset(CLASS.findall(NOT.sub("", selector))) for selector in prelude.split(",")]


@functools.lru_cache(maxsize=4)
def _parse(css: str) -> tuple:
    """The stylesheet as (selectors, text) rules and ('@media', prelude, rules) groups. Every notebook page carries
    the same stylesheet: it is parsed once per build (tinycss2 takes about half a second over JupyterLab's) and kept
    for the next one (``build_speed.memo``)."""
    return build_speed.memo("jupyterlab-css", "tinycss2", sources=(Path(__file__),))(css, lambda: _parse_now(css))


def _parse_now(css: str) -> tuple:
    parsed = []
    for rule in tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True):
        if rule.type == "qualified-rule":
            parsed.append((_selectors(tinycss2.serialize(rule.prelude)), tinycss2.serialize([rule])))
        elif rule.type == "at-rule" and rule.lower_at_keyword == "media" and rule.content is not None:
            parsed.append(("@media", tinycss2.serialize(rule.prelude), _parse_now(tinycss2.serialize(rule.content))))
        else:
            parsed.append(([frozenset()], tinycss2.serialize([rule])))
    return tuple(parsed)


def purge(css: str, classes: set[str]) -> str:
    return _purged(css, frozenset(classes))


@functools.lru_cache(maxsize=256)
def _purged(css: str, classes: frozenset[str]) -> str:
    """Cached per build: the Chinese edition's notebook pages carry the same stylesheet and classes as the English
    ones, so each is slimmed once."""
    return _keep(_parse(css), classes)


def _keep(rules: tuple, classes: set[str]) -> str:
    kept = []
    for rule in rules:
        if rule[0] == "@media":
            inner = _keep(rule[2], classes)
            if inner:
                kept.append(f"@media{rule[1]}{{{inner}}}")
        elif any(needed <= classes for needed in rule[0]):
            kept.append(rule[1])
    return "".join(kept)


def drop_mermaid(html: str) -> str:
    """The page without nbconvert's mermaid loader: every <script> and comment that mentions mermaid. (Its
    stylesheet goes in ``slim``, which keeps none of its rules on a page without a mermaid diagram.)"""
    html = SCRIPT.sub(lambda m: "" if "mermaid" in m[0].lower() else m[0], html)
    return COMMENT.sub(lambda m: "" if "mermaid" in m[0].lower() else m[0], html)


def _style(m: re.Match, classes: set[str]) -> str:
    """A <style> element with only the rules the page can use: for JupyterLab's big stylesheet and for the mermaid
    styles; an element left empty goes."""
    css = m[2]
    if len(css) > 50_000 or "mermaid" in css.lower():
        css = purge(css, classes)
        if not css.strip():
            return ""
    return m[1] + css + m[3]


def png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's first 24 bytes (its IHDR chunk); None when they are not a PNG's."""
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def sized_images(html: str) -> str:
    """Every inline PNG figure with its width and height in pixels, so the page does not jump while it loads."""
    def add(m: re.Match) -> str:
        size = None if " width=" in m["before"] else png_size(base64.b64decode(m["data"][:32]))
        box = f'width="{size[0]}" height="{size[1]}" ' if size else ""
        return f'<img {m["before"]}{box}src="data:image/png;base64,{m["data"]}'
    return DATA_PNG.sub(add, html)


def slim(html: str) -> str:
    html = sized_images(drop_mermaid(html))
    classes = {name for attribute in re.findall(r'class="([^"]*)"', html) for name in attribute.split()}
    html = STYLE.sub(lambda m: _style(m, classes), html)
    return html.replace("<pre>", '<pre tabindex="0">')
