"""The site: strict build from recordings only, markers, code provenance, figures, no other origins, honest numbers."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from bs4 import BeautifulSoup

from conftest import file_as_cuda
from site_build import ROOT, build
from tools import environment, hook, recordings, snippets

CHAPTERS = sorted((ROOT / "docs").rglob("*.md"))                     # both editions
TEACHING = [*sorted((ROOT / "docs").glob("index*.md")), *sorted((ROOT / "docs" / "chapters").glob("*.md"))]  # both editions
ALL_CELLS = {(p.stem, c.name): c.source for p in snippets.find() for c in snippets.cells(p)}


@pytest.fixture(scope="module")
def pages(site) -> list[tuple[Path, BeautifulSoup]]:
    """Every HTML page of the built site, parsed once for the tests that read them all (about 9 s a pass)."""
    return [(path, BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser"))
            for path in sorted(site.rglob("*.html"))]


def markers():
    for md in CHAPTERS:
        for match in hook.CELL_MARKER.finditer(md.read_text(encoding="utf-8")):
            yield md, match["snippet"], match["cell"]


def test_committed_recordings_are_current():
    assert recordings.problems() == []


def test_strict_build_passes_without_torch(site):
    assert (site / "index.html").exists()
    assert (site / "chapters" / "memory-arithmetic" / "index.html").exists()
    assert (site / "chapters" / "real-gpu" / "index.html").exists()


def test_every_named_cell_exists_and_every_snippet_is_taught():
    named = list(markers())
    missing = [(md.name, s, c) for md, s, c in named if (s, c) not in ALL_CELLS]
    assert not missing
    taught = {s for _, s, _ in named}
    assert taught == {p.stem for p in snippets.find()}


def test_every_python_block_comes_from_a_snippet(site, pages):
    sources = set(ALL_CELLS.values())
    checked = 0
    for path, soup in pages:
        blocks = soup.select("div.language-python pre code") + soup.select(".jp-CodeCell .jp-InputArea pre")
        for block in blocks:
            text = block.get_text().rstrip("\n")
            if "\n" in text:
                checked += 1
                assert text in sources, f"{path.relative_to(site)} has Python that no snippet holds:\n{text[:300]}"
    assert checked >= 2 * len(ALL_CELLS) - 20   # chapters and notebook pages both show the cells


def test_a_cell_expands_into_code_output_figure_and_stamp(site):
    soup = BeautifulSoup((site / "chapters" / "image-data" / "index.html").read_text(), "html.parser")
    recording = recordings.load("preprocessing", "cpu")
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


def test_every_figure_and_local_link_target_exists(site, pages):
    for path, soup in pages:
        for img in soup.select("img"):
            src = img["src"]
            if not src.startswith("data:"):
                assert (path.parent / unquote(src)).resolve().exists(), f"{path}: missing image {src}"
            assert img.get("alt"), f"{path}: image without alt text"


def test_no_page_requests_another_origin(site, pages):
    external = re.compile(r"^(https?:)?//", re.I)
    for path, soup in pages:
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


UNIT = {"byte": r"(?:bytes?|B)\b", "bytes": r"(?:bytes?|B)\b", "B": r"(?:bytes?|B)\b", "KiB": r"KiB", "MiB": r"MiB",
        "GiB": r"GiB", "kB": r"kB", "KB": r"(?:KB|kB)", "MB": r"MB", "GB": r"GB", "%": r"\s?%", "×": r"(?:×|x\b)",
        "times": r"(?:×|x\b|times)", "字节": r"(?:bytes?|B)\b", "倍": r"(?:×|x\b|times)"}
NUMBER = re.compile(r"(?<![A-Za-z0-9_.,])(?P<number>\d[\d,]*(?:\.\d+)?)(?:(?:\s?(?P<unit>bytes|byte|B|KiB|MiB|GiB|kB|KB|MB|GB|%|times"
                    r"|字节|倍)(?![A-Za-z]))|(?P<attached>×)(?![A-Za-z]))?")


def prose(text: str) -> str:
    """What a chapter says in its own words, as the hook shows it: gpu-only blocks only where their snippet has a
    CUDA recording (cpu-only blocks only where it has none); no code, no markers, no quotes from the lesson (“…”),
    no link targets, no headings."""
    text = hook.DEVICE_BLOCK.sub(lambda m: m["body"] if recordings.has_cuda(m["snippet"]) == (
        m["kind"] == "gpu") else "", text)
    for pattern, flags in ((r"```.*?```", re.S), (r"<!--.*?-->", re.S), (r"“[^”]*”", 0), (r"`[^`]*`", 0),
                           (r"\]\([^)]*\)", 0), (r"^#+ .*$", re.M)):
        text = re.sub(pattern, "]" if pattern.startswith(r"\]") else "", text, flags=flags)
    return text


def page_numbers() -> set[str]:
    """The numbers of the course's pages ('4.2' for '4.2 Memory over two steps, …' in the nav): names, not claims."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    course = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    return {m[1] for entry in course for title in entry if (m := re.match(r"(\d+\.\d+) ", title))}


