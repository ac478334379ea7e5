"""Both editions give every heading the same explicit id, so a link to a section, and the language switch, land on
the same section in either language."""
from __future__ import annotations

import re

import pytest

from site_build import ROOT

DOCS = ROOT / "docs"
ENGLISH = sorted(p for p in DOCS.rglob("*.md") if not p.name.endswith(".zh.md"))
HEADING = re.compile(r"^(#{1,6}) .*?(?:\{#(?P<id>[\w-]+)[^}]*\})?[ \t]*$", re.M)


def headings(text: str) -> list[tuple[str, str | None]]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)          # a comment in a fence is no heading
    return [(m[1], m["id"]) for m in HEADING.finditer(text)]


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_heading_has_the_same_explicit_id_in_both_editions(english):
    chinese = english.with_name(english.name.removesuffix(".md") + ".zh.md")
    en, zh = headings(english.read_text(encoding="utf-8")), headings(chinese.read_text(encoding="utf-8"))
    assert all(found for _, found in en), f"{english.name}: a heading without an explicit {{#id}}: {en}"
    assert en == zh, f"{english.name}: the editions' headings differ (level, id):\n{en}\n{zh}"
