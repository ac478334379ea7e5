"""The site: strict build from recordings only, markers, code provenance, figures, no other origins, honest numbers."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from bs4 import BeautifulSoup

from site_build import ROOT, build
from tools import hook, recordings, snippets

CHAPTERS = sorted((ROOT / "docs").rglob("*.md"))
TEACHING = [ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "chapters").glob("*.md"))]
ALL_CELLS = {(p.stem, c.name): c.source for p in snippets.find() for c in snippets.cells(p)}


def pages(site: Path):
    for path in sorted(site.rglob("*.html")):
        yield path, BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def markers():
    for md in CHAPTERS:
        for match in hook.CELL_MARKER.finditer(md.read_text(encoding="utf-8")):
            yield md, match["snippet"], match["cell"]


def test_committed_recordings_are_current():
    assert recordings.problems() == []


def test_strict_build_passes_without_torch(site):
    assert (site / "index.html").exists() and (site / "chapters" / "gpu-memory" / "index.html").exists()


def test_every_named_cell_exists_and_every_snippet_is_taught():
    named = list(markers())
    missing = [(md.name, s, c) for md, s, c in named if (s, c) not in ALL_CELLS]
    assert not missing
    taught = {s for _, s, _ in named}
    assert taught == {p.stem for p in snippets.find()}


def test_every_python_block_comes_from_a_snippet(site):
    sources = set(ALL_CELLS.values())
    checked = 0
    for path, soup in pages(site):
        blocks = soup.select("div.language-python pre code") + soup.select(".jp-CodeCell .jp-InputArea pre")
        for block in blocks:
            text = block.get_text().rstrip("\n")
            if "\n" in text:
                checked += 1
                assert text in sources, f"{path.relative_to(site)} has Python that no snippet holds:\n{text[:300]}"
    assert checked >= 2 * len(ALL_CELLS) - 20   # chapters and notebook pages both show the cells


def test_a_cell_expands_into_code_output_figure_and_stamp(site):
    soup = BeautifulSoup((site / "chapters" / "image-data" / "index.html").read_text(), "html.parser")
    recording = recordings.load("preprocessing")
    cell = next(c for c in recording["cells"] if c["name"] == "histogram")
    codes = [b.get_text().rstrip("\n") for b in soup.select("div.language-python pre code")]
    assert ALL_CELLS[("preprocessing", "histogram")] in codes
    outputs = [b.get_text().rstrip("\n") for b in soup.select("div.language-text pre code")]
    assert cell["stdout"].rstrip("\n") in outputs
    images = {img["src"].split("/")[-1]: img["alt"] for img in soup.select("img")}
    assert images["histogram-1.png"] == cell["figure_descriptions"][0] != ""
    stamps = soup.select("p.cell-stamp")
    assert stamps and recording["environment"]["device_name"] in stamps[0].get_text()
    link = next(a for a in stamps[0].select("a") if a.get_text().startswith("snippets/"))
    assert (site / "chapters" / "image-data" / link["href"]).resolve().exists()


def test_every_figure_and_local_link_target_exists(site):
    for path, soup in pages(site):
        for img in soup.select("img"):
            src = img["src"]
            if not src.startswith("data:"):
                assert (path.parent / unquote(src)).resolve().exists(), f"{path}: missing image {src}"
            assert img.get("alt"), f"{path}: image without alt text"


def test_no_page_requests_another_origin(site):
    external = re.compile(r"^(https?:)?//", re.I)
    for path, soup in pages(site):
        for tag, attribute in (("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"),
                               ("source", "src"), ("video", "src"), ("audio", "src")):
            for element in soup.find_all(tag):
                value = element.get(attribute, "")
                if tag == "link" and not set(element.get("rel", [])) & {"stylesheet", "preload", "icon",
                                                                        "modulepreload", "prefetch", "manifest"}:
                    continue
                assert not external.match(value), f"{path.relative_to(site)}: <{tag}> loads {value}"
        for style in soup.find_all("style"):
            assert not re.search(r"(@import|url\()\s*['\"]?(https?:)?//", style.get_text()), path
    for css in site.rglob("*.css"):
        assert not re.search(r"(@import|url\()\s*['\"]?(https?:)?//", css.read_text(errors="ignore")), css


NUMBER = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+|\d{4,})(?![\w])")


def test_numbers_in_prose_are_printed_by_a_snippet():
    corpus = " ".join(c["stdout"] for p in snippets.find() for c in recordings.load(p.stem)["cells"]).replace(",", "")
    unbacked = []
    for md in TEACHING:
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        text = re.sub(r"<!--.*?-->", "", text)
        for number in NUMBER.findall(text):
            if not re.search(r"(?<![\d.])" + re.escape(number.replace(",", "")) + r"(?!\d)", corpus):
                unbacked.append(f"{md.relative_to(ROOT)}: {number}")
    assert not unbacked, "numbers typed in prose that no recording prints:\n" + "\n".join(unbacked)


def test_key_facts_are_stated_and_backed():
    """The chapters state the corrected figures, and those figures are what the recordings print."""
    text = " ".join(md.read_text() for md in TEACHING)
    outputs = " ".join(c["stdout"] for p in snippets.find() for c in recordings.load(p.stem)["cells"])
    for fact in ("101,770", "394,634", "407,080", "814,160", "200,704", "524,288", "0.1307", "0.3081"):
        assert fact in text and fact in outputs, fact


def test_notebook_pages_have_downloads_and_colab(site):
    repo = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["repo_url"].removeprefix("https://github.com/")
    for path in snippets.find():
        page = site / "notebooks" / path.stem / "index.html"
        soup = BeautifulSoup(page.read_text(), "html.parser")
        links = {a.get_text(strip=True): a["href"] for a in soup.select("nav.notebook-links a")}
        assert (page.parent / links[f"Download {path.stem}.ipynb"]).exists()
        assert (page.parent / links[f"Download {path.stem}.py"]).resolve().read_bytes() == path.read_bytes()
        assert links["Open in Colab"] == (f"https://colab.research.google.com/github/{repo}/blob/main/"
                                          f"docs/notebooks/{path.stem}.ipynb")
        assert soup.select(".jp-Notebook"), f"{page} did not render as a notebook"
        assert "Traceback" not in soup.get_text()


def test_computation_times_lists_every_snippet_and_cell(site):
    text = BeautifulSoup((site / "reference" / "computation-times" / "index.html").read_text(),
                         "html.parser").get_text()
    for path in snippets.find():
        assert path.stem in text
        for cell in recordings.load(path.stem)["cells"]:
            assert cell["name"] in text


def test_home_page_names_the_recording_hardware(site):
    text = (site / "index.html").read_text()
    for path in snippets.find():
        assert recordings.load(path.stem)["environment"]["device_name"] in text


@pytest.fixture
def copy_of_project(tmp_path):
    for name in ("docs", "snippets", "tools", "overrides"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    return tmp_path


def test_stale_recording_fails_the_strict_build_and_says_how_to_fix_it(copy_of_project, tmp_path):
    snippet = copy_of_project / "snippets" / "mnist_mlp.py"
    snippet.write_text(snippet.read_text() + "\nprint('changed')\n")
    process = build(copy_of_project, tmp_path / "site")
    assert process.returncode != 0
    assert "mnist_mlp: stale: mnist_mlp.py changed since it was recorded" in process.stderr
    assert "run `python -m tools.record mnist_mlp`" in process.stderr


def test_missing_cell_fails_the_strict_build(copy_of_project, tmp_path):
    chapter = copy_of_project / "docs" / "chapters" / "models.md"
    chapter.write_text(chapter.read_text() + "\n\n<!-- cell: mnist_mlp/no-such-cell -->\n")
    process = build(copy_of_project, tmp_path / "site")
    assert process.returncode != 0 and "no cell 'no-such-cell' in mnist_mlp.py" in process.stderr


WORKFLOWS = ROOT / ".github" / "workflows"


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["docs.yml", "gpu.yml"]
    beside_python = Path(sys.executable).parent / "actionlint"      # the venv's, when it is not activated
    actionlint = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    assert actionlint, "actionlint is not installed (requirements-dev.txt installs it)"
    process = subprocess.run([actionlint, *map(str, files)], cwd=ROOT,
                             capture_output=True, text=True)
    assert process.returncode == 0, process.stdout + process.stderr


def test_gpu_workflow_is_safe_for_a_self_hosted_runner():
    text = (WORKFLOWS / "gpu.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True]            # YAML reads the key `on` as True
    assert set(triggers) == {"push", "workflow_dispatch"} and triggers["push"]["branches"] == ["main"]
    assert "pull_request" not in text
    assert workflow["permissions"] == {"contents": "read"} and workflow["concurrency"]["group"]
    assert "gpu" in workflow["jobs"]["record"]["runs-on"] and "self-hosted" in workflow["jobs"]["record"]["runs-on"]
    steps = " ".join(step.get("run", "") for step in workflow["jobs"]["record"]["steps"])
    assert "python -m tools.record --device cuda --force" in steps and "mkdocs build --strict" in steps


def test_every_action_is_pinned_to_a_full_commit_sha():
    for path in WORKFLOWS.glob("*.yml"):
        for uses in re.findall(r"uses:\s*(\S+)", path.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{path.name}: {uses}"


def test_notebook_pages_carry_only_the_stylesheet_they_use(site):
    """nbconvert inlines ~570 KB of JupyterLab CSS; the hook keeps the rules that can match the page."""
    for path in snippets.find():
        page = (site / "notebooks" / path.stem / "index.html").read_text()
        styles = re.findall(r"<style[^>]*>(.*?)</style>", page, re.S)
        assert max(map(len, styles)) < 200_000
        assert ".jp-OutputArea-output" in "".join(styles)          # rules the page uses survive
        assert ".jp-Dialog" not in "".join(styles)                  # rules for absent elements go
        assert '<pre tabindex="0">' in page
