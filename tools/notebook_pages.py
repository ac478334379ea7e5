"""Post-processing of the notebook pages that mkdocs-jupyter renders (called by the mkdocs hook).

nbconvert inlines all of JupyterLab's stylesheet, about 570 KB, into every notebook page. ``slim`` keeps only the
rules whose selectors can match an element of that page (every class a selector needs, outside ``:not(...)``, is
used on the page), which brings a page under 1 MB with its figures. It also makes code and output boxes, which
scroll sideways, reachable by keyboard.
"""
from __future__ import annotations

import functools
import re

import tinycss2

STYLE = re.compile(r"(<style[^>]*>)(.*?)(</style>)", re.S)
NOT = re.compile(r":not\([^)]*\)")
CLASS = re.compile(r"\.([\w-]+)")


def _selectors(prelude: str) -> list[frozenset[str]]:
    """The classes each selector of a rule needs."""
    return [frozenset(CLASS.findall(NOT.sub("", selector))) for selector in prelude.split(",")]


@functools.lru_cache(maxsize=4)
def _parse(css: str) -> tuple:
    """The stylesheet as (selectors, text) rules and ('@media', prelude, rules) groups; parsed once per build,
    since every notebook page carries the same stylesheet."""
    parsed = []
    for rule in tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True):
        if rule.type == "qualified-rule":
            parsed.append((_selectors(tinycss2.serialize(rule.prelude)), tinycss2.serialize([rule])))
        elif rule.type == "at-rule" and rule.lower_at_keyword == "media" and rule.content is not None:
            parsed.append(("@media", tinycss2.serialize(rule.prelude), _parse(tinycss2.serialize(rule.content))))
        else:
            parsed.append(([frozenset()], tinycss2.serialize([rule])))
    return tuple(parsed)


def purge(css: str, classes: set[str]) -> str:
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


def slim(html: str) -> str:
    classes = {name for attribute in re.findall(r'class="([^"]*)"', html) for name in attribute.split()}
    html = STYLE.sub(lambda m: m[1] + (purge(m[2], classes) if len(m[2]) > 50_000 else m[2]) + m[3], html)
    return html.replace("<pre>", '<pre tabindex="0">')
