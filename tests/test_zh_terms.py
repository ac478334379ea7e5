"""The Chinese edition's words: one term per concept, the names readers search for beside a term where it first
appears, and Chinese punctuation in Chinese sentences.

The terms live in one place, the table under "本站用语" in docs/reference/glossary.zh.md: a concept, the word this
site uses, its aliases (given where the word first appears), and the words it never uses.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from site_build import ROOT
from tools import translations

DOCS = ROOT / "docs"
CJK = r"[\u3400-\u9fff]"
terms = translations.glossary_terms


def chinese_pages() -> list[Path]:
    """Every Chinese page, in the nav's order (the home page, the course, the calculator, the reference)."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def walk(items):
        for item in items:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from walk(value) if isinstance(value, list) else [value]
    return [DOCS / Path(page).with_suffix(".zh.md") for page in walk(nav) if page.endswith(".md")]


def prose(text: str, quotes: bool = False) -> str:
    """A page's own sentences: no code, comments, markers, link targets, attribute lists or HTML tags; the titles of
    admonitions and tabs kept without their quotes; the glossary's term table left out (it lists the words to avoid).
    Quotations (“…”) are left out too unless ``quotes``: they keep the source's words."""
    text = re.sub(r"^\| 概念 \| 本站用词 .*?(?=\n\n|\Z)", "", text, flags=re.S | re.M)
    text = re.sub(r'^[ \t]*(?:\?\?\?\+?|!!!|===\+?)[ \t]*[\w-]*[ \t]*"([^"]*)"', r"\1", text, flags=re.M)
    for pattern, flags in ((r"```.*?```", re.S), (r"<!--.*?-->", re.S), (r"`[^`\n]*`", 0), (r"\]\([^)]*\)", 0),
                           (r"\{[:#.][^}]*\}", 0), (r"<[^>\n]+>", 0), (r"https?://\S+", 0)):
        text = re.sub(pattern, "]" if pattern.startswith(r"\]") else " ", text, flags=flags)
    return text if quotes else re.sub(r"“[^”]*”", "“”", text)


def avoided_words(text: str, rows: list[dict]) -> list[str]:
    """Words of the 'avoid' column found in ``text``, each with a little context. A word inside a term or alias
    (激活 inside 激活值, 单元 inside 单元格) is not a use of the word."""
    keep = [word for row in rows for word in [row["term"], *row["aliases"]]]
    found = []
    for row in rows:
        for word in row["avoid"]:
            masked = text
            for longer in sorted((k for k in keep if word in k and k != word), key=len, reverse=True):
                masked = masked.replace(longer, "\0" * len(longer))
            for match in re.finditer(re.escape(word), masked):
                context = text[max(0, match.start() - 12):match.end() + 12].replace("\n", " ")
                found.append(f"{word} (use {row['term']}): …{context}…")
    return found


PUNCTUATION = [
    (re.compile(rf"(?<={CJK})[ \t]*[,;:?!]|[,;:?!][ \t]*(?={CJK})"), "ASCII , ; : ? ! beside Chinese: ，；：？！"),
    (re.compile(rf"(?<={CJK})\.(?=\s|$)"), "ASCII full stop after Chinese: 。"),
    (re.compile(rf"(?<={CJK})[()]|[()](?={CJK})|\([^()\n]*{CJK}[^()\n]*\)|(?<={CJK})[ \t]*\([A-Za-z][^()\n]*\)"),
     "ASCII parentheses in a Chinese sentence (a gloss or a Chinese aside): （）"),
    (re.compile(r'"'), "straight quotes: “”"),
    (re.compile(r"\d(?:\.\d+)?[ \t]*×(?![ \t]*[\d(（])"), "× for a ratio: 倍"),
]


def punctuation_problems(text: str) -> list[str]:
    found = []
    for pattern, rule in PUNCTUATION:
        for match in pattern.finditer(text):
            context = text[max(0, match.start() - 12):match.end() + 12].replace("\n", " ")
            found.append(f"{rule}: …{context}…")
    return found


