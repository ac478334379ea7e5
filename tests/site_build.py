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


def build(project: Path, site_dir: Path, **environment: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", **environment)
    return subprocess.run([sys.executable, "-c", BUILD, "build", "--strict", "--site-dir", str(site_dir)],
                          cwd=project, capture_output=True, text=True, env=env)


def serve(site_dir: Path):
    """Serve a built site as it is published: under site_url's path (``/image-data-gpu-memory/``), where Material's
    absolute links on the home pages and the 404 page point; everything outside that path answers 404.
    Returns (the site's URL, the server: call ``shutdown()`` when done)."""
    import functools
    import http.server
    import threading
    from urllib.parse import urlparse

    import yaml
    mount = urlparse(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["site_url"]).path or "/"

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            if not path.startswith(mount):
                return str(Path(site_dir) / ".outside-the-site")          # never exists: 404
            return super().translate_path("/" + path[len(mount):])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site_dir)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}{mount}", httpd
