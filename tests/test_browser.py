"""The built site in a real browser (Debian's Chromium driven by Playwright), served on 127.0.0.1, offline.

One crawl visits every page reachable from the home page: it records console errors, failed requests, requests to
other origins, images that do not decode, links that do not answer 200, and axe-core's accessibility violations.
The other tests look at chapters, the copy button, search, the colour schemes and the notebook pages.
"""
from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

import browser_pages  # noqa: E402
from tools import snippets, translations  # noqa: E402

def _course() -> list[str]:
    import yaml
    nav = yaml.safe_load((Path(__file__).resolve().parent.parent / "mkdocs.yml").read_text())["nav"]
    course = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    return [next(iter(entry.values())).removesuffix(".md") + "/" for entry in course]


CHAPTERS = _course()






@pytest.fixture
def context(browser, server):
    context = browser.new_context(base_url=server, permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1280, "height": 900})
    yield context
    context.close()


class Visit:
    """A page (one browser tab) opened with everything that can go wrong on the way recorded; ``open`` again to go to
    the next address in the same tab (a new tab per address cost the crawl about 0.3 s of CPU a page)."""

    def __init__(self, context, server):
        self.page = context.new_page()
        self.errors, self.failed, self.foreign = [], [], []
        origin = urlparse(server).netloc
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.url} ({r.status})"))
        self.page.on("request", lambda r: urlparse(r.url).netloc not in (origin, "")
                     and not r.url.startswith("data:") and self.foreign.append(r.url))

    def open(self, url, decode=True):
        """Open ``url`` and wait for its load event (its stylesheets, scripts and eager images); with ``decode``, then
        load and decode every image (``broken``). What went wrong is recorded afresh for each address."""
        self.errors, self.failed, self.foreign, self.broken = [], [], [], []
        self.page.goto(url, wait_until="load")
        if decode:
            self.decode()
        return self.page

    def decode(self):
        """Lazy images load only near the viewport: load them all, then ask each one to decode."""
        self.broken = self.page.evaluate("""async () => {
            const broken = [];
            for (const img of document.images) {
                img.loading = "eager";
                try { await img.decode(); } catch (e) { broken.push(img.currentSrc || img.src); }
                if (!img.naturalWidth) broken.push(img.currentSrc || img.src);
            }
            return broken; }""")


FACTS_JS = """() => ({
    python: document.querySelectorAll('div.language-python pre code').length,
    output: document.querySelectorAll('div.language-text pre code').length,
    python_shown: [...document.querySelectorAll('div.language-python pre code')].some(el => el.checkVisibility()),
    stamp: ([...document.querySelectorAll('p.cell-stamp')].find(el => el.checkVisibility()) || {}).innerText || '',
    notebook_cells: document.querySelectorAll('.jp-Notebook > .jp-CodeCell').length,
    notebook_alts: [...document.querySelectorAll('.jp-OutputArea-output img')].map(img => img.getAttribute('alt')),
})"""


