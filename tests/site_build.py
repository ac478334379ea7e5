"""Building the site for tests: strictly, into a temporary folder, with torch made unimportable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `import torch` raises inside the build: building the site must never need it.
BUILD = ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'mkdocs'; "
         "from mkdocs.__main__ import cli; cli()")


def build(project: Path, site_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-c", BUILD, "build", "--strict", "--site-dir", str(site_dir)],
                          cwd=project, capture_output=True, text=True, env=env)
