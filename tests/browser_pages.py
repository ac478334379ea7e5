"""What the browser passes share (tests/test_browser.py at 1280 px, tests/test_layout.py at 390 px): the measurement
each page gets on its one visit per width, the pages of the built site, and the checks run on what was measured.

A measurement (``LAYOUT_JS``) is keyed ``(width, url)``; its ``boxes`` are the code and output boxes, its ``figures``
the recorded figures, ``height`` the page's height in CSS pixels once its figures have loaded (folds closed), and
``before`` its height before they had."""
from __future__ import annotations

from pathlib import Path

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


CODE_CONTRAST_JS = """() => {
    const rgb = c => c.match(/[\\d.]+/g).map(Number);
    const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                 return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const back = el => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
                         if (c.length < 4 || c[3] > 0.9) return c.slice(0, 3); } return [255, 255, 255]; };
    const low = {};
    for (const el of document.querySelectorAll('pre, pre *')) {
        const text = [...el.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.data).join('');
        if (!text.trim()) continue;
        const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(back(el))].sort((x, y) => y - x);
        const ratio = (a + 0.05) / (b + 0.05);
        if (ratio < 4.5) low[`${el.tagName.toLowerCase()}.${el.className} ${getComputedStyle(el).color}`] = ratio.toFixed(2);
    }
    return low; }"""


def contrast(axe, page, label) -> list[str]:
    """Text against its background, at least 4.5:1, in the scheme the page shows now, folds as they are: axe's
    color-contrast rule outside code and output boxes, and ``CODE_CONTRAST_JS`` inside them, on every token (one
    character long ones such as '=' too, which axe passes over) and every output line, shown or folded. (axe on the
    10,000 or so highlighted tokens of one chapter took 8 s; this takes a tenth of a second.)"""
    result = axe.run(page, context={"exclude": [["pre"]]},
                     options={"runOnly": ["color-contrast"], "resultTypes": ["violations"]}).response["violations"]
    found = [f"{label}: {node['target']} {node.get('any', [{}])[0].get('message', '')[:120]}"
             for v in result for node in v["nodes"]]
    return found + [f"{label}: code {token}: {ratio}:1" for token, ratio in page.evaluate(CODE_CONTRAST_JS).items()]


def axe_all_but_contrast(axe, page) -> list[str]:
    """axe's serious and critical violations of every rule but color-contrast (``contrast`` checks that)."""
    results = axe.run(page, options={"resultTypes": ["violations"], "rules": {"color-contrast": {"enabled": False}}})
    return [f"{v['impact']}: {v['id']} ({len(v['nodes'])} nodes): {v['help']}" for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")]


def to_dark(page) -> None:
    """The reader's switch to the dark scheme (the header's palette toggle), the folds left as they are."""
    page.locator("form[data-md-component='palette'] label:visible").first.click()
    page.wait_for_function("document.body.getAttribute('data-md-color-scheme') === 'slate'")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def wrapping(found: dict) -> list[str]:
    """Code or output that wraps, or that is cut off without a scrollbar a reader can see."""
    problems = []
    for (width, url), data in found.items():
        for box in data["boxes"]:
            if not box["visible"]:
                continue           # in a tab that is not selected
            where = f"{width} px {url or 'home'}: {box['text']!r}"
            if box["wrap"] not in ("pre", "nowrap"):
                problems.append(f"{where} wraps (white-space: {box['wrap']})")
            if box["scrolls"] and (box["overflowX"] not in ("auto", "scroll") or box["bar"] <= 0):
                problems.append(f"{where} is cut off without a visible scrollbar")
    return problems


def jumps(found: dict) -> list[str]:
    """Figures without their width and height, and pages that grew while their figures loaded."""
    unsized = [f"{width} px {url}: {f['src']}" for (width, url), data in found.items() for f in data["figures"]
               if not f["sized"]]
    grew = [f"{width} px {url or 'home'}: {data['before']} -> {data['height']} px"
            for (width, url), data in found.items() if data["height"] != data["before"]]
    return unsized[:20] + grew


def blurry(found: dict) -> tuple[int, list[str]]:
    """(figures shown, those whose PNG is less than 1.5 times as wide in pixels as it is shown)."""
    low = [f"{width} px {url}: {f['src']} natural {f['natural']} px, shown {f['shown']:.0f} px"
           for (width, url), data in found.items() for f in data["figures"]
           if f["shown"] > 0 and f["natural"] < 1.5 * f["shown"]]
    return sum(1 for data in found.values() for f in data["figures"] if f["shown"] > 0), low


def figure_problems(found: dict) -> list[str]:
    """What is wrong with the figures of a pass (``jumps`` and ``blurry``), or that it showed fewer than ten."""
    shown, low = blurry(found)
    return jumps(found) + low + ([] if shown >= 10 else [f"only {shown} figures shown"])