def test_the_checks_catch_what_they_are_for():
    rows = terms()
    assert {"显存", "内存", "峰值显存", "原笔记", "代码文件", "准备单元格", "录制信息", "小结", "激活检查点",
            "梯度累积", "混合精度", "缓存分配器", "微批量"} <= {row["term"] for row in rows}
    assert avoided_words("激活值、激活函数和单元格都不算；", rows) == []
    assert [w.split(" ")[0] for w in avoided_words("峰值内存出现在原课程的第二个单元里，激活占了大头。", rows)] == [
        "峰值内存", "原课程", "单元", "激活"]
    assert avoided_words(prose("原笔记写道：“GPU 内存不足”。"), rows) == []          # a quotation keeps its words
    found = punctuation_problems(prose('显存不足(OOM)时, 看这里. 快了 6.0× ; 28 × 28 不算；"引号"'))
    assert {problem.split(": …")[0] for problem in found} == {rule for _, rule in PUNCTUATION}
    assert punctuation_problems("显存不足 (out of memory) 时") and not punctuation_problems("共 2 × (128 + 10) 个数")
    assert punctuation_problems(prose("显存不足（OOM）时，看这里。快了 6.0 倍；28 × 28、`f(x, y)` 与 [链接](a.md#b) 不算。")) == []


@pytest.mark.parametrize("page", chinese_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_a_chinese_page_uses_the_glossarys_terms(page):
    found = avoided_words(prose(page.read_text(encoding="utf-8")), terms())
    assert not found, f"{page.relative_to(ROOT)}:\n" + "\n".join(found)


def test_the_chinese_nav_uses_the_glossarys_terms():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    i18n = next(p["i18n"] for p in config["plugins"] if isinstance(p, dict) and "i18n" in p)
    zh = next(language for language in i18n["languages"] if language["locale"] == "zh")
    titles = "\n".join([zh["site_name"], zh["site_description"], *zh["nav_translations"].values()])
    found = avoided_words(titles, terms()) + punctuation_problems(titles)
    assert not found, "mkdocs.yml, the Chinese nav:\n" + "\n".join(found)


@pytest.mark.parametrize("page", chinese_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_a_chinese_page_uses_chinese_punctuation(page):
    found = punctuation_problems(prose(page.read_text(encoding="utf-8")))
    assert not found, f"{page.relative_to(ROOT)}:\n" + "\n".join(found)


def test_each_alias_is_given_where_its_term_first_appears():
    """Where a term with aliases first appears in the Chinese edition (in the nav's order), its aliases follow
    within a sentence or two, so that a reader who searches for the other name finds that place."""
    pages = [(page, prose(page.read_text(encoding="utf-8"), quotes=True)) for page in chinese_pages()]
    missing = []
    for row in terms():
        if not row["aliases"]:
            continue
        first = next(((page, text, text.index(row["term"])) for page, text in pages if row["term"] in text), None)
        if first is None:
            missing.append(f"{row['term']}: on no Chinese page")
            continue
        page, text, at = first
        near = text[max(0, at - 40):at + 160]
        missing += [f"{page.relative_to(ROOT)}: {row['term']} without {alias} near its first use: …{near[:80]}…"
                    for alias in row["aliases"] if alias not in near]
    assert not missing, "\n".join(missing)


def test_every_closing_summary_has_the_same_heading():
    headings = [(page, match[1]) for page in chinese_pages()
                for match in re.finditer(r"^## (.+?) \{#what-to-take-away\}", page.read_text(encoding="utf-8"), re.M)]
    summary = next(row["term"] for row in terms() if row["concept"] == "closing summary")
    assert headings and all(title == summary for _, title in headings), headings


def test_the_words_the_site_adds_keep_to_the_glossary():
    """The hook's Chinese words (stamps, tabs, notes, tables) and i18n/zh.yml's fold titles and figure descriptions
    are Chinese sentences too."""
    from tools import hook, translations
    texts = [re.sub(r"\{\w+\}|\]\([^)]*\)", " ", text) for text in hook.WORDS["zh"].values()]
    texts += [entry.get("zh") or "" for kind in translations.load().values() for entry in kind.values()]
    found = [problem for text in texts
             for problem in avoided_words(text, terms()) + punctuation_problems(text)]
    assert not found, "\n".join(found)
