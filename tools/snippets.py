"""Find snippets and split them into their named ``# %% name`` cells (jupytext percent format)."""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS_DIR = ROOT / "snippets"
CELL_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
CELL_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Cell:
    name: str
    source: str      # the cell's code, without its marker line and without trailing blank lines
    first_line: int  # 1-based line number of the code's first line in the file


def find(snippets_dir: Path = SNIPPETS_DIR, names: list[str] | None = None) -> list[Path]:
    """The snippet files, sorted; only ``names`` (file stems) if given. Unknown names raise ``KeyError``."""
    paths = sorted(p for p in Path(snippets_dir).glob("*.py") if not p.name.startswith("_"))
    if not names:
        return paths
    by_name = {p.stem: p for p in paths}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"no snippet named {', '.join(unknown)} in {snippets_dir}")
    return [by_name[n] for n in names]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cells(path: Path) -> list[Cell]:
    """The file's cells in order. Every line must belong to a named cell; names are unique (``ValueError`` names the
    line otherwise). A build asks for each snippet's cells about 700 times: the file is read each time, and split
    again only when its text changed."""
    return list(_cells(str(path), Path(path).read_text(encoding="utf-8")))


@functools.lru_cache(maxsize=64)
def _cells(path: str, text: str) -> tuple[Cell, ...]:
    lines = text.splitlines()
    found: list[tuple[str, int, list[str]]] = []
    for number, line in enumerate(lines, start=1):
        marker = CELL_MARKER.match(line)
        if marker:
            name = marker["rest"].strip()
            if not CELL_NAME.match(name):
                raise ValueError(f"{path}:{number}: cell marker needs a name like '# %% load-data', got {line!r}")
            found.append((name, number + 1, []))
        elif found:
            found[-1][2].append(line)
        elif line.strip():
            raise ValueError(f"{path}:{number}: code before the first '# %% name' cell marker")
    names = [name for name, _, _ in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: cell names used twice: {', '.join(duplicates)}")
    if not found:
        raise ValueError(f"{path}: no '# %% name' cells")
    return tuple(Cell(name, "\n".join(body).rstrip("\n").rstrip(), first) for name, first, body in found)


SENTENCE = re.compile(r"(.+?[.;])(?:\s|$)|(.+)$", re.S)


def opening_sentences(source: str) -> list[str]:
    """The sentences of a cell's opening comment (its first lines that are comments), in order."""
    lines = []
    for line in source.lstrip("\n").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text, found = " ".join(lines).strip(), []
    while text:
        match = SENTENCE.match(text)
        sentence = (match[1] or match[2]).strip()
        found.append(sentence)
        text = text[match.end():].strip()
    return found


def fold_label(source: str) -> str:
    """What a folded cell holds, in its own words: the first sentence of its opening comment (``# Setup the cells
    below need: imports, the device, …`` gives that sentence), or '' when it opens with code."""
    sentences = opening_sentences(source)
    if not sentences:
        return ""
    label = re.sub(r"^Setup the cells below need:\s*", "what the cells below need: ", sentences[0].rstrip(".;"))
    if len(label) > LABEL_LENGTH:                              # a title, not a paragraph: cut at a word, say so
        label = label[:LABEL_LENGTH].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
    return label.replace('"', "'")


LABEL_LENGTH = 80
