"""Helpers that several snippets carry, written once in tools/helpers/ and copied into every snippet that uses
them, so that a fix reaches every copy while each snippet still runs on its own.

    python -m tools.shared            # copy each helper into the snippets that define any of its names
    python -m tools.shared --check    # change nothing; list the copies that differ, exit 1 if one does

A helper file holds top-level definitions (functions, constants). A snippet *uses* a helper when it defines one of
its names at the top level; the copy then replaces the lines from the first such definition to the last (or, for
a snippet that has only some of them, the lines of those) with the helper's definitions, comments above them
excluded.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from tools import snippets

HELPERS_DIR = Path(__file__).resolve().parent / "helpers"


def definitions(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, last line) of each top-level def, class or assignment, 1-based, decorators included."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((node.name, start, node.end_lineno))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found.append((node.targets[0].id, node.lineno, node.end_lineno))
    return found


def helper_block(path: Path) -> tuple[set[str], str]:
    """The helper's names and its text from its first definition to its end."""
    source = path.read_text(encoding="utf-8")
    found = definitions(source)
    lines = source.splitlines()
    return {name for name, _, _ in found}, "\n".join(lines[found[0][1] - 1:]).rstrip() + "\n"


def copied(source: str, names: set[str], block: str) -> str:
    """``source`` with its definitions of ``names`` replaced by ``block`` (unchanged if it defines none)."""
    spans = [(start, end) for name, start, end in definitions(source) if name in names]
    if not spans:
        return source
    lines = source.splitlines(keepends=True)
    first, last = spans[0][0], spans[-1][1]
    return "".join(lines[:first - 1]) + block + "".join(lines[last:])


def differences(snippets_dir: Path = snippets.SNIPPETS_DIR) -> list[str]:
    """'snippet: helper' for every copy that differs from its helper."""
    found = []
    for helper in sorted(HELPERS_DIR.glob("*.py")):
        if helper.name == "__init__.py":
            continue
        names, block = helper_block(helper)
        for path in snippets.find(snippets_dir):
            source = path.read_text(encoding="utf-8")
            if copied(source, names, block) != source:
                found.append(f"{path.name}: {helper.name}")
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        found = differences()
        for line in found:
            print(f"differs from tools/helpers/{line.split(': ')[1]}: {line.split(':')[0]}")
        return 1 if found else 0
    for helper in sorted(HELPERS_DIR.glob("*.py")):
        if helper.name == "__init__.py":
            continue
        names, block = helper_block(helper)
        for path in snippets.find():
            source = path.read_text(encoding="utf-8")
            new = copied(source, names, block)
            if new != source:
                path.write_text(new, encoding="utf-8")
                print(f"{path.name}: {helper.name} copied in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
