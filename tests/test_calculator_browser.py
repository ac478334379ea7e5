"""The memory calculator page in a real browser (Debian's Chromium driven by Playwright), served on 127.0.0.1.

The shared vectors (tests/memory_calc_vectors.json, written by the Python reference tools/memory_calc.py) go through
the page's form one by one, and every figure, line and message the page shows is compared with them; the script's
functions are also run on every vector directly. Bad input, keyboard-only use, and axe in both colour schemes.
"""
from __future__ import annotations

import json

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

from tools import memory_calc as mc  # noqa: E402

VECTORS = json.loads(mc.VECTORS.read_text(encoding="utf-8"))
PAGE = "calculator/"
FIELD = {"layers": "#calc-layers", "batch": "#calc-batch"}
VALID = {"layers": "784, 128, 10", "batch": "64"}






def open_page(browser, server, scheme="light", width=1280):
    context = browser.new_context(base_url=server, color_scheme=scheme, viewport={"width": width, "height": 900})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("requestfailed", lambda r: page.problems.append(f"{r.url} ({r.failure})"))
    page.goto(PAGE, wait_until="networkidle")
    page.wait_for_function("document.getElementById('calc-form').getAttribute('data-ready') === 'yes'")
    return context, page


@pytest.fixture(scope="module")
def page(browser, server):
    context, page = open_page(browser, server)
    yield page
    assert not page.problems, page.problems
    context.close()


def shown(page) -> dict:
    """Every row of the results table as the reader sees it."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#calc-results tr[data-row]')]
        .map(tr => [tr.dataset.row, {text: tr.querySelector('.calc-bytes').textContent,
                                     kib: tr.querySelector('.calc-kib').textContent,
                                     mib: tr.querySelector('.calc-mib').textContent,
                                     detail: tr.querySelector('.calc-detail').textContent}]))""")


def expected_rows(case) -> dict:
    return {row: {k: cells[k] for k in ("text", "kib", "mib", "detail")} for row, cells in
            case["expected"]["rows"].items()}


def fill(page, given):
    page.fill("#calc-layers", given["layers"])
    page.fill("#calc-batch", given["batch"])
    page.select_option("#calc-dtype", given["dtype"])
    page.check("input[name='calc-mode'][value='training']")       # the optimizer can be chosen in training only
    page.select_option("#calc-optimizer", given["optimizer"])
    page.check(f"input[name='calc-mode'][value='{given['mode']}']")


def no_nan(page):
    text = page.locator("body").inner_text()
    for word in ("NaN", "Infinity", "undefined"):
        assert word not in text, word


def test_the_page_is_in_the_nav_and_linked_from_home(page, server):
    page.goto(server, wait_until="networkidle")
    assert page.locator("a[href='calculator/']").count() >= 2         # the nav and the home page's paragraph
    page.goto(PAGE, wait_until="networkidle")
    assert page.title().startswith("Memory calculator")


def test_the_script_reproduces_every_vector(page):
    """The script's own functions, on every vector: the same rows, texts and summary as the Python reference."""
    mismatches = page.evaluate("""vectors => {
        const bad = [];
        for (const c of vectors.cases) {
            const i = c.input, r = memoryCalc.report(memoryCalc.parseLayers(i.layers), memoryCalc.parseBatch(i.batch),
                                                     i.dtype, i.optimizer, i.mode);
            for (const [row, cells] of Object.entries(c.expected.rows)) {
                const got = r.rows[row];
                if (got.bytes.toString() !== String(cells.bytes)) bad.push([i, row, 'bytes']);
                for (const k of ['text', 'kib', 'mib', 'detail']) if (got[k] !== cells[k]) bad.push([i, row, k, got[k], cells[k]]);
            }
            if (r.summary !== c.expected.summary) bad.push([i, 'summary', r.summary, c.expected.summary]);
        }
        for (const e of vectors.errors) {
            let message = null;
            try { (e.field === 'layers' ? memoryCalc.parseLayers : memoryCalc.parseBatch)(e.input); }
            catch (error) { message = error.message; }
            if (message !== e.message) bad.push([e, message]);
        }
        return bad; }""", VECTORS)
    assert mismatches == []


def test_the_form_shows_every_vector(page):
    """Fill the form for every vector; every figure and line in the table, the line above it and the live region
    agree."""
    for case in VECTORS["cases"]:
        fill(page, case["input"])
        assert shown(page) == expected_rows(case), case["input"]
        summary = case["expected"]["summary"]
        said = summary.split(": total ")[0]
        assert page.locator("#calc-inputs").text_content() == "Memory for one step: " + said[0].lower() + said[1:]
        page.wait_for_function("s => document.getElementById('calc-status').textContent === s", arg=summary,
                               timeout=5000)
        assert page.locator("#calc-optimizer").is_disabled() == (case["input"]["mode"] == "inference")
        for field in ("layers", "batch"):
            assert page.get_attribute(FIELD[field], "aria-invalid") is None
            assert page.locator(f"#calc-{field}-error").is_hidden()
        no_nan(page)


