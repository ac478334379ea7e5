"""The two editions: English at /, Chinese at /zh/, from the same recordings (mkdocs-static-i18n, suffix layout)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from site_build import ROOT
from tools import hook

DOCS = ROOT / "docs"
ENGLISH = sorted(p for p in DOCS.rglob("*.md") if not p.name.endswith(".zh.md"))


def markers(path: Path) -> list[str]:
    """Every marker the hook expands, in order: cells (with their flags), gpu-only/cpu-only blocks and tables."""
    text = path.read_text(encoding="utf-8")
    return re.findall(r"<!--\s*((?:cell:|/?gpu-only|/?cpu-only|computation-times|recorded-hardware)[^>]*?)\s*-->", text)


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_page_has_a_chinese_edition_with_the_same_cells_in_the_same_order(english):
    chinese = english.with_name(english.name.removesuffix(".md") + ".zh.md")
    assert chinese.exists(), f"{chinese.relative_to(ROOT)} is missing"
    assert markers(chinese) == markers(english)
    text = chinese.read_text(encoding="utf-8")
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 50, "not written in Chinese"


def test_both_editions_are_built_with_the_same_outputs(site):
    for english in ENGLISH:
        page = english.relative_to(DOCS).with_suffix("")
        url = Path("") if page.name == "index" and page.parent == Path(".") else (
            page.parent if page.name == "index" else page)
        en, zh = site / url / "index.html", site / "zh" / url / "index.html"
        assert en.exists() and zh.exists(), url
        en_soup, zh_soup = (BeautifulSoup(p.read_text(encoding="utf-8"), "html.parser") for p in (en, zh))
        assert zh_soup.html["lang"] == "zh" and en_soup.html["lang"] == "en"
        code = [[c.get_text() for c in soup.select("div.language-python pre code")] for soup in (en_soup, zh_soup)]
        assert code[0] == code[1], f"{url}: the editions show different code"
        images = [[i["src"].split("outputs/")[-1] for i in soup.select("img[src*='outputs/']")]
                  for soup in (en_soup, zh_soup)]
        assert images[0] == images[1], f"{url}: the editions show different figures"
    for notebook in (site / "notebooks").glob("*/index.html"):
        twin = site / "zh" / "notebooks" / notebook.parent.name / "index.html"
        text = twin.read_text(encoding="utf-8")
        assert '"cells": [' not in text[:2000] and "jp-Notebook" in text, f"{twin} is not a rendered notebook"


def test_the_hooks_own_words_are_chinese_in_the_chinese_edition(site):
    zh = (site / "zh" / "chapters" / "models" / "index.html").read_text(encoding="utf-8")
    en = (site / "chapters" / "models" / "index.html").read_text(encoding="utf-8")
    assert "录制于" in zh and "recorded on" not in BeautifulSoup(zh, "html.parser").select_one("p.cell-stamp").get_text()
    assert '<span class="filename">输出</span>' in zh and '<span class="filename">Output</span>' in en
    notebook = (site / "zh" / "notebooks" / "mnist_mlp" / "index.html").read_text(encoding="utf-8")
    assert "讲解见" in notebook and "在 Colab 中打开" in notebook
    assert set(hook.WORDS["en"]) == set(hook.WORDS["zh"])


def test_each_edition_has_its_own_search_index_and_chinese_is_segmented(site):
    """search/ holds the English pages, zh/search/ the Chinese ones: a search never answers in the other language."""
    english = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    chinese = json.loads((site / "zh" / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert english["config"]["lang"] == chinese["config"]["lang"] == ["en"]   # the words are cut at build time
    assert "\\u200b" in chinese["config"]["separator"]             # the regular expression's escape
    en_docs, zh_docs = english["docs"], chinese["docs"]
    assert en_docs and zh_docs
    titles = {d["location"].split("#")[0] for d in zh_docs}
    assert "chapters/memory-arithmetic/" in titles and not any(t.startswith("zh/") for t in titles)
    assert any("\u200b" in d["text"] for d in zh_docs)              # jieba's word boundaries
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", d["text"])) for d in zh_docs) > len(zh_docs) / 2
    # English text is left as it is: only sections that contain Chinese (the glossary's column) are segmented
    assert not any("\u200b" in d["text"] for d in en_docs if not re.search(r"[\u4e00-\u9fff]", d["text"]))
    for index in (en_docs, zh_docs):
        assert not any(d["location"].startswith("notebooks/") for d in index)
    for name in ("chapters/models", "index"):
        page = (site / "zh" / name.replace("index", "") / "index.html").read_text(encoding="utf-8")
        assert re.search(r'"base": "[./]*/?zh/"', page), name


ENGLISH_COLUMNS = {"英文术语", "概念"}


def english_runs(html_text: str) -> list[str]:
    """Runs of four or more English words a Chinese page shows outside code, outputs and quotations (“…”): words
    the site adds or translates, left in English. A table column headed 英文术语 or 概念 (the glossary's English
    terms) is meant to be English."""
    soup = BeautifulSoup(html_text, "html.parser")
    for table in soup.select("table"):
        english = [i for i, th in enumerate(table.select("thead th")) if th.get_text(strip=True) in ENGLISH_COLUMNS]
        for row in table.select("tbody tr"):
            for i, cell in enumerate(row.find_all("td")):
                if i in english:
                    cell.decompose()
    for element in soup.select("pre, code, script, style, svg, .highlight, .jp-OutputArea, .jp-InputArea"):
        element.decompose()
    for cell in soup.select("th, td"):            # a run of words never crosses from one table cell to the next
        cell.append(" ¦ ")
    article = soup.select_one("article") or soup
    text = re.sub(r"“[^”]*”", " ", " ".join(article.get_text(" ").split()))
    return re.findall(r"[A-Za-z][\w'’-]+(?:[ ,.;:]+[A-Za-z][\w'’-]+){3,}", text)


def test_english_runs_are_found():
    assert english_runs("<article><p>显存 <em>what the cells below need</em>：导入</p></article>") == [
        "what the cells below need"]
    assert english_runs("<article><table><thead><tr><th>英文术语</th><th>本站用词</th></tr></thead><tbody><tr>"
                        "<td>mixed precision with autocast</td><td>混合精度</td></tr></tbody></table></article>") == []
    assert english_runs("<article><p>原笔记写道：“CUDA out of memory. Tried to allocate”</p>"
                        "<pre>the whole of the code</pre></article>") == []


def test_the_chinese_pages_show_no_english_sentences(site):
    """Fold titles, figure descriptions, notebook stamps and labels are Chinese on /zh/ (i18n/zh.yml, the hook's
    words); what stays English is code, outputs, quotations and the glossary's English terms."""
    found = {}
    for path in sorted((site / "zh").rglob("index.html")):
        if "search" in path.parts:
            continue
        runs = english_runs(path.read_text(encoding="utf-8"))
        if runs:
            found[str(path.relative_to(site))] = runs
    assert not found, "\n".join(f"{page}: {runs}" for page, runs in found.items())
