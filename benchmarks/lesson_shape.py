"""How long the lesson's pages and cells are, as a learner meets them.

    python benchmarks/lesson_shape.py            # cells only (reads snippets and chapters)
    python benchmarks/lesson_shape.py SITE_DIR   # also screens per page, in Chromium

Cells: for each English page, the visible code cells (markers without ``collapsed``, ``answer`` or ``no-code``), their line
counts (non-blank lines of the cell's source), how many exceed 25 and 40 lines, and the folded cells.
Screens: each built page's document height at 1280 px wide with its figures loaded and every fold (``details``)
closed, divided by 900 px.
"""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools import snippets  # noqa: E402

MARKER = re.compile(r"<!--\s*cell:\s*([\w-]+)/([a-z][a-z0-9-]*)((?:[ \t]+[a-z-]+)*)\s*-->")
SCREEN = 900


def cell_lines(page: Path) -> tuple[list[int], list[int]]:
    """(visible cells' line counts, folded cells' line counts) of one chapter page, in page order."""
    visible, folded = [], []
    for match in MARKER.finditer(page.read_text(encoding="utf-8")):
        flags = set(match[3].split())
        if flags & {"no-code", "answer"}:     # an exercise's answer is folded with its output
            continue
        path = snippets.SNIPPETS_DIR / f"{match[1]}.py"
        cell = next(c for c in snippets.cells(path) if c.name == match[2])
        lines = sum(1 for line in cell.source.splitlines() if line.strip())
        (folded if "collapsed" in flags else visible).append(lines)
    return visible, folded


def pages() -> list[Path]:
    return sorted(p for p in (ROOT / "docs").rglob("*.md") if ".zh." not in p.name)


def screens(site: Path) -> dict[str, float]:
    """Screens of 900 px per built English page at 1280 px, folds closed."""
    from playwright.sync_api import sync_playwright

    found = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1280, "height": SCREEN})
        for html in sorted(site.rglob("index.html")):
            relative = html.relative_to(site).as_posix()
            if relative.startswith(("zh/", "assets/", "search/")) or relative == "404.html":
                continue
            page.goto(html.as_uri())
            page.evaluate("""async () => {
                for (const img of document.images) { img.loading = "eager"; try { await img.decode(); } catch (e) {} }
                document.querySelectorAll('details[open]').forEach(d => d.open = false); }""")
            found[relative.removesuffix("index.html") or "/"] = page.evaluate(
                "document.documentElement.scrollHeight") / SCREEN
        browser.close()
    return found


def main() -> None:
    every = []
    print(f"{'page':45} {'visible':>7} {'lines':>6} {'max':>4} {'>25':>4} {'>40':>4} {'folded':>6}")
    for page in pages():
        visible, folded = cell_lines(page)
        if not visible and not folded:
            continue
        every += visible
        print(f"{page.relative_to(ROOT / 'docs').as_posix():45} {len(visible):7} {sum(visible):6} "
              f"{max(visible, default=0):4} {sum(n > 25 for n in visible):4} {sum(n > 40 for n in visible):4} "
              f"{len(folded):6}")
    if every:
        share = sum(n <= 25 for n in every) / len(every)
        print(f"all visible cells: {len(every)}, {sum(every)} lines; median {statistics.median(every)}, "
              f"90th percentile {sorted(every)[int(0.9 * (len(every) - 1))]}, max {max(every)}; "
              f"{share:.0%} at most 25 lines, {sum(n > 40 for n in every)} over 40")
    if len(sys.argv) > 1:
        print(f"\nscreens of {SCREEN} px at 1280 px, folds closed:")
        for name, count in screens(Path(sys.argv[1])).items():
            print(f"{count:6.1f}  {name}")


if __name__ == "__main__":
    main()