def test_every_bad_input_shows_its_message_next_to_the_field(page):
    fill(page, {**VALID, "dtype": "float32", "optimizer": "adam", "mode": "training"})
    for error in VECTORS["errors"]:
        field, other = error["field"], "batch" if error["field"] == "layers" else "layers"
        page.fill(FIELD[field], error["input"])
        message = page.locator(f"#calc-{field}-error")
        assert message.is_visible() and message.text_content() == error["message"], error
        assert page.get_attribute(FIELD[field], "aria-invalid") == "true"
        assert f"calc-{field}-error" in page.get_attribute(FIELD[field], "aria-describedby").split()
        assert page.evaluate("id => document.getElementById(id).nextElementSibling.id === id + '-error'",
                             FIELD[field][1:])                         # the message sits right under its field
        assert page.get_attribute(FIELD[other], "aria-invalid") is None and page.locator(f"#calc-{other}-error").is_hidden()
        assert all(cells == {"text": "–", "kib": "–", "mib": "–", "detail": ""} for cells in shown(page).values())
        page.wait_for_function("s => document.getElementById('calc-status').textContent === s",
                               arg="No result: " + error["message"], timeout=5000)
        no_nan(page)
        page.fill(FIELD[field], VALID[field])
        assert page.get_attribute(FIELD[field], "aria-invalid") is None and message.is_hidden()
        assert page.get_attribute(FIELD[field], "aria-describedby") == f"calc-{field}-hint"
        assert shown(page)["parameters"]["text"] == "407,080"
    # both fields wrong at once: both messages
    page.fill("#calc-layers", "1e15")
    page.fill("#calc-batch", "NaN")
    assert page.locator("#calc-layers-error").is_visible() and page.locator("#calc-batch-error").is_visible()
    no_nan(page)


def test_the_presets_and_enter_keep_the_page(page):
    fill(page, {"layers": "1, 1", "batch": "1024", "dtype": "float32", "optimizer": "adam", "mode": "training"})
    url = page.url
    page.get_by_role("button", name="CIFAR-10 MLP: 3072, 128, 10").click()
    assert page.input_value("#calc-layers") == "3072, 128, 10"
    assert shown(page)["parameters"]["text"] == "1,578,536"
    page.focus("#calc-batch")
    page.keyboard.press("Enter")                                      # submitting the form must not reload the page
    assert page.url == url and page.input_value("#calc-batch") == "1024"
    page.get_by_role("button", name="MNIST MLP: 784, 128, 10").click()
    assert shown(page)["saved_activations"]["text"] == "565,252"


def test_keyboard_only(browser, server):
    """Tab from the top of the page to the fields, type, choose with the arrow keys: the results follow."""
    context, page = open_page(browser, server)
    page.evaluate("document.activeElement && document.activeElement.blur()")   # start from the top
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "calc-layers":
            break
    else:
        pytest.fail("Tab never reached the layer sizes field")

    def active():
        return page.evaluate("document.activeElement.id || document.activeElement.textContent")

    page.keyboard.press("Control+A")
    page.keyboard.type("3072, 128, 10")
    page.keyboard.press("Tab")
    assert active() == "MNIST MLP: 784, 128, 10"
    page.keyboard.press("Tab")
    assert active() == "CIFAR-10 MLP: 3072, 128, 10"
    page.keyboard.press("Tab")
    assert active() == "calc-batch"
    page.keyboard.press("Control+A")
    page.keyboard.type("1024")
    page.keyboard.press("Tab")
    assert active() == "calc-dtype"
    page.keyboard.press("ArrowDown")                                  # float32 -> float16
    page.keyboard.press("Tab")
    assert active() == "calc-optimizer"
    page.keyboard.press("ArrowUp")                                    # Adam -> SGD with momentum
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "training"
    case = next(c for c in VECTORS["cases"] if c["input"] == {"layers": "3072, 128, 10", "batch": "1024",
                                                               "dtype": "float16", "optimizer": "sgd-momentum",
                                                               "mode": "training"})
    assert shown(page) == expected_rows(case)
    page.keyboard.press("ArrowRight")                                 # Training -> Inference
    case = next(c for c in VECTORS["cases"] if c["input"] == {**case["input"], "mode": "inference"})
    assert shown(page) == expected_rows(case)
    page.wait_for_function("s => document.getElementById('calc-status').textContent === s",
                           arg=case["expected"]["summary"], timeout=5000)
    # a preset button works from the keyboard too
    for _ in range(6):
        page.keyboard.press("Shift+Tab")
        if active() == "MNIST MLP: 784, 128, 10":
            break
    page.keyboard.press("Enter")
    assert page.input_value("#calc-layers") == "784, 128, 10"
    assert shown(page)["parameters"]["text"] == "203,540"                # 101,770 float16 parameters
    assert not page.problems, page.problems
    context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_axe_finds_nothing_in_either_scheme(browser, server, scheme, width):
    from axe_playwright_python.sync_playwright import Axe
    context, page = open_page(browser, server, scheme, width)
    assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == {"light": "default",
                                                                                   "dark": "slate"}[scheme]
    assert page.evaluate("document.documentElement.scrollWidth") <= width       # nothing sticks out sideways
    axe = Axe()
    states = {"as loaded": lambda: None,
              "with both messages": lambda: (page.fill("#calc-layers", "784, 0, 10"), page.fill("#calc-batch", "x")),
              "in inference, CIFAR-10, batch 1000000": lambda: (
                  page.fill("#calc-layers", "3072, 128, 10"), page.fill("#calc-batch", "1000000"),
                  page.check("input[name='calc-mode'][value='inference']"))}
    for state, make in states.items():
        make()
        # Material's header fades the page title in when the page scrolls: let transitions end before axe looks
        page.evaluate("""new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))
                         .then(() => Promise.all(document.getAnimations().map(a => a.finished)))""")
        violations = axe.run(page).response["violations"]
        assert not violations, f"{state}: " + "; ".join(
            f"{v['impact']}: {v['id']}: {v['help']} ({[n['target'] for n in v['nodes']][:5]})" for v in violations)
        no_nan(page)
    assert not page.problems, page.problems
    context.close()