@pytest.fixture(scope="session")
def crawl(browser, server, site):
    """Every page reachable from the home page, each opened once at 1280 px, in the light scheme as a new reader
    meets it (no stored palette). On that visit: console errors, failed requests, requests to other origins, images
    that do not decode, every link (each one then asked for its status), axe-core's rules and the contrast of text
    (``browser_pages.contrast``) with the folds closed (every English page and a Chinese page of each type), what the
    page shows (``FACTS_JS``), its layout (``LAYOUT_JS``, which opens the folds), then the reader's switch to the dark
    scheme and the contrast of text in it, folds open (the same pages). The 390 px pass is tests/test_layout.py."""
    from axe_playwright_python.sync_playwright import Axe
    axe = Axe()
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
    context.add_init_script("localStorage.clear()")        # each page opens in the scheme the system asks for
    pages, links, problems, violations, facts, layout, dark = {}, {}, [], {}, {}, {}, {}
    axed = set(url for url in browser_pages.site_pages(site) if not url.startswith("zh/")) | set(
        browser_pages.one_of_each(browser_pages.site_pages(site)))
    queue, seen, visit = deque([server]), {server}, Visit(context, server)
    while queue:
        url = queue.popleft()
        path = url.removeprefix(server)
        page = visit.open(url, decode=False)
        if path in axed:
            violations[url] = browser_pages.axe_all_but_contrast(axe, page) + browser_pages.contrast(
                axe, page, f"light 1280 px {path or 'home'}")
        pages[url] = page.title()
        facts[path] = page.evaluate(FACTS_JS)
        layout[(1280, path)] = page.evaluate(browser_pages.LAYOUT_JS)     # the figures load, the folds open
        visit.decode()
        for kind, found in (("console error", visit.errors), ("failed request", visit.failed),
                            ("request to another origin", visit.foreign), ("image that does not decode", visit.broken)):
            problems += [f"{url}: {kind}: {item}" for item in found]
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target = urldefrag(urljoin(url, href)).url
            if urlparse(target).netloc != urlparse(server).netloc or not target.startswith(server):
                continue
            links.setdefault(target, url)
            if target not in seen and (target.endswith("/") or target.endswith(".html")):
                seen.add(target)
                queue.append(target)
        if path in axed:
            browser_pages.to_dark(page)
            dark[path] = browser_pages.contrast(axe, page, f"dark 1280 px {path or 'home'}")
    visit.page.close()
    statuses = {target: context.request.get(target).status for target in links}
    context.close()
    print(f"\ncrawled {len(pages)} pages, checked {len(statuses)} internal links")
    return {"pages": pages, "links": links, "statuses": statuses, "problems": problems, "violations": violations,
            "facts": facts, "layout": layout, "dark": dark}


def test_every_page_loads_cleanly_offline(crawl, server, site):
    assert len(crawl["pages"]) >= 4 + 2 + len(snippets.find()) + 1
    assert {url.removeprefix(server) for url in crawl["pages"]} >= set(browser_pages.site_pages(site))
    assert not crawl["problems"], "\n".join(crawl["problems"])


def test_every_internal_link_resolves(crawl):
    broken = [f"{target} (linked from {crawl['links'][target]}): {status}"
              for target, status in crawl["statuses"].items() if status != 200]
    assert not broken, "\n".join(broken)
    for path in snippets.find():    # the downloads are among the links checked
        assert any(t.endswith(f"snippets/{path.name}") for t in crawl["statuses"])
        assert any(t.endswith(f"{path.stem}.ipynb") for t in crawl["statuses"])


def test_no_serious_or_critical_accessibility_violations(crawl, site):
    assert len(crawl["violations"]) >= len([u for u in browser_pages.site_pages(site) if not u.startswith("zh/")])
    found = [f"{url}: {v}" for url, items in crawl["violations"].items() for v in items]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_shows_code_output_and_stamp(crawl, chapter):
    facts = crawl["facts"][chapter]
    assert facts["python"] >= 3 and facts["output"] >= 3
    assert re.search(r"snippets/\w+\.py · notebook · recorded on .+ \(torch .+, \d{4}-\d{2}-\d{2}, [\d.]+ s\)",
                     facts["stamp"])                                     # the first stamp shown (some are folded)
    assert facts["python_shown"]                                         # some code blocks are folded


# The layout at 1280 px, measured in the crawl (at 390 px: tests/test_layout.py).

def test_code_never_wraps_and_what_is_too_wide_scrolls_visibly_at_1280_px(crawl):
    problems = browser_pages.wrapping(crawl["layout"])
    assert not problems, "\n".join(problems)


def test_chapter_code_fits_its_box_at_1280_px(crawl):
    wide = [f"{url}: {box['text']!r}" for (width, url), data in crawl["layout"].items()
            if url.startswith("chapters/") for box in data["boxes"]
            if box["python"] and box["visible"] and box["scrolls"]]
    assert not wide, "code wider than its box at 1280 px:\n" + "\n".join(wide)


def test_notebook_code_fits_its_box_at_1280_px_as_chapter_code_does(crawl):
    """A snippet's lines are at most 88 columns; at 1280 px its notebook page shows them whole, as a chapter does."""
    notebooks = [url for (width, url) in crawl["layout"] if "notebooks/" in url]
    wide = [f"{url}: {box['text']!r}" for (width, url), data in crawl["layout"].items()
            if "notebooks/" in url for box in data["boxes"]
            if box["notebook_code"] and box["visible"] and box["scrolls"]]
    assert len(notebooks) >= 2 * len(snippets.find()) and not wide, "notebook code cut at 1280 px:\n" + "\n".join(wide)


