"""What a reader sees at a laptop's and a phone's width, in both colour schemes, in a real browser (Debian's
Chromium driven by Playwright): every page visited once per width (``layout``), its code and output boxes, figures,
height and colour contrast measured on that visit. Its own file, so that pytest-xdist runs this pass on one worker
while tests/test_browser.py's crawl runs on another (``--dist loadfile``)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api")

from tools import snippets  # noqa: E402

WIDTHS = (1280, 390)
LAYOUT_JS = """async () => {
    const before = document.documentElement.scrollHeight;                       // before the figures have loaded
    for (const img of document.images) { img.loading = "eager"; try { await img.decode(); } catch (e) {} }
    const height = document.documentElement.scrollHeight;                       // as a reader first sees it
    document.querySelectorAll('details').forEach(d => { d.open = true; });      // folded cells are measured too
    for (const img of document.images) { img.loading = "eager"; try { await img.decode(); } catch (e) {} }
    // let the opened folds lay out, scrollbars included, before measuring (two frames and a pause)
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 100))));
    const measure = () => [...document.querySelectorAll(
            '.md-typeset pre > code, .jp-Notebook pre:not(.jp-OutputArea-output > pre), ' +
            '.jp-OutputArea-output:has(> pre)')].map(el => {      // a notebook output scrolls in the box around it
        const cs = getComputedStyle(el);
        const text = el.matches('.jp-OutputArea-output') ? getComputedStyle(el.firstElementChild) : cs;
        return {python: !!el.closest('div.language-python'), notebook_code: !!el.closest('.jp-InputArea'),
                text: el.innerText.slice(0, 50),
                wrap: text.whiteSpace, overflowX: cs.overflowX, visible: el.getClientRects().length > 0,
                scrolls: el.scrollWidth > el.clientWidth + 1,
                bar: el.offsetHeight - el.clientHeight - parseFloat(cs.borderTopWidth) - parseFloat(cs.borderBottomWidth)};
    });
    let boxes = measure();
    if (boxes.some(b => b.visible && b.scrolls && b.bar <= 0)) {     // a scrollbar still being laid out: look again
        await new Promise(r => setTimeout(r, 300));
        boxes = measure();
    }
    const figures = [...document.images].filter(i => /outputs\\/|^data:image\\/png/.test(i.getAttribute('src') || ''))
        .map(i => ({src: (i.getAttribute('src') || '').slice(0, 80), natural: i.naturalWidth,
                    shown: i.getBoundingClientRect().width,
                    sized: i.getAttribute('width') == i.naturalWidth && i.getAttribute('height') == i.naturalHeight}));
    return {boxes, figures, height, before};
}"""


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the built site, as a URL path ('' for the home page)."""
    return sorted(str(p.parent.relative_to(site)) + "/" if p.parent != site else ""
                  for p in site.rglob("index.html") if "assets" not in p.parts and p.parent.name != "search")


def one_of_each(every: list[str]) -> list[str]:
    """A page of each type in each edition: home, a chapter, a notebook, the calculator, a reference page, …"""
    return sorted({url.split("/")[0] if not url.startswith("zh/") else "zh/" + url[3:].split("/")[0]: url
                   for url in every}.values())


def _axe_contrast(axe, page, label) -> list[str]:
    result = axe.run(page, options={"runOnly": ["color-contrast"]}).response["violations"]
    return [f"{label}: {node['target']} {node.get('any', [{}])[0].get('message', '')[:120]}"
            for v in result for node in v["nodes"]]


@pytest.fixture(scope="session")
def layout(browser, server, site):
    """Every page at 1280 px and at 390 px, visited once per width: its code and output boxes, its figures and its
    height, and axe's colour-contrast rule (text and syntax tokens at least 4.5:1, folds open) in the scheme of
    that pass: at 1280 px every English page and a Chinese page of each type in the dark scheme (the crawl runs
    every rule in the light one); at 390 px a page of each type in each edition in the light scheme, and
    (``contrast_dark_390``) in the dark one."""
    from axe_playwright_python.sync_playwright import Axe
    axe, found, contrast = Axe(), {}, {}
    every = site_pages(site)
    checked = {1280: set(url for url in every if not url.startswith("zh/")) | set(one_of_each(every)),
               390: set(one_of_each(every))}
    for width, scheme in ((1280, "dark"), (390, "light")):
        context = browser.new_context(base_url=server, viewport={"width": width, "height": 900}, color_scheme=scheme)
        page = context.new_page()
        for url in every:
            page.goto(url, wait_until="load")
            found[(width, url)] = page.evaluate(LAYOUT_JS)
            if url in checked[width]:
                assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == (
                    "slate" if scheme == "dark" else "default")
                contrast[(width, scheme, url)] = _axe_contrast(axe, page, f"{scheme} {width} px {url or 'home'}")
        context.close()
    heights = {url: data["height"] for (width, url), data in found.items() if width == 1280}
    print("\npage heights at 1280 px (screens of 900 px): "
          + ", ".join(f"{url or 'home'} {h} ({h / 900:.1f})" for url, h in sorted(heights.items())))
    found["contrast"] = contrast
    return found


def pages_of(layout):
    return {key: data for key, data in layout.items() if key != "contrast"}


def test_code_never_wraps_and_what_is_too_wide_scrolls_visibly(layout):
    problems = []
    for (width, url), data in pages_of(layout).items():
        for box in data["boxes"]:
            if not box["visible"]:
                continue           # in a tab that is not selected
            where = f"{width} px {url or 'home'}: {box['text']!r}"
            if box["wrap"] not in ("pre", "nowrap"):
                problems.append(f"{where} wraps (white-space: {box['wrap']})")
            if box["scrolls"] and (box["overflowX"] not in ("auto", "scroll") or box["bar"] <= 0):
                problems.append(f"{where} is cut off without a visible scrollbar")
    assert not problems, "\n".join(problems)