def unbacked_numbers(text: str, outputs: str) -> list[str]:
    """Numbers in prose that no output prints. Checked: every number of 4+ digits or with a decimal point or
    thousands separator (anywhere in the outputs), and every number with a unit, however small (with the same unit
    in the outputs: '472 bytes' needs '472 bytes' or '472 B', '5%' needs '5%' or '5.0 %'). 1 KiB = 1,024 bytes and
    other definitions of a unit by 1 are not claims."""
    flat = outputs.replace(",", "")
    found = []
    for match in NUMBER.finditer(prose(text)):
        number, unit = match["number"].rstrip(",."), match["unit"] or match["attached"]
        bare = number.replace(",", "")
        if unit and bare == "1":
            continue
        if not unit and bare in PAGE_NUMBERS:        # "part 6.2", "[4.2 Memory over two steps](…)": a page's name
            continue
        if "," in number or len(bare.split(".")[0]) >= 4 or ("." in number and UNIT.get(unit, "").startswith("(?:bytes")):
            pattern = r"(?<![\d.])" + re.escape(bare) + r"(?!\d)"        # tables print these under a unit header
        elif unit:
            pattern = r"(?<![\d.])" + re.escape(bare) + r"(?:\.0+)?\s?" + UNIT[unit]
        elif "." in number:
            pattern = r"(?<![\d.])" + re.escape(bare) + r"(?!\d)"
        else:
            continue
        if not re.search(pattern, flat):
            found.append(match.group(0))
    return found


PAGE_NUMBERS = page_numbers()


def test_the_prose_number_check_catches_small_numbers_with_units():
    outputs = "parameters: 407,080 bytes\nratio 9.7x\naccuracy 96.00 %\n"
    assert unbacked_numbers("It is 407,080 bytes, 9.7× faster, 96 % right.", outputs) == []
    assert unbacked_numbers("472 bytes wasted, 32 MiB of workspace, about 5% more, 4,096 steps, 397.5 KiB.",
                            outputs) == ["472 bytes", "32 MiB", "5%", "4,096", "397.5 KiB"]
    assert unbacked_numbers("The lesson says “about 403 KB”; a `1024 * 1024` divisor; 1 KiB, 1 MiB.", outputs) == []
    assert unbacked_numbers("参数共407,080字节，快9.7倍；浪费472字节，约5%。", outputs) == ["472字节", "5%"]
    assert "6.2" in PAGE_NUMBERS and unbacked_numbers("See part 6.2; it is 6.2× faster.", outputs) == ["6.2×"]


def test_numbers_in_prose_are_printed_by_a_snippet():
    corpus = " ".join(c["stdout"] for p in snippets.find() for r in recordings.load_all(p.stem).values()
                      for c in r["cells"])
    unbacked = [f"{md.relative_to(ROOT)}: {number}" for md in TEACHING
                for number in unbacked_numbers(md.read_text(encoding="utf-8"), corpus)]
    assert not unbacked, "numbers typed in prose that no recording prints:\n" + "\n".join(unbacked)


