"""Seconds for `mkdocs build --strict`, and the heaviest pages: HTML plus what it loads, without the search index."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
ASSET = re.compile(r'<(?:img|script)[^>]+src="([^"#?]+)|<link[^>]+href="([^"#?]+\.css)"')


def page_weight(page: Path) -> int:
    html = page.read_text(encoding="utf-8")
    total = len(html.encode())
    for match in ASSET.finditer(html):
        target = match.group(1) or match.group(2)
        if target.startswith("data:") or "://" in target:
            continue
        path = (page.parent / unquote(target)).resolve()
        total += path.stat().st_size if path.is_file() else 0
    return total


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", scratch],
                           cwd=ROOT, check=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
            runs.append(time.perf_counter() - started)
        weights = sorted(((page_weight(p), p.relative_to(scratch)) for p in Path(scratch).rglob("*.html")),
                         reverse=True)
    print("mkdocs build --strict: " + ", ".join(f"{s:.2f}" for s in runs) + " s (first run fills mkdocs-jupyter's cache)")
    for weight, path in weights[:5]:
        print(f"{weight / 1e6:6.3f} MB  {path}")


if __name__ == "__main__":
    main()
