"""tools/build_speed.py changes how much work a build does, never what it makes."""
from __future__ import annotations

import markdown
from material.plugins.search.plugin import Parser

from tools import build_speed

SAMPLE = '''
# Title

Some `inline` text.

```python title="demo.py · cell"
import torch
x = torch.zeros(2, 3)  # a comment <with> "quotes"
print(x.shape)
```

```text title="Output"
torch.Size([2, 3])     padded   columns
```
'''


def sections(html: str) -> list[tuple]:
    parser = Parser()
    parser.feed(html)
    parser.close()
    return [(s.id, "".join(s.title), "".join(s.text)) for s in parser.data]


def render(text: str) -> str:
    return markdown.markdown(text, extensions=["pymdownx.superfences", "pymdownx.highlight", "attr_list"],
                             extension_configs={"pymdownx.highlight": {"pygments_lang_class": True}})


def test_search_reads_the_same_text_from_plain_code_blocks(site):
    html = render(SAMPLE)
    assert "<span" in html and "<span" not in build_speed.plain_code(html).split("<pre")[1].split("</pre>")[0]
    assert sections(build_speed.plain_code(html)) == sections(html)
    for page in ("chapters/batch-size", "zh/chapters/leaks-checkpoints-oom"):
        built = (site / page / "index.html").read_text(encoding="utf-8")
        article = built[built.index("<article"):built.index("</article>")]
        assert sections(build_speed.plain_code(article)) == sections(article), page


def test_highlighting_is_cached_and_gives_the_same_html():
    fresh = render(SAMPLE)
    build_speed.cache_highlighting()
    build_speed._highlighted.clear()
    assert render(SAMPLE) == fresh
    cached = len(build_speed._highlighted)
    assert cached == 2                                    # the two fences
    assert render(SAMPLE) == fresh and len(build_speed._highlighted) == cached   # the second time from the cache
    assert render(SAMPLE.replace("zeros", "ones")) != fresh                       # another block, another entry


def test_the_recordings_are_checked_again_only_when_a_file_changes(tmp_path):
    (tmp_path / "a.json").write_text("1")
    calls = []

    def check():
        calls.append(1)
        return ["problem"]
    key = build_speed.fingerprint([tmp_path], [])
    assert build_speed.checked_once(key, check) == ["problem"] == build_speed.checked_once(key, check)
    assert len(calls) == 1
    (tmp_path / "a.json").write_text("22")
    assert build_speed.checked_once(build_speed.fingerprint([tmp_path], []), check) == ["problem"]
    assert len(calls) == 2


def test_a_memo_is_read_by_the_next_build_and_only_under_the_same_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(build_speed, "CACHE", tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return "<pre>html</pre>"
    first = build_speed.Memo("demo", "pygments==1")
    assert first(("block", "python"), compute) == first(("block", "python"), compute) == "<pre>html</pre>"
    first.save()
    assert len(calls) == 1 and len(list(tmp_path.glob("demo-*.pickle"))) == 1
    assert build_speed.Memo("demo", "pygments==1")(("block", "python"), compute) == "<pre>html</pre>"
    assert len(calls) == 1                                                    # the next build read it
    build_speed.Memo("demo", "pygments==2")(("block", "python"), compute)     # another version: made again
    build_speed.Memo("demo", "pygments==1")(("other", "python"), compute)     # another block: made
    assert len(calls) == 3
    next(tmp_path.glob("demo-*.pickle")).write_bytes(b"not a pickle")
    assert build_speed.Memo("demo", "pygments==1")(("block", "python"), compute) == "<pre>html</pre>"
    assert len(calls) == 4                                                    # a broken cache is made again


def test_with_lesson_full_build_a_memo_finds_and_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(build_speed, "CACHE", tmp_path)
    kept = build_speed.Memo("demo", "pygments==1")
    kept(("block", "python"), lambda: "<pre>kept</pre>")
    kept.save()
    monkeypatch.setattr(build_speed, "FULL_BUILD", True)
    full = build_speed.Memo("demo", "pygments==1")
    assert full(("block", "python"), lambda: "<pre>made</pre>") == "<pre>made</pre>"
    assert full(("block", "python"), lambda: "<pre>again</pre>") == "<pre>again</pre>"
    full.save()
    monkeypatch.setattr(build_speed, "FULL_BUILD", False)
    assert build_speed.Memo("demo", "pygments==1")(("block", "python"), lambda: "") == "<pre>kept</pre>"


def test_a_build_from_the_caches_makes_the_same_site_as_a_build_without_them(site, tmp_path):
    """The site fixture's build left every memo in .cache/lesson/; a build that reads them and a build with none of
    tools/build_speed.py's shortcuts (LESSON_FULL_BUILD=1) write the same files, byte for byte."""
    import filecmp

    from site_build import ROOT, build
    for name, settings in (("warm", {}), ("full", {"LESSON_FULL_BUILD": "1"})):
        process = build(ROOT, tmp_path / name, **settings)
        assert process.returncode == 0, process.stderr[-3000:]
    warm, full = ({p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file()}
                  for name in ("warm", "full"))
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "warm", tmp_path / "full", [str(f) for f in warm],
                                           shallow=False)
    assert len(warm) > 200 and warm == full and not mismatch and not errors, (sorted(warm ^ full) + mismatch)[:20]