def test_chapter_code_fits_its_box_at_1280_px(layout):
    wide = [f"{url}: {box['text']!r}" for (width, url), data in pages_of(layout).items()
            if width == 1280 and url.startswith("chapters/") for box in data["boxes"]
            if box["python"] and box["visible"] and box["scrolls"]]
    assert not wide, "code wider than its box at 1280 px:\n" + "\n".join(wide)


def test_notebook_code_fits_its_box_at_1280_px_as_chapter_code_does(layout):
    """A snippet's lines are at most 88 columns; at 1280 px its notebook page shows them whole, as a chapter does."""
    notebooks = [url for (width, url) in pages_of(layout) if width == 1280 and "notebooks/" in url]
    wide = [f"{url}: {box['text']!r}" for (width, url), data in pages_of(layout).items()
            if width == 1280 and "notebooks/" in url for box in data["boxes"]
            if box["notebook_code"] and box["visible"] and box["scrolls"]]
    assert len(notebooks) >= 2 * len(snippets.find()) and not wide, "notebook code cut at 1280 px:\n" + "\n".join(wide)


def test_every_page_is_at_most_twelve_screens_at_1280_px_with_folds_closed(layout):
    long = [f"{url or 'home'}: {data['height']} px = {data['height'] / 900:.1f} screens"
            for (width, url), data in pages_of(layout).items() if width == 1280 and data["height"] > 12 * 900]
    assert not long, "pages over 12 screens of 900 px:\n" + "\n".join(sorted(long))


def test_pages_keep_their_height_while_figures_load(layout):
    """Every figure carries its width and height, so a page does not grow under the reader as images arrive."""
    unsized = [f"{width} px {url}: {f['src']}" for (width, url), data in pages_of(layout).items() for f in data["figures"]
               if not f["sized"]]
    jumps = [f"{width} px {url or 'home'}: {data['before']} -> {data['height']} px"
             for (width, url), data in pages_of(layout).items() if data["height"] != data["before"]]
    assert not unsized and not jumps, "\n".join(unsized[:20] + jumps)


TOKENS_JS = """() => {
    const rgb = c => c.match(/[\\d.]+/g).map(Number);
    const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                 return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const back = el => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
                         if (c.length < 4 || c[3] > 0.9) return c.slice(0, 3); } return [255, 255, 255]; };
    const low = {};
    for (const span of document.querySelectorAll('.jp-Notebook .highlight-ipynb span, div.language-python code span')) {
        if (!span.textContent.trim()) continue;
        const [a, b] = [lum(rgb(getComputedStyle(span).color)), lum(back(span))].sort((x, y) => y - x);
        const ratio = (a + 0.05) / (b + 0.05);
        if (ratio < 4.5) low[`.${span.className} ${getComputedStyle(span).color}`] = ratio.toFixed(2);
    }
    return low; }"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_syntax_token_in_code_reaches_4_5_to_1(browser, server, scheme):
    """Every highlighted token, operators included (axe passes over one-character text such as '='), against its
    code background, on a notebook page and a chapter."""
    context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    low = {}
    for url in ("notebooks/mnist_mlp/", "chapters/models/"):
        page.goto(url, wait_until="load")
        low.update({f"{url} {token}": ratio for token, ratio in page.evaluate(TOKENS_JS).items()})
    context.close()
    assert not low, low


def test_figures_are_drawn_at_high_pixel_density(layout):
    """A figure's PNG is at least 1.5 times as wide, in pixels, as it is shown, at both widths."""
    blurry = [f"{width} px {url}: {f['src']} natural {f['natural']} px, shown {f['shown']:.0f} px"
              for (width, url), data in pages_of(layout).items() for f in data["figures"]
              if f["shown"] > 0 and f["natural"] < 1.5 * f["shown"]]
    shown = sum(1 for data in pages_of(layout).values() for f in data["figures"] if f["shown"] > 0)
    assert shown >= 10 and not blurry, "\n".join(blurry)


@pytest.mark.parametrize("width", WIDTHS)
def test_contrast_in_both_schemes(layout, browser, server, site, width):
    """axe's colour-contrast rule (text and syntax tokens at least 4.5:1): every English page and a Chinese page of
    each type in the dark scheme at 1280 px (the crawl runs every rule in the light scheme); a page of each type in
    each edition, in both schemes, at 390 px."""
    from axe_playwright_python.sync_playwright import Axe
    found = [line for (w, scheme, url), lines in layout["contrast"].items() if w == width for line in lines]
    checked = {(w, scheme) for (w, scheme, url) in layout["contrast"] if w == width}
    if width == 390:                     # the dark scheme at 390 px, a page of each type (light: in the layout pass)
        axe = Axe()
        context = browser.new_context(base_url=server, viewport={"width": 390, "height": 900}, color_scheme="dark")
        page = context.new_page()
        for url in one_of_each(site_pages(site)):
            page.goto(url, wait_until="load")
            page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            found += _axe_contrast(axe, page, f"dark 390 px {url or 'home'}")
            checked.add((390, "dark"))
        context.close()
    assert checked == ({(1280, "dark")} if width == 1280 else {(390, "light"), (390, "dark")})
    assert not found, f"{len(found)} contrast failures:\n" + "\n".join(found[:40])
