"""Seconds for `mkdocs build --strict` (both editions), `mkdocs serve` as a reader meets it, the heaviest pages and
the search index.

`mkdocs serve` is started in a copy of the project (so nothing here is touched), as the README starts it: the
seconds until its first page answers, then, after an edit to one chapter is saved, the seconds until the served page
shows it (the rebuild that the browser's live reload then loads), three edits, each timed; then the same with
LESSON_ONLY_LOCALE=en, which builds and serves the English edition alone.

A page's weight is its HTML plus everything it loads from this site when it opens (images, stylesheets, scripts);
its edition's search index (search/search_index.json, zh/search/search_index.json) is fetched only when the reader
first opens the search (overrides/main.html), so it is printed on its own, and added to the heaviest page in a second
column. Raw and gzipped (each file gzipped on its own, level 6, as a web server would send it). Sizes in bytes; MB
here means 10^6 bytes.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
ASSET = re.compile(r'<(?:img|script)[^>]+src="([^"#?]+)|<link[^>]+href="([^"#?]+\.(?:css|js))"')


def files_of(page: Path, site: Path) -> list[Path]:
    html = page.read_text(encoding="utf-8")
    found = [page]
    for match in ASSET.finditer(html):
        target = match.group(1) or match.group(2)
        if target.startswith("data:") or "://" in target:
            continue
        path = (page.parent / unquote(target)).resolve()
        if path.is_file() and path not in found:
            found.append(path)
    return found


def search_index(page: Path, site: Path) -> Path:
    """The search index of the page's edition (the Chinese pages search their own)."""
    edition = "zh" if page.relative_to(site).parts[0] == "zh" else ""
    return site / edition / "search" / "search_index.json"


def weight(paths: list[Path]) -> tuple[int, int]:
    raw = sum(p.stat().st_size for p in paths)
    zipped = sum(len(gzip.compress(p.read_bytes(), compresslevel=6)) for p in paths)
    return raw, zipped


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode("utf-8", "replace")
    except OSError:
        return None


def _until(url: str, done, limit: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if done(_get(url)):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer as expected within {limit} s")


def serve_times(edits: int = 3, **environment: str) -> tuple[float, list[float]]:
    """(seconds until `mkdocs serve`'s first page answers, [seconds from saving an edit to one chapter until the
    served page shows it, for each edit]), in a copy of the project with empty caches (mkdocs-jupyter's and
    .cache/), with ``environment`` added to mkdocs serve's (LESSON_ONLY_LOCALE=en: one edition)."""
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        for name in ("docs", "snippets", "tools", "overrides", "i18n"):
            shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
        for name in ["mkdocs.yml", *(p.name for p in ROOT.glob("requirements*.txt"))]:
            shutil.copy(ROOT / name, project / name)
        port = _free_port()
        base = f"http://127.0.0.1:{port}/image-data-gpu-memory/"
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "--dev-addr", f"127.0.0.1:{port}"],
                                  cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, NO_MKDOCS_2_WARNING="1", **environment))
        try:
            _until(base, lambda page: page is not None)
            first = time.perf_counter() - started
            chapter, url = project / "docs" / "chapters" / "models.md", base + "chapters/models/"
            edits_seconds = []
            for number in range(edits):
                time.sleep(1.5)                       # mkdocs serve waits for the file system to settle
                marker = f"Edited-{number}-{time.time_ns()}"
                chapter.write_text(chapter.read_text(encoding="utf-8") + f"\n\n{marker}\n", encoding="utf-8")
                edits_seconds.append(_until(url, lambda page, m=marker: page is not None and m in page))
        finally:
            server.terminate()
            server.wait(timeout=30)
    return first, edits_seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryDirectory() as cache:
        site = Path(scratch)
        runs = []
        for _ in range(3):                  # the first with empty caches (LESSON_CACHE), the next two reading them
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", scratch],
                           cwd=ROOT, check=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                                      "LESSON_CACHE": cache},
                           stderr=subprocess.DEVNULL)
            runs.append(time.perf_counter() - started)
        weights = sorted(((weight(files_of(p, site)), p.relative_to(site)) for p in site.rglob("*.html")
                          if "assets" not in p.parts), reverse=True)
        indexes = {edition: weight([site / edition / "search" / "search_index.json"]) for edition in ("", "zh")}
        heaviest = weights[0][1]
        with_index = weight(files_of(site / heaviest, site) + [search_index(site / heaviest, site)])
        pages = sum(1 for p in site.rglob("index.html") if "assets" not in p.parts)
    print("mkdocs build --strict: " + ", ".join(f"{s:.2f}" for s in runs)
          + " s (the first with .cache/lesson empty: LESSON_CACHE)")
    print(f"mkdocs build --strict, median of {len(runs)}: {statistics.median(runs):.2f} s")
    for label, environment in (("mkdocs serve", {}),
                               ("LESSON_ONLY_LOCALE=en mkdocs serve", {"LESSON_ONLY_LOCALE": "en"})):
        first, edits = serve_times(**environment)
        print(f"{label}: first page after {first:.1f} s; a saved edit to chapters/models.md shown after "
              + ", ".join(f"{s:.1f}" for s in edits) + " s")
    print(f"{pages} pages; search index, fetched when a reader first opens the search: "
          + "; ".join(f"{edition or 'en'} {raw:,} bytes ({zipped:,} gzipped)"
                      for edition, (raw, zipped) in indexes.items()))
    print("heaviest pages, with everything they load when they open (HTML + images + CSS + JS):")
    for (raw, zipped), path in weights[:5]:
        print(f"{raw:>11,} bytes ({zipped:>9,} gzipped)  {path}")
    print(f"{with_index[0]:>11,} bytes ({with_index[1]:>9,} gzipped)  {heaviest} once its search is opened too")


if __name__ == "__main__":
    main()