def test_a_page_whose_conversion_warned_warns_again_in_the_next_strict_build(tmp_path):
    """A broken link fails the strict build, and fails it again when the build reads the caches the first one left
    (a conversion that logged a warning is not kept)."""
    import shutil

    from site_build import ROOT, build
    from tools import environment
    project = tmp_path / "project"
    for name in ("docs", "snippets", "tools", "overrides", "i18n"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copy(ROOT / "mkdocs.yml", project)
    for pins in environment.PINS_FILES.values():
        shutil.copy(pins, project)
    chapter = project / "docs" / "chapters" / "models.md"
    chapter.write_text(chapter.read_text(encoding="utf-8") + "\n\nSee [a page](no-such-page.md).\n", encoding="utf-8")
    for run in ("cold", "warm"):
        process = build(project, tmp_path / run, LESSON_ONLY_LOCALE="en", LESSON_CACHE=str(tmp_path / "cache"))
        assert process.returncode != 0 and "no-such-page.md" in process.stderr, (run, process.stderr[-2000:])
    assert list((tmp_path / "cache").glob("markdown-*.pickle"))       # the pages that converted cleanly were kept


def test_a_snippets_cells_are_split_again_when_its_text_changes(tmp_path):
    from tools import snippets
    path = tmp_path / "demo.py"
    path.write_text("# %% first\nx = 1\n# %% second\ny = 2\n", encoding="utf-8")
    assert [(c.name, c.source) for c in snippets.cells(path)] == [("first", "x = 1"), ("second", "y = 2")]
    path.write_text("# %% first\nx = 10\n", encoding="utf-8")
    assert [(c.name, c.source) for c in snippets.cells(path)] == [("first", "x = 10")]


def _serve_setup(tmp_path, watch_theme: bool):
    from types import SimpleNamespace

    from mkdocs.livereload import LiveReloadServer
    docs, theme = tmp_path / "docs", tmp_path / "theme"
    docs.mkdir()
    theme.mkdir()
    (tmp_path / "mkdocs.yml").write_text("site_name: x\n", encoding="utf-8")
    config = SimpleNamespace(docs_dir=str(docs), config_file_path=str(tmp_path / "mkdocs.yml"),
                             theme=SimpleNamespace(dirs=[str(theme)]))
    server = LiveReloadServer(builder=lambda: None, host="127.0.0.1", port=0, root=str(tmp_path))
    server.watch(config.docs_dir)                 # what mkdocs serve watches before the plugins' on_serve
    server.watch(config.config_file_path)
    if watch_theme:
        server.watch(str(theme))
    return server, config


def _watched(server) -> dict[str, float]:
    return {emitter.watch.path: emitter.timeout for emitter in server.observer.emitters}


def test_mkdocs_serve_looks_for_saved_files_every_tenth_of_a_second(tmp_path):
    from tools import hook
    server, config = _serve_setup(tmp_path, watch_theme=False)
    before = _watched(server)
    assert set(before.values()) == {0.5}
    server = hook.on_serve(server, config, builder=None)
    assert _watched(server) == dict.fromkeys(before, 0.1)
    server.watch(str(tmp_path / "snippets"))      # mkdocs.yml's watch: comes after on_serve, on the same observer
    assert _watched(server)[str(tmp_path / "snippets")] == 0.1


def test_with_watch_theme_mkdocs_keeps_its_own_observer(tmp_path):
    from tools import hook
    server, config = _serve_setup(tmp_path, watch_theme=True)
    observer, before = server.observer, _watched(server)
    server = hook.on_serve(server, config, builder=None)
    assert server.observer is observer and _watched(server) == before
