"""A lesson, not a lab report (issue 17): what a learner reads on a chapter page is short, single-path code, the
setup and helpers folded with a label that says what they hold, and exercises whose answers are recorded cells.

Measured on the chapters' markers and the snippets' cells (``benchmarks/lesson_shape.py`` prints the same figures);
the browser tests measure the pages themselves (height in screens, code that fits)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tools import snippets

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!--\s*cell:\s*([\w-]+)/([a-z][a-z0-9-]*)((?:[ \t]+[a-z-]+)*)\s*-->")
TWO_PATHS = re.compile(r"^\s*(?:el)?if\b.*(?:device\.type|ALLOCATOR|cuda\.is_available\(\))", re.MULTILINE)


def course() -> list[tuple[str, Path]]:
    """(nav title, English page) for every page of the course, in order."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    return [(title, ROOT / "docs" / path) for entry in pages for title, path in entry.items()]


def markers(page: Path) -> list[tuple[str, set[str], snippets.Cell]]:
    """(snippet name, flags, cell) for every cell marker of a page."""
    found = []
    for match in MARKER.finditer(page.read_text(encoding="utf-8")):
        cell = next(c for c in snippets.cells(snippets.SNIPPETS_DIR / f"{match[1]}.py") if c.name == match[2])
        found.append((match[1], set(match[3].split()), cell))
    return found


def lines(cell) -> int:
    return sum(1 for line in cell.source.splitlines() if line.strip())


def visible(page: Path):
    return [(name, cell) for name, flags, cell in markers(page) if not flags & {"collapsed", "no-code", "answer"}]


def chapters() -> dict[str, list[Path]]:
    """Chapter number → its pages in order (a chapter split into pages has titles '6. …', '6.2 …')."""
    found: dict[str, list[Path]] = {}
    for title, page in course():
        found.setdefault(re.match(r"\d+", title)[0], []).append(page)
    return found


def test_visible_cells_are_short():
    every = [(f"{page.name}: {name}/{cell.name}", lines(cell)) for _, page in course() for name, cell in visible(page)]
    assert len(every) >= 30
    over_40 = [f"{where} ({n} lines)" for where, n in every if n > 40]
    over_25 = [f"{where} ({n} lines)" for where, n in every if n > 25]
    assert not over_40, "visible cells over 40 lines:\n" + "\n".join(over_40)
    assert len(over_25) <= len(every) // 10, f"{len(over_25)} of {len(every)} visible cells over 25 lines:\n" + \
        "\n".join(over_25)


def test_visible_cells_take_one_path():
    """What differs between CPU and GPU lives in a helper in a folded cell, not in the cell a learner reads."""
    branching = [f"{page.name}: {name}/{cell.name}: {m[0].strip()}" for _, page in course()
                 for name, cell in visible(page) for m in TWO_PATHS.finditer(cell.source)]
    assert not branching, "\n".join(branching)


def test_setup_is_folded_on_every_page_and_every_fold_says_what_it_holds():
    problems = []
    for _, page in course():
        for name, flags, cell in markers(page):
            if cell.name == "setup" and "collapsed" not in flags and "no-code" not in flags:
                problems.append(f"{page.name}: {name}/setup is not folded")
            if "collapsed" in flags and not cell.source.lstrip("\n").startswith("#"):
                problems.append(f"{page.name}: {name}/{cell.name} is folded without a first comment line")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("number", sorted(chapters()))
def test_each_chapter_ends_with_exercises_answered_by_recorded_cells(number):
    pages = chapters()[number]
    answers = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        found = [(name, cell) for name, flags, cell in markers(page) if "answer" in flags]
        if found:
            exercises = re.search(r"^## Exercises(?:\s*\{#exercises\})?\s*$", text, re.MULTILINE)
            assert exercises, f"{page.name}: answers outside an '## Exercises' section"
            assert not re.search(r"^## ", text[exercises.end():], re.MULTILINE), f"{page.name}: exercises not last"
            assert 2 <= len(found) <= 4, f"{page.name}: {len(found)} exercises"
            assert all(cell.name.startswith("exercise") for _, cell in found)
            answers += found
    assert pages[-1].read_text(encoding="utf-8").count("## Exercises") == 1, f"chapter {number} ends without exercises"
    assert len(answers) >= 2


def test_the_chinese_pages_follow_the_same_cells():
    for _, page in course():
        chinese = page.with_suffix(".zh.md")
        english = [(n, c.name, frozenset(f)) for n, f, c in markers(page)]
        assert [(n, c.name, frozenset(f)) for n, f, c in markers(chinese)] == english, chinese.name


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell binds at the top level, names its top-level code reads), by Python's own symbol table."""
    import symtable
    table = symtable.symtable(source, "cell", "exec")
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()
             or s.is_namespace()}
    read = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    return bound, read


def test_a_pasted_cell_finds_every_name_in_the_cells_above_it_on_its_page():
    """What the page promises about the copy buttons: pasted in the page's order, after the file's setup and the
    folded cells above it, each cell finds every name its top-level code reads (or Python's builtins do)."""
    import builtins
    missing = []
    for _, page in course():
        known: dict[str, set[str]] = {}
        for name, flags, cell in markers(page):
            if "no-code" in flags:
                continue
            bound, read = _names(cell.source)
            have = known.setdefault(name, set(dir(builtins)))
            missing += [f"{page.name}: {name}/{cell.name} reads {n!r}, defined in no cell above it"
                        for n in sorted(read - have - bound)]
            have |= bound
    assert not missing, "\n".join(missing)


def test_no_sentence_is_both_printed_and_written():
    """Outputs show data and prose explains: no printed line of eight words or more stands again in its page's
    prose (either edition's English page is where the outputs appear in English)."""
    from tools import recordings

    def flat(text: str) -> str:
        return re.sub(r"[\s`*_]+", " ", text).strip().lower()
    twice = []
    for _, page in course():
        prose = flat(re.sub(r"<!--.*?-->", "", page.read_text(encoding="utf-8"), flags=re.S))
        for name in dict.fromkeys(name for name, _, _ in markers(page)):
            for cell in recordings.load(name, "cpu")["cells"]:
                twice += [f"{page.name}: {name}/{cell['name']}: {line.strip()}" for line in cell["stdout"].splitlines()
                          if len(line.split()) >= 8 and flat(line) in prose]
    assert not twice, "\n".join(twice)