def test_key_facts_are_stated_and_backed():
    """The chapters state the corrected figures, and those figures are what the recordings print."""
    text = " ".join(md.read_text() for md in TEACHING)
    outputs = " ".join(c["stdout"] for p in snippets.find() for c in recordings.load(p.stem, "cpu")["cells"])
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
        for cell in recordings.load(path.stem, "cpu")["cells"]:
            assert cell["name"] in text


def test_home_page_names_the_recording_hardware(site):
    text = (site / "index.html").read_text()
    for path in snippets.find():
        for recording in recordings.load_all(path.stem).values():
            assert recording["environment"]["device_name"] in text
    gpu = [p.stem for p in snippets.find() if recordings.has_cuda(p.stem)]
    if not gpu:   # the home page's claims about hardware agree with the table
        assert "none has been recorded on a GPU yet" in text
        assert "come from a real GPU" not in text


# A changed copy of the project is built in the English edition alone (LESSON_ONLY_LOCALE=en, mkdocs.yml): what these
# tests change and look at is the same in both editions, and one edition builds in half the time.
@pytest.fixture(scope="module")
def build_cache(tmp_path_factory) -> Path:
    """One LESSON_CACHE for this module's builds of changed copies (tools/build_speed.py): each copy changes one thing,
    so the pages it did not change come from the caches the builds before it left."""
    return tmp_path_factory.mktemp("build-cache")


