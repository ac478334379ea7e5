"""Seconds for `mkdocs build --strict` (both editions), the heaviest pages and the search index.

A page's weight is its HTML plus everything it loads from this site (images, stylesheets, scripts) plus the search
index, which every page fetches; printed raw and gzipped (each file gzipped on its own, level 6, as a web server
would send it). Sizes in bytes; MB here means 10^6 bytes.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
ASSET = re.compile(r'<(?:img|script)[^>]+src="([^"#?]+)|<link[^>]+href="([^"#?]+\.(?:css|js))"')


def files_of(page: Path, site: Path) -> list[Path]:
    html = page.read_text(encoding="utf-8")
    found = [page, site / "search" / "search_index.json"]
    for match in ASSET.finditer(html):
        target = match.group(1) or match.group(2)
        if target.startswith("data:") or "://" in target:
            continue
        path = (page.parent / unquote(target)).resolve()
        if path.is_file() and path not in found:
            found.append(path)
    return found


def weight(paths: list[Path]) -> tuple[int, int]:
    raw = sum(p.stat().st_size for p in paths)
    zipped = sum(len(gzip.compress(p.read_bytes(), compresslevel=6)) for p in paths)
    return raw, zipped


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        site = Path(scratch)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", scratch],
                           cwd=ROOT, check=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
                           stderr=subprocess.DEVNULL)
            runs.append(time.perf_counter() - started)
        weights = sorted(((weight(files_of(p, site)), p.relative_to(site)) for p in site.rglob("*.html")
                          if "assets" not in p.parts), reverse=True)
        index = site / "search" / "search_index.json"
        index_raw, index_zipped = weight([index])
        pages = sum(1 for p in site.rglob("index.html") if "assets" not in p.parts)
    print("mkdocs build --strict: " + ", ".join(f"{s:.2f}" for s in runs) + " s (first run fills mkdocs-jupyter's cache)")
    print(f"{pages} pages; search index {index_raw:,} bytes ({index_zipped:,} gzipped)")
    for (raw, zipped), path in weights[:5]:
        print(f"{raw:>11,} bytes ({zipped:>9,} gzipped)  {path}  (HTML + images + CSS + JS + search index)")


if __name__ == "__main__":
    main()
