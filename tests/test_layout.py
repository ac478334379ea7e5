"""What a reader sees at a phone's width, in both colour schemes, in a real browser (Debian's Chromium driven by
Playwright): every page visited once at 390 px (``layout``), its code and output boxes, figures and height measured
on that visit, and colour contrast in both schemes on a page of each type. The same at 1280 px is measured in
tests/test_browser.py's crawl; each file runs on its own pytest-xdist worker (``--dist loadfile``), so the two
passes run side by side. What they share is tests/browser_pages.py."""
from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api")

import browser_pages  # noqa: E402


@pytest.fixture(scope="session")
def layout(browser, server, site):
    """Every page at 390 px, each visited once in the light scheme: its code and output boxes, its figures and its
    height (``browser_pages.LAYOUT_JS``, which opens the folds), and, on a page of each type in each edition, the
    contrast of text (``browser_pages.contrast``: at least 4.5:1, every syntax token included), folds open, in the
    light scheme and then, after the reader's switch, in the dark one."""
    from axe_playwright_python.sync_playwright import Axe
    axe, found, contrast = Axe(), {}, {}
    every = browser_pages.site_pages(site)
    checked = set(browser_pages.one_of_each(every))
    context = browser.new_context(base_url=server, viewport={"width": 390, "height": 900}, color_scheme="light")
    context.add_init_script("localStorage.clear()")        # each page opens in the scheme the system asks for
    page = context.new_page()
    for url in every:
        page.goto(url, wait_until="load")
        found[(390, url)] = page.evaluate(browser_pages.LAYOUT_JS)
        if url in checked:
            assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == "default"
            contrast[("light", url)] = browser_pages.contrast(axe, page, f"light 390 px {url or 'home'}")
            browser_pages.to_dark(page)
            contrast[("dark", url)] = browser_pages.contrast(axe, page, f"dark 390 px {url or 'home'}")
    context.close()
    return {"pages": found, "contrast": contrast, "checked": checked}


def test_code_never_wraps_and_what_is_too_wide_scrolls_visibly_at_390_px(layout):
    problems = browser_pages.wrapping(layout["pages"])
    assert len(layout["pages"]) >= 40 and not problems, "\n".join(problems)


def test_figures_keep_the_page_still_and_are_drawn_at_high_pixel_density_at_390_px(layout):
    """Every figure carries its width and height, so a page does not grow under the reader as images arrive, and
    its PNG is at least 1.5 times as wide, in pixels, as it is shown."""
    problems = browser_pages.figure_problems(layout["pages"])
    assert not problems, "\n".join(problems)


def test_contrast_in_both_schemes_at_390_px(layout):
    """The contrast of text on a page of each type in each edition, folds open, in both schemes."""
    assert {(scheme, url) for scheme in ("light", "dark") for url in layout["checked"]} == set(layout["contrast"])
    found = [line for lines in layout["contrast"].values() for line in lines]
    assert not found, f"{len(found)} contrast failures:\n" + "\n".join(found[:40])
