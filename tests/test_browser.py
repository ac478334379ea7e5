"""The built site in a real browser (Debian's Chromium driven by Playwright), served on 127.0.0.1, offline.

One crawl visits every page reachable from the home page: it records console errors, failed requests, requests to
other origins, images that do not decode, links that do not answer 200, and axe-core's accessibility violations.
The other tests look at chapters, the copy button, search, the colour schemes and the notebook pages.
"""
from __future__ import annotations

import functools
import http.server
import re
import threading
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

from tools import snippets  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
def _course() -> list[str]:
    import yaml
    nav = yaml.safe_load((Path(__file__).resolve().parent.parent / "mkdocs.yml").read_text())["nav"]
    course = next(item["Course"] for item in nav if isinstance(item, dict) and "Course" in item)
    return [next(iter(entry.values())).removesuffix(".md") + "/" for entry in course]


CHAPTERS = _course()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)")
    with playwright_api.sync_playwright() as playwright:
        # Playwright hides scrollbars in headless Chromium; show them, so that tests can see them as a reader does.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                             ignore_default_args=["--hide-scrollbars"])
        yield browser
        browser.close()


@pytest.fixture
def context(browser, server):
    context = browser.new_context(base_url=server, permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1280, "height": 900})
    yield context
    context.close()


class Visit:
    """A page opened with everything that can go wrong on the way recorded."""

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

    def open(self, url):
        self.page.goto(url, wait_until="networkidle")
        # lazy images load only near the viewport: load them all, then ask each one to decode
        self.broken = self.page.evaluate("""async () => {
            const broken = [];
            for (const img of document.images) {
                img.loading = "eager";
                try { await img.decode(); } catch (e) { broken.push(img.currentSrc || img.src); }
                if (!img.naturalWidth) broken.push(img.currentSrc || img.src);
            }
            return broken; }""")
        return self.page


@pytest.fixture(scope="module")
def crawl(browser, server):
    """Visit every page reachable from the home page; check every link; run axe on every page."""
    from axe_playwright_python.sync_playwright import Axe
    axe = Axe()
    context = browser.new_context(base_url=server)
    pages, links, problems, violations = {}, {}, [], {}
    queue, seen = deque([server]), {server}
    while queue:
        url = queue.popleft()
        visit = Visit(context, server)
        page = visit.open(url)
        for kind, found in (("console error", visit.errors), ("failed request", visit.failed),
                            ("request to another origin", visit.foreign), ("image that does not decode", visit.broken)):
            problems += [f"{url}: {kind}: {item}" for item in found]
        results = axe.run(page).response["violations"]
        violations[url] = [f"{v['impact']}: {v['id']} ({len(v['nodes'])} nodes): {v['help']}" for v in results
                           if v["impact"] in ("serious", "critical")]
        pages[url] = page.title()
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target = urldefrag(urljoin(url, href)).url
            if urlparse(target).netloc != urlparse(server).netloc or not target.startswith(server):
                continue
            links.setdefault(target, url)
            if target not in seen and (target.endswith("/") or target.endswith(".html")):
                seen.add(target)
                queue.append(target)
        page.close()
    statuses = {target: context.request.get(target).status for target in links}
    context.close()
    print(f"\ncrawled {len(pages)} pages, checked {len(statuses)} internal links")
    return {"pages": pages, "links": links, "statuses": statuses, "problems": problems, "violations": violations}


def test_every_page_loads_cleanly_offline(crawl, server):
    assert len(crawl["pages"]) >= 4 + 2 + len(snippets.find()) + 1
    assert not crawl["problems"], "\n".join(crawl["problems"])


def test_every_internal_link_resolves(crawl):
    broken = [f"{target} (linked from {crawl['links'][target]}): {status}"
              for target, status in crawl["statuses"].items() if status != 200]
    assert not broken, "\n".join(broken)
    for path in snippets.find():    # the downloads are among the links checked
        assert any(t.endswith(f"snippets/{path.name}") for t in crawl["statuses"])
        assert any(t.endswith(f"{path.stem}.ipynb") for t in crawl["statuses"])


def test_no_serious_or_critical_accessibility_violations(crawl):
    found = [f"{url}: {v}" for url, items in crawl["violations"].items() for v in items]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_shows_code_output_and_stamp(context, server, chapter):
    page = Visit(context, server).open(chapter)
    assert page.locator("div.language-python pre code").count() >= 3
    assert page.locator("div.language-text pre code").count() >= 3
    stamp = page.locator("p.cell-stamp").first
    assert re.search(r"snippets/\w+\.py · notebook · recorded on .+ \(torch .+, \d{4}-\d{2}-\d{2}, [\d.]+ s\)",
                     stamp.inner_text())
    assert page.locator("div.language-python pre code").first.is_visible()


def test_copy_button_copies_exactly_the_cells_code(context, server):
    page = Visit(context, server).open("chapters/models/")
    cells = {c.source for p in snippets.find() for c in snippets.cells(p)}
    blocks = page.locator("div.language-python")
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


def test_notebook_pages_render_with_figures(context, server):
    with_figures = [p.stem for p in snippets.find() if "plt." in p.read_text()]
    assert with_figures
    for name in with_figures:
        visit = Visit(context, server)
        page = visit.open(f"notebooks/{name}/")
        assert page.locator(".jp-Notebook > .jp-CodeCell").count() == len(snippets.cells(snippets.SNIPPETS_DIR / f"{name}.py"))
        images = page.locator(".jp-OutputArea-output img")
        assert images.count() >= 1 and not visit.broken, name
        assert all(images.nth(i).get_attribute("alt") not in ("", None) for i in range(images.count()))