def test_every_page_is_at_most_twelve_screens_at_1280_px_with_folds_closed(crawl):
    heights = {url: data["height"] for (width, url), data in crawl["layout"].items()}
    print("\npage heights at 1280 px (screens of 900 px): "
          + ", ".join(f"{url or 'home'} {h} ({h / 900:.1f})" for url, h in sorted(heights.items())))
    long = [f"{url or 'home'}: {h} px = {h / 900:.1f} screens" for url, h in heights.items() if h > 12 * 900]
    assert not long, "pages over 12 screens of 900 px:\n" + "\n".join(sorted(long))


def test_figures_keep_the_page_still_and_are_drawn_at_high_pixel_density_at_1280_px(crawl):
    """Every figure carries its width and height, so a page does not grow under the reader as images arrive, and
    its PNG is at least 1.5 times as wide, in pixels, as it is shown."""
    problems = browser_pages.figure_problems(crawl["layout"])
    assert not problems, "\n".join(problems)


def test_contrast_in_the_dark_scheme_at_1280_px(crawl, site):
    """axe's colour-contrast rule (text and syntax tokens at least 4.5:1), folds open, after the reader's switch to
    the dark scheme: every English page and a Chinese page of each type (the crawl runs every rule in the light
    one)."""
    english = {url for url in browser_pages.site_pages(site) if not url.startswith("zh/")}
    assert set(crawl["dark"]) >= english | set(browser_pages.one_of_each(browser_pages.site_pages(site)))
    found = [line for lines in crawl["dark"].values() for line in lines]
    assert not found, f"{len(found)} contrast failures:\n" + "\n".join(found[:40])


def test_copy_button_copies_exactly_the_cells_code(context, server):
    page = Visit(context, server).open("chapters/models/")
    cells = {c.source for p in snippets.find() for c in snippets.cells(p)}
    blocks = page.locator("div.language-python").filter(visible=True)       # the setup and helpers are folded
    copied = 0
    for index in range(min(blocks.count(), 4)):
        block = blocks.nth(index)
        block.hover()
        block.locator("button[data-clipboard-target]").click()
        text = page.evaluate("navigator.clipboard.readText()")
        assert text.rstrip("\n") in cells, text[:200]
        assert text.rstrip("\n") == block.locator("pre code").inner_text().rstrip("\n")
        copied += 1
    assert copied == min(blocks.count(), 4) > 0


def test_search_for_adam_leads_to_the_memory_chapter(context, server):
    page = Visit(context, server).open("")
    page.locator("input.md-search__input").click()
    page.keyboard.type("Adam")
    first = page.locator("li.md-search-result__item a").first
    first.wait_for(timeout=10_000)
    assert "chapters/memory-arithmetic/" in first.get_attribute("href")
    first.click()
    page.wait_for_load_state()
    assert "/chapters/memory-arithmetic/" in page.url


@pytest.mark.parametrize("edition, width", [("", 1280), ("zh/", 390)])
def test_the_search_index_loads_when_the_search_opens(browser, server, edition, width):
    """A page does not fetch its edition's search index (overrides/main.html holds that one request) until the
    reader opens the search: a click on the field at 1280 px, a tap on the magnifier at 390 px. Then the index
    arrives once and results appear."""
    context = browser.new_context(base_url=server, viewport={"width": width, "height": 900})
    page = context.new_page()
    asked = []
    page.on("request", lambda r: "search_index" in r.url and asked.append(r.url))
    page.goto(f"{edition}chapters/batch-does-not-fit/", wait_until="networkidle")
    page.wait_for_timeout(300)
    assert asked == [], asked
    if width < 960:       # on a phone the field sits behind the magnifier in the header
        page.locator("label.md-header__button[for='__search']").click()
    else:
        page.locator("input.md-search__input").click()
    page.keyboard.type("Adam" if not edition else "显存")
    page.keyboard.press("End")
    page.locator("li.md-search-result__item a").first.wait_for(timeout=10_000)
    assert asked == [f"{server}{edition}search/search_index.json"], asked
    context.close()