@pytest.fixture
def copy_of_project(tmp_path, build_cache, monkeypatch):
    monkeypatch.setenv("LESSON_CACHE", str(build_cache))
    for name in ("docs", "snippets", "tools", "overrides", "i18n"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    for pins in environment.PINS_FILES.values():
        shutil.copy(pins, tmp_path)
    return tmp_path


def test_gpu_and_cpu_recordings_show_as_tabs_gpu_first_and_gpu_prose_only_with_a_gpu_recording(
        copy_of_project, tmp_path):
    chapter = copy_of_project / "docs" / "chapters" / "models.md"
    chapter.write_text(chapter.read_text() + "\n\n<!-- gpu-only: mnist_mlp -->\nGPU-ONLY-SENTENCE\n<!-- /gpu-only -->\n"
                       "<!-- cpu-only: mnist_mlp -->\nCPU-ONLY-SENTENCE\n<!-- /cpu-only -->\n"
                       "<!-- gpu-only: mnist_mlp -->\nOTHER-GPU-SENTENCE\n<!-- /gpu-only -->\n")
    process = subprocess.run([sys.executable, "-m", "tools.record", "--out", str(copy_of_project / "docs" / "outputs"),
                              "--snippets", str(copy_of_project / "snippets"), "--check"],
                             cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0, process.stdout
    before = build(copy_of_project, tmp_path / "before", LESSON_ONLY_LOCALE="en")
    assert before.returncode == 0, before.stderr[-3000:]
    page = (tmp_path / "before" / "chapters" / "models" / "index.html").read_text()
    assert "CPU-ONLY-SENTENCE" in page and "GPU-ONLY-SENTENCE" not in page and "OTHER-GPU" not in page

    file_as_cuda(copy_of_project / "docs" / "outputs", "mnist_mlp")
    subprocess.run([sys.executable, "-m", "tools.record", "--out", str(copy_of_project / "docs" / "outputs"),
                    "--snippets", str(copy_of_project / "snippets"), "mnist_mlp", "--device", "cpu"],
                   cwd=ROOT, capture_output=True, text=True, check=True)     # rewrites the notebook only
    after = build(copy_of_project, tmp_path / "after", LESSON_ONLY_LOCALE="en")
    assert after.returncode == 0, after.stderr[-3000:]
    soup = BeautifulSoup((tmp_path / "after" / "chapters" / "models" / "index.html").read_text(), "html.parser")
    text = soup.get_text()
    assert "GPU-ONLY-SENTENCE" in text and "OTHER-GPU-SENTENCE" in text and "CPU-ONLY-SENTENCE" not in text
    labels = [[label.get_text(strip=True) for label in tabbed.select(".tabbed-labels > label")]
              for tabbed in soup.select(".tabbed-set")]
    cell_tabs = [pair for pair in labels if pair and pair[0].startswith("GPU · ")]
    assert cell_tabs and all(pair[0] == "GPU · NVIDIA H200" and pair[1].startswith("CPU · ") for pair in cell_tabs)
    assert "Device: cuda (NVIDIA H200)" in text and "Device: cpu" in text
    gpu_torch = environment.pinned(environment.PINS_FILES["cuda"])["torch"] + "+cu130"
    cpu_torch = environment.pinned(environment.PINS_FILES["cpu"])["torch"]
    stamps = [p.get_text(" ", strip=True) for p in soup.select(".cell-stamp")]
    assert any(f"GPU · NVIDIA H200 (torch {gpu_torch}, CUDA 13.0" in line and f"(torch {cpu_torch}," in line
               for line in stamps), stamps                                  # each recording names its own torch
    notebook = (tmp_path / "after" / "notebooks" / "mnist_mlp" / "index.html").read_text()
    assert "Outputs recorded on GPU · NVIDIA H200" in notebook


def test_a_gpu_cell_without_a_gpu_recording_says_so_in_its_gpu_tab(site):
    soup = BeautifulSoup((site / "chapters" / "real-gpu" / "index.html").read_text(), "html.parser")
    gpu_tabs = [t for t in soup.select(".tabbed-set") if t.select_one(".tabbed-labels > label").get_text() == "GPU · not recorded"]
    assert gpu_tabs
    for tabbed in gpu_tabs:
        block = tabbed.select(".tabbed-block")[0].get_text()
        assert "has not run on a GPU yet" in block and "differs from the CPU tab" in block
        link = tabbed.select(".tabbed-block")[0].select_one("a")["href"]       # the command lives in Run it yourself
        assert link.endswith("reference/run-it-yourself/#recording-on-a-gpu"), link
        assert tabbed.select("input")[1].has_attr("checked")           # the CPU tab is the one shown


def test_unknown_snippet_in_a_gpu_only_block_fails_the_strict_build(copy_of_project, tmp_path):
    chapter = copy_of_project / "docs" / "chapters" / "models.md"
    chapter.write_text(chapter.read_text() + "\n\n<!-- gpu-only: no_such_snippet -->\nX\n<!-- /gpu-only -->\n")
    process = build(copy_of_project, tmp_path / "site", LESSON_ONLY_LOCALE="en")
    assert process.returncode != 0 and "gpu-only: no_such_snippet --> names a snippet" in process.stderr


@pytest.mark.parametrize("field, value, stale", [("torch", "2.13.0", True), ("platform", "Linux-other", False)])
def test_the_strict_build_agrees_with_check_on_environment_fields(copy_of_project, tmp_path, field, value, stale):
    path = copy_of_project / "docs" / "outputs" / "cpu" / "mnist_mlp.json"
    data = json.loads(path.read_text())
    data["environment"][field] = value
    path.write_text(json.dumps(data))
    check = subprocess.run([sys.executable, "-m", "tools.record", "--out", str(copy_of_project / "docs" / "outputs"),
                            "--snippets", str(copy_of_project / "snippets"), "--check"],
                           cwd=ROOT, capture_output=True, text=True)
    process = build(copy_of_project, tmp_path / "site", LESSON_ONLY_LOCALE="en")
    assert (check.returncode != 0) == stale == (process.returncode != 0), process.stderr[-2000:]


def test_stderr_and_warnings_are_shown_under_the_cell_on_chapter_and_notebook_pages(copy_of_project, tmp_path):
    """No cell of the lesson writes to stderr today; a recording that has some shows it, styled apart."""
    path = copy_of_project / "docs" / "outputs" / "cpu" / "mnist_mlp.json"
    data = json.loads(path.read_text())
    cell = next(c for c in data["cells"] if c["stdout"])
    cell["stderr"], cell["warnings"] = "STDERR-LINE from the cell\n", ["UserWarning: WARNED-LINE"]
    path.write_text(json.dumps(data))
    subprocess.run([sys.executable, "-m", "tools.record", "--out", str(copy_of_project / "docs" / "outputs"),
                    "--snippets", str(copy_of_project / "snippets"), "mnist_mlp", "--device", "cpu"],
                   cwd=ROOT, capture_output=True, text=True, check=True)     # rewrites the notebook only
    process = build(copy_of_project, tmp_path / "site", LESSON_ONLY_LOCALE="en")
    assert process.returncode == 0, process.stderr[-3000:]
    soup = BeautifulSoup((tmp_path / "site" / "chapters" / "models" / "index.html").read_text(), "html.parser")
    boxes = [b.get_text() for b in soup.select(".cell-stderr")]
    assert any("STDERR-LINE from the cell" in b and "UserWarning: WARNED-LINE" in b for b in boxes)
    assert not any("STDERR-LINE" in b.get_text() for b in soup.select("div.language-text:not(.cell-stderr)"))
    notebook = BeautifulSoup((tmp_path / "site" / "notebooks" / "mnist_mlp" / "index.html").read_text(),
                             "html.parser")
    stderr = notebook.select('[data-mime-type="application/vnd.jupyter.stderr"]')
    assert stderr and "STDERR-LINE" in stderr[0].get_text() and "WARNED-LINE" in stderr[0].get_text()


def test_the_repository_address_lives_in_mkdocs_yml_alone(site):
    """Pages write {{ repo_url }}; the hook puts mkdocs.yml's repo_url there, so a move of the repository changes
    one line. The sitemap has real addresses (site_url is set)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    repo, slug = config["repo_url"].rstrip("/"), config["repo_url"].removeprefix("https://github.com/")
    for path in (ROOT / "docs").rglob("*.md"):
        assert slug not in path.read_text(encoding="utf-8"), path
    for page in ("index.html", "zh/index.html"):
        text = BeautifulSoup((site / page).read_text(), "html.parser").get_text()
        assert f"git clone {repo}" in text and "{{ repo_url }}" not in text, page
    howto = (site / "reference" / "run-it-yourself" / "index.html").read_text()
    assert f'href="{repo}/tree/main/snippets"' in howto
    sitemap = (site / "sitemap.xml").read_text()
    assert "None" not in sitemap and f"<loc>{config['site_url']}</loc>" in sitemap


def test_the_home_page_states_the_reading_time_counted_from_the_course(site):
    import yaml
    config = {"nav": yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"], "docs_dir": str(ROOT / "docs")}
    for language, index, unit in (("en", site / "index.html", "minutes"), ("zh", site / "zh" / "index.html", "分钟")):
        found = hook.reading_time(config, language)
        text = BeautifulSoup(index.read_text(), "html.parser").get_text()
        assert f"{found['minutes']} {unit}" in text and f"{found['code']:,}" in text, language
        assert found["code"] > 300 and found["minutes"] % 5 == 0
        assert (found["words"] if language == "en" else found["characters"]) > 10_000


def test_an_exercise_keeps_its_answer_and_the_explanation_after_it_folded(site):
    """An exercise's answer (code, output, stamp) and the paragraph right after its marker sit in one closed fold,
    so a learner predicts first; the next exercise stays outside it."""
    soup = BeautifulSoup((site / "chapters" / "models" / "index.html").read_text(), "html.parser")
    answers = soup.select("details.success")
    assert len(answers) >= 2 and not any(d.has_attr("open") for d in answers)
    source = (ROOT / "docs" / "chapters" / "models.md").read_text()
    marker = re.search(r"<!-- cell: \S+ answer -->", source)
    explanation = hook.ANSWER_EXPLANATION.match(source, marker.end())["text"].split()
    first = answers[0].get_text(" ")
    assert " ".join(explanation[:4]).strip("*`") in first and answers[0].select("div.language-python")
    assert "Answer (open it after you have predicted)" in answers[0].summary.get_text()
    after = source[marker.end():].split("<!-- cell:")[0]
    assert len(after.strip()) > len(" ".join(explanation))        # there was more after the explanation: not folded
