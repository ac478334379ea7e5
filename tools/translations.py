"""The Chinese edition's words for what the snippets say in English: the title of each folded cell (the first
sentence of the cell's opening comment, ``snippets.fold_label``) and the alt text of each figure (its titles and
axes, as the recorder wrote them into ``figure_descriptions``).

They live in ``i18n/zh.yml``, each entry with the English it translates::

    folds:
      image_tensors/setup: {en: "what the cells below need: …", zh: "下面的单元格要用到的：…"}
    figures:
      cpu/mnist_samples/grid/1: {en: "Sixteen random training images …", zh: "随机抽取的十六张训练图像……"}

When the English changes, the entry is stale: ``python -m tools.translations`` lists what is missing, stale or
unused (and exits 1), ``--update`` adds the missing entries and refreshes the English of stale ones with an empty
``zh`` for a translator to fill in. The hook shows the Chinese on /zh/ only for entries that are current, else the
English.
"""
from __future__ import annotations

import argparse
import posixpath
import re
import sys
from pathlib import Path

import yaml

from tools import recordings, snippets

PATH = snippets.ROOT / "i18n" / "zh.yml"
DOCS = snippets.ROOT / "docs"
CELL_MARKER = re.compile(r"<!--[ \t]*cell:[ \t]*(?P<snippet>[\w-]+)/(?P<cell>[a-z][a-z0-9-]*)(?P<flags>[^>]*?)-->")


GLOSSARY = DOCS / "reference" / "glossary.zh.md"
TERMS_HEADER = "| 概念 | 本站用词 | 别名 | 不用 |"
LINK = re.compile(r"\[([^\]]+)\]\(([^)]*)\)")


def glossary_terms(glossary: Path = GLOSSARY) -> list[dict]:
    """The Chinese glossary's table of the terms the site uses (under "本站用语"), one dict per concept:
    ``concept`` (English), ``term``, ``section`` (the page#id its link names, relative to docs/, or None),
    ``aliases`` and ``avoid`` (lists of words)."""
    lines = Path(glossary).read_text(encoding="utf-8").splitlines()
    start = lines.index(TERMS_HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        concept, term, aliases, avoid = (cell.strip() for cell in line.strip("|").split("|"))
        link = LINK.fullmatch(term)
        section = posixpath.normpath(posixpath.join("reference", link[2])) if link else None
        split = lambda cell: [word.strip() for word in cell.split("、") if word.strip()]  # noqa: E731
        rows.append({"concept": concept, "term": link[1] if link else term, "section": section,
                     "aliases": split(aliases), "avoid": split(avoid)})
    return rows


def search_words(glossary: Path = GLOSSARY) -> list[str]:
    """The Chinese words of the glossary's terms and aliases, for jieba's user dictionary: the search index then
    keeps each one whole (梯度累积, not 梯度 + 累积), so that typing it finds the section that teaches it."""
    words = [word for row in glossary_terms(glossary) for word in [row["term"], *row["aliases"]]]
    return list(dict.fromkeys(w for w in words if re.fullmatch(r"[\u3400-\u9fff]{2,}", w)))


def folded_cells(docs_dir: Path = DOCS) -> dict[str, dict[str, str]]:
    """snippet → {cell: English fold title} for every cell an English page marks ``collapsed``, in page order."""
    folded: dict[str, dict[str, str]] = {}
    for page in sorted(Path(docs_dir).rglob("*.md")):
        if ".zh." in page.name:
            continue
        for match in CELL_MARKER.finditer(page.read_text(encoding="utf-8")):
            if "collapsed" in match["flags"].split():
                folded.setdefault(match["snippet"], {})[match["cell"]] = ""
    for name, cells in folded.items():
        path = snippets.SNIPPETS_DIR / f"{name}.py"
        for cell in snippets.cells(path) if path.exists() else []:
            if cell.name in cells:
                cells[cell.name] = snippets.fold_label(cell.source)
    return folded


def expected(docs_dir: Path = DOCS) -> dict[str, dict[str, str]]:
    """What needs a Chinese word: {'folds': {snippet/cell: English}, 'figures': {device/snippet/cell/N: English}},
    a figure as each device's recording describes it (its title says which device), N counting from 1."""
    folds = {f"{name}/{cell}": label for name, cells in folded_cells(docs_dir).items()
             for cell, label in cells.items() if label}
    figures = {}
    for path in snippets.find():
        for device, recording in recordings.load_all(path.stem).items():
            for cell in recording["cells"]:
                for number, description in enumerate(cell.get("figure_descriptions", []), start=1):
                    figures[f"{device}/{path.stem}/{cell['name']}/{number}"] = description
    return {"folds": folds, "figures": figures}


def load(path: Path = PATH) -> dict[str, dict[str, dict[str, str]]]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else None
    return {kind: dict((data or {}).get(kind) or {}) for kind in ("folds", "figures")}


def problems(path: Path = PATH, docs_dir: Path = DOCS) -> list[str]:
    """Every entry that is missing, untranslated, stale (its English is not today's) or unused."""
    found, have, want = [], load(path), expected(docs_dir)
    for kind in ("folds", "figures"):
        for key, english in want[kind].items():
            entry = have[kind].get(key)
            if entry is None:
                found.append(f"{kind} {key}: missing")
            elif entry.get("en") != english:
                found.append(f"{kind} {key}: stale, the English is now {english!r}")
            elif not (entry.get("zh") or "").strip():
                found.append(f"{kind} {key}: no Chinese yet")
        found += [f"{kind} {key}: unused" for key in have[kind] if key not in want[kind]]
    return found


def chinese(kind: str, key: str, english: str, table: dict | None = None) -> str:
    """The Chinese for ``key`` when its entry translates today's ``english``, else ``english``."""
    entry = (table if table is not None else load())[kind].get(key) or {}
    return entry["zh"] if entry.get("en") == english and (entry.get("zh") or "").strip() else english


def update(path: Path = PATH, docs_dir: Path = DOCS) -> None:
    have, want = load(path), expected(docs_dir)
    data = {}
    for kind in ("folds", "figures"):
        data[kind] = {}
        for key, english in want[kind].items():
            entry = have[kind].get(key) or {}
            data[kind][key] = {"en": english, "zh": entry.get("zh", "") if entry.get("en") == english else ""}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    header = "# The Chinese edition's words for the snippets' fold titles and figure descriptions: tools/translations.py\n"
    Path(path).write_text(header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000),
                          encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="add missing entries, refresh stale English")
    args = parser.parse_args(argv)
    if args.update:
        update()
    found = problems()
    print("\n".join(found) or f"{PATH.relative_to(snippets.ROOT)}: every fold title and figure has its Chinese")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