def _contrast(page, selector):
    """WCAG contrast ratio of the first element's text colour against its (nearest opaque) background."""
    return page.evaluate("""sel => {
        const rgb = c => c.match(/[\\d.]+/g).map(Number);
        const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                     return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        let el = document.querySelector(sel); const fg = rgb(getComputedStyle(el).color);
        let bg = null;
        for (let e = el; e && !bg; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] > 0.9) { if (c.length < 4 || c[3] > 0) bg = c.slice(0, 3); } }
        bg = bg || [255, 255, 255];
        const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05); }""", selector)


def test_dark_mode_toggle_keeps_code_output_and_charts_readable(context, server):
    page = Visit(context, server).open("chapters/image-data/")
    schemes = []
    for _ in range(2):
        scheme = page.evaluate("document.body.getAttribute('data-md-color-scheme')")
        schemes.append(scheme)
        assert _contrast(page, "div.language-python pre code") >= 4.5, scheme
        assert _contrast(page, "div.language-text pre code") >= 4.5, scheme
        assert _contrast(page, "p.cell-stamp") >= 4.5, scheme
        chart = page.locator("img[src*='outputs/']").first
        chart.scroll_into_view_if_needed()
        assert page.evaluate("el => getComputedStyle(el).backgroundColor", chart.element_handle()) == "rgb(255, 255, 255)"
        page.locator("form[data-md-component='palette'] label:visible").first.click()
        page.wait_for_function(f"document.body.getAttribute('data-md-color-scheme') !== '{scheme}'")
    assert sorted(schemes) == ["default", "slate"]


def test_notebook_pages_render_with_figures(crawl, server):
    with_figures = [p.stem for p in snippets.find() if "plt." in p.read_text()]
    assert with_figures
    for name in with_figures:
        url = f"notebooks/{name}/"
        facts = crawl["facts"][url]
        cells = len(snippets.cells(snippets.SNIPPETS_DIR / f"{name}.py"))
        assert facts["notebook_cells"] == cells + 1                 # + the Colab install cell
        assert facts["notebook_alts"] and all(alt not in ("", None) for alt in facts["notebook_alts"]), name
        assert not [p for p in crawl["problems"] if p.startswith(server + url)], name   # every figure decodes


# What a reader sees, at a laptop's and a phone's width, in both colour schemes (issue: a lesson a learner can read).

def test_notebook_pages_have_human_titles_in_the_chapters_order(site):
    import yaml
    nav = yaml.safe_load((snippets.ROOT / "mkdocs.yml").read_text())["nav"]
    notebooks = next(item["Notebooks"] for item in nav if isinstance(item, dict) and "Notebooks" in item)
    titles = [(next(iter(entry)), next(iter(entry.values()))) for entry in notebooks]
    assert {Path(path).stem for _, path in titles} == {p.stem for p in snippets.find()}
    course = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    order = []                                   # snippets in the order the chapters first show them
    for entry in course:
        text = (snippets.ROOT / "docs" / next(iter(entry.values()))).read_text()
        for name in re.findall(r"<!--\s*cell:\s*([\w-]+)/", text):
            if name not in order:
                order.append(name)
    assert [Path(path).stem for _, path in titles] == order
    from bs4 import BeautifulSoup            # the built HTML is what the browser shows here: no scripts change it
    for title, path in titles:
        name = Path(path).stem
        assert title != name and "_" not in title
        page = BeautifulSoup((site / "notebooks" / name / "index.html").read_text(), "html.parser")
        assert [h.get_text() for h in page.select("h1")] == [title]
        intro = page.select("p.notebook-intro")
        assert len(intro) == 1 and "Taught in" in intro[0].get_text()
        href = intro[0].select_one("a")["href"]      # the chapter's section where the file's first cell is taught
        target, _, anchor = urljoin(f"notebooks/{name}/", href).partition("#")
        assert target.startswith("chapters/"), href
        chapter = BeautifulSoup((site / target / "index.html").read_text(), "html.parser")
        first = next(m for m in re.finditer(r"<!--\s*cell:\s*([\w-]+)/", (snippets.ROOT / "docs" / (
            target.rstrip("/") + ".md")).read_text()) if m[1] == name)
        heading_before = re.search(r"^#{2,3} ", (snippets.ROOT / "docs" / (target.rstrip("/") + ".md")).read_text()[
            :first.start()], re.M)
        assert bool(anchor) == bool(heading_before), f"{name}: {href}"   # a section link unless taught at the top
        if anchor:
            assert len(chapter.select(f"[id='{anchor}']")) == 1, f"{name}: {href} has no such section"


