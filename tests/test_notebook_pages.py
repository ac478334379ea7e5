"""Notebook pages: nbconvert's mermaid loader (a module script importing mermaid from cdnjs) never reaches a page."""
from __future__ import annotations

import re

import nbformat
from nbconvert import HTMLExporter

from tools.notebook_pages import slim

# The shape of what nbconvert's lab template writes (lab/mermaidjs.html.j2), cut short.
LOADER = """<script type="module">
  document.addEventListener("DOMContentLoaded", async () => {
    const diagrams = document.querySelectorAll(".jp-Mermaid > pre.mermaid");
    if (!diagrams.length) { return; }
    const mermaid = (await import("https://cdnjs.cloudflare.com/ajax/libs/mermaid/11.10.0/mermaid.esm.min.mjs")).default;
    const elkUrl = "https://cdnjs.cloudflare.com/ajax/libs/mermaid-layout-elk/0.1.9/mermaid-layout-elk.esm.min.mjs";
  });
</script>
<style>
  .jp-Mermaid:not(.jp-RenderedMermaid) { display: none; }
  .jp-RenderedMermaid { overflow: auto; display: flex; }
</style>
<!-- End of mermaid configuration -->"""

PAGE = f"""<html><head><script>var keep = 1;</script>{LOADER}<style>.keep {{ color: red; }}</style></head>
<body><div class="jp-Cell keep"><pre>print(1)</pre></div></body></html>"""

EXTERNAL_IN_SCRIPT = re.compile(r"""["'`](https?:)?//[\w-]""")


def test_slim_drops_the_mermaid_loader_and_keeps_the_rest():
    page = slim(PAGE)
    assert "mermaid" not in page.lower() and "cdnjs" not in page
    assert "<script>var keep = 1;</script>" in page
    assert "<style>.keep { color: red; }</style>" in page
    assert '<pre tabindex="0">print(1)</pre>' in page


def test_slim_drops_the_loader_that_this_nbconvert_writes():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    assert "cdnjs.cloudflare.com/ajax/libs/mermaid" in page, "nbconvert no longer writes the loader: simplify slim()"
    slimmed = slim(page)
    assert "mermaid" not in slimmed.lower()
    assert "jp-CodeCell" in slimmed


def test_no_built_page_mentions_mermaid_or_loads_from_another_origin_in_a_script(site):
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(site)
        assert "mermaid" not in text.lower(), f"{relative} still carries a mermaid loader"
        for attributes, body in re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
            if "application/json" in attributes:
                continue  # Material's config: data, not code
            found = EXTERNAL_IN_SCRIPT.search(body)
            assert not found, f"{relative}: an inline script names another origin: {body[found.start():][:100]}"