def test_the_last_chapter_does_not_lead_into_the_notebooks(context, server):
    import yaml
    nav = yaml.safe_load((snippets.ROOT / "mkdocs.yml").read_text())["nav"]
    course = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    last = next(iter(course[-1].values())).removesuffix(".md") + "/"
    page = Visit(context, server).open(last)
    nexts = page.locator("a.md-footer__link--next")
    assert nexts.count() == 0 or "notebooks/" not in nexts.first.get_attribute("href")


# The two editions (mkdocs-static-i18n): the language switch and Chinese search.

@pytest.mark.parametrize("start, other", [("chapters/models/", "zh/chapters/models/"),
                                          ("zh/chapters/real-gpu/", "chapters/real-gpu/"),
                                          ("chapters/real-gpu/#the-cuda-context", "zh/chapters/real-gpu/#the-cuda-context"),
                                          ("zh/chapters/batch-does-not-fit/#mixed-precision",
                                           "chapters/batch-does-not-fit/#mixed-precision")])
def test_the_language_switch_lands_on_the_same_page_in_the_other_edition(context, server, start, other):
    """…and on the same section: both editions give each heading the same id, and the switch keeps the #."""
    page = Visit(context, server).open(start)
    target = "zh" if not start.startswith("zh/") else "en"
    page.locator(".md-header__option .md-select").first.hover()
    link = page.locator(f"a.md-select__link[hreflang='{target}']").first
    link.wait_for(state="visible")
    link.click()
    page.wait_for_load_state()
    assert page.url == server + other
    assert page.evaluate("document.documentElement.lang") == ("zh" if target == "zh" else "en")
    if "#" in other:
        assert page.locator(f"#{other.split('#')[1]}").count() == 1


@pytest.mark.parametrize("query, chapter", [("显存", "zh/chapters/memory-arithmetic/"),
                                            ("批量大小", "zh/chapters/batch-size/")])
def test_chinese_search_finds_the_chapter_and_stays_in_the_chinese_edition(context, server, query, chapter):
    page = Visit(context, server).open("zh/")
    page.locator("input.md-search__input").click()
    page.keyboard.type(query)          # Chinese arrives as text, as from an input method; then a key is released
    page.keyboard.press("End")
    page.locator("li.md-search-result__item a").first.wait_for(timeout=10_000)
    found = [urljoin(page.url, a.get_attribute("href")).split("?")[0]
             for a in page.locator("li.md-search-result__item > a").all()]
    assert server + chapter in found, found
    assert all(url.startswith(server + "zh/") for url in found), found


SEARCHED = [row for row in translations.glossary_terms() if row["section"]]


def test_each_linked_glossary_term_typed_on_zh_finds_its_section_first(context, server):
    """The Chinese glossary's terms that link to a section (docs/reference/glossary.zh.md, 本站用语): typed into the
    search on /zh/, the first result is that page, and its first section is that section (jieba's user dictionary
    keeps each term whole in the index, and the search worker's query segmentation tries whole words)."""
    assert len(SEARCHED) >= 10
    page = context.new_page()
    wrong = []
    for row in SEARCHED:
        target, _, anchor = row["section"].removesuffix(".md").partition(".md#")
        target = "zh/" + target.removesuffix(".md") + "/"
        page.goto(f"{server}zh/?q={row['term']}", wait_until="networkidle")     # Material's search deep link
        first = page.locator("li.md-search-result__item").first
        first.locator("a").first.wait_for(timeout=10_000)
        links = [urljoin(page.url, a.get_attribute("href")) for a in first.locator("a").all()]
        found = [urldefrag(link.split("?")[0] + ("#" + link.split("#")[1] if "#" in link else "")) for link in links]
        pages = {url for url, _ in found}
        sections = [fragment for _, fragment in found if fragment]
        if pages != {server + target} or (anchor and (not sections or sections[0] != anchor)):
            wrong.append(f"{row['term']}: wanted {target}#{anchor}, first result {links[:3]}")
    assert not wrong, "\n".join(wrong)
