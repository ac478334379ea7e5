"""Work a build does twice, done once (called by the mkdocs hook).

Both editions show the same code, so the Chinese edition highlighted every block again, and ``mkdocs serve``
highlighted everything again after each saved edit; Material's search parsed every highlighted token of every code
block as an HTML element. Each change here leaves the built pages and the search indexes byte for byte as they were
(``tests/test_build_speed.py`` builds both ways and compares them); ``benchmarks/site.py`` measures the time.

What pure functions computed (pygments' HTML for a code block, a page's converted Markdown, the search entries of a
page, a notebook page's trimmed HTML) is also kept between builds in ``.cache/lesson/`` (``Memo``), under the SHA-256
of the arguments and the versions of the libraries that made it, with Jinja's compiled templates beside it; a build
keeps only what it used. ``LESSON_FULL_BUILD=1`` builds without any of it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
from pathlib import Path

CACHE = Path(os.environ.get("LESSON_CACHE") or Path(__file__).resolve().parent.parent / ".cache" / "lesson")
FULL_BUILD = os.environ.get("LESSON_FULL_BUILD") == "1"     # no shortcut at all: every memo finds nothing, keeps nothing


class Memo:
    """{SHA-256 of the pickled key (tuples of strings, numbers and None): result}, read from
    ``.cache/lesson/NAME-SALT.pickle`` on first use and written back by ``save()`` (atomically; only the entries used
    since the last save). A missing, unreadable or read-only cache only means the work is done again. With
    LESSON_FULL_BUILD=1 it finds nothing and keeps nothing."""

    def __init__(self, name: str, salt: str):
        self.path = CACHE / f"{name}-{hashlib.sha256(salt.encode()).hexdigest()[:12]}.pickle"
        self.stored: dict[str, object] | None = None
        self.used: dict[str, object] = {}

    def __call__(self, key, compute):
        found, value = self.lookup(key)
        if not found:
            value = compute()
            self.store(key, value)
        return value

    def lookup(self, key) -> tuple[bool, object]:
        """(whether ``key`` is kept, its result)."""
        if FULL_BUILD:
            return False, None
        digest = hashlib.sha256(pickle.dumps(key, protocol=5)).hexdigest()     # tuples of str, int, None
        if digest not in self.used:
            if self.stored is None:
                try:
                    self.stored = pickle.loads(self.path.read_bytes())
                except (OSError, pickle.PickleError, EOFError, AttributeError, ValueError):
                    self.stored = {}
            if digest not in self.stored:
                return False, None
            self.used[digest] = self.stored[digest]
        return True, self.used[digest]

    def store(self, key, value) -> None:
        if FULL_BUILD:
            return
        self.used[hashlib.sha256(pickle.dumps(key, protocol=5)).hexdigest()] = value

    def save(self) -> None:
        if not self.used or self.used == self.stored:
            return
        try:
            write_atomically(self.path, pickle.dumps(self.used))
        except OSError:
            return
        self.stored, self.used = dict(self.used), {}


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a scratch file renamed over it: a build beside this one (tests, a second
    ``mkdocs serve``) reads the old file or the new one, never half of one. Raises OSError (a read-only checkout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f"{path.name}.{os.getpid()}")
    scratch.write_bytes(data)
    scratch.replace(path)


def _versions(*modules: str) -> str:
    from importlib import metadata
    return " ".join(f"{name}=={metadata.version(name)}" for name in modules)


MEMOS: dict[str, Memo] = {}


def memo(name: str, *distributions: str, sources: tuple[Path, ...] = ()) -> Memo:
    """The ``Memo`` called ``name``, salted with the versions of ``distributions`` and the text of ``sources`` (the
    project's own code that computes it), one per process."""
    if name not in MEMOS:
        MEMOS[name] = Memo(name, _versions(*distributions)
                           + "".join(Path(source).read_text(encoding="utf-8") for source in sources))
    return MEMOS[name]


def save_memos() -> None:
    """Write every memo used in this build (the hook's on_post_build)."""
    for one in MEMOS.values():
        one.save()

PRE = re.compile(r"(<pre\b[^>]*>)(.*?)(</pre>)", re.S)
SPAN = re.compile(r"</?span\b[^>]*>")
_highlighted: dict[tuple, str] = {}
HIGHLIGHT_CACHE_SIZE = 20_000        # code blocks kept; the lesson has about 600


def _key(value):
    """A hashable stand-in for an argument or setting (lists, dicts and sets by their contents)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(_key(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def cache_highlighting() -> None:
    """Pygments' HTML for a code block, kept per process and reused whenever the same block comes again with the
    same settings: in the other edition, in every rebuild ``mkdocs serve`` makes, and (``Memo``) in the next build.
    Installed once, on
    ``pymdownx.highlight.Highlight.highlight`` (the function superfences calls for every fence)."""
    from pymdownx import highlight
    original = highlight.Highlight.highlight
    if getattr(original, "lesson_cached", False):
        return

    disk = memo("highlight", "pygments", "pymdown-extensions", "Markdown")

    @functools.wraps(original)
    def cached(self, src, language, *args, **kwargs):
        settings = _key({k: v for k, v in vars(self).items() if not k.startswith("_") and k != "md"})
        key = (settings, src, language, _key(args), _key(kwargs))
        if key not in _highlighted:
            if len(_highlighted) >= HIGHLIGHT_CACHE_SIZE:
                _highlighted.clear()
            _highlighted[key] = disk(key, lambda: original(self, src, language, *args, **kwargs))
        return _highlighted[key]

    cached.lesson_cached = True
    highlight.Highlight.highlight = cached


def plain_code(html: str) -> str:
    """The page with the highlighting spans inside every <pre> removed: the same text, in far fewer elements."""
    return PRE.sub(lambda m: m[1] + SPAN.sub("", m[2]) + m[3], html)


def _toc_key(toc) -> tuple:
    return tuple((item.id, item.url, item.title, _toc_key(item.children)) for item in toc)


def index_plain_code(search_plugin) -> None:
    """Material's search index reads each page through Python's html.parser, token by token; give it the page with
    its code blocks as plain text (``plain_code``) and put the page back afterwards. The entries a page adds (its
    sections' locations, titles and text, segmented by jieba on Chinese pages) are kept (``Memo``) under everything
    they are made from: the page's address, title, front matter, table of contents and content, and jieba's
    dictionaries; the next build, or the next ``mkdocs serve`` rebuild, adds them without parsing the page again.
    Called once per build, after the search plugin has made its index (on_pre_build)."""
    index = getattr(search_plugin, "search_index", None)
    if index is None or getattr(index.add_entry_from_context, "lesson_plain", False):
        return
    original = index.add_entry_from_context
    disk = memo("search-entries", "mkdocs-material", "jieba")
    dictionaries = tuple(Path(search_plugin.config.get(name)).read_text(encoding="utf-8")
                         if search_plugin.config.get(name) and Path(search_plugin.config.get(name)).is_file() else None
                         for name in ("jieba_dict", "jieba_dict_user"))

    def add_entry_from_context(page):
        content, made = page.content, []
        key = (page.url, page.title, repr(page.meta), _toc_key(page.toc), content, dictionaries)

        def entries():
            before = len(index.entries)
            page.content = plain_code(content)
            try:
                original(page)
            finally:
                page.content = content
            made.append(True)
            return [dict(entry) for entry in index.entries[before:]]
        added = disk(key, entries)
        if not made:
            index.entries.extend(dict(entry) for entry in added)

    add_entry_from_context.lesson_plain = True
    index.add_entry_from_context = add_entry_from_context


_checked: dict[tuple, list] = {}


def fingerprint(folders: list[Path], files: list[Path]) -> tuple:
    """Every file under ``folders`` and each of ``files``, by path, size and modification time (nanoseconds)."""
    found = []
    for path in [p for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()] + list(files):
        stat = path.stat() if path.exists() else None
        found.append((str(path), stat and stat.st_size, stat and stat.st_mtime_ns))
    return tuple(found)


def checked_once(key: tuple, check) -> list:
    """``check()``'s result, computed again only when ``key`` (a ``fingerprint``) changes: the recordings are
    checked once for both editions, and once per ``mkdocs serve`` rebuild that did not touch a snippet or a
    recording."""
    if key not in _checked:
        _checked.clear()
        _checked[key] = list(check())
    return _checked[key]


def jinja_bytecode_cache():
    """Jinja's FileSystemBytecodeCache in .cache/lesson/jinja/ (the hook's on_env); None where it cannot be made."""
    import jinja2
    folder = CACHE / "jinja"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder))


def remember_markdown() -> None:
    """A Markdown page's HTML, table of contents and anchors, kept (``Memo``) under everything its conversion reads:
    the Markdown after every plugin's on_page_markdown, the page's source and address, the Markdown extensions and
    their settings, the validation settings, and every file's source path and address (links are checked against
    them). A conversion that logged anything (a broken link, a missing anchor) is not kept, so that its warning comes
    again and a strict build still fails; a page that includes other files (pymdownx.snippets' ``--8<--``) is always
    converted. Installed on ``mkdocs.structure.pages.Page.render`` (the hook's on_config); mkdocs-jupyter's notebook
    pages have their own."""
    import logging

    from mkdocs.structure import pages
    original = pages.Page.render
    if getattr(original, "lesson_remembered", False):
        return
    disk = memo("markdown", "mkdocs", "Markdown", "pymdown-extensions", "pygments", "mkdocs-material",
                "mkdocs-static-i18n")

    class Heard(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records = 0

        def emit(self, record):
            if record.levelno >= logging.INFO:
                self.records += 1

    @functools.wraps(original)
    def render(self, config, files):
        if self.markdown is None or "--8<--" in self.markdown:
            return original(self, config, files)
        key = ("render", self.file.src_uri, self.url, self.markdown, repr(config["markdown_extensions"]),
               repr(config["mdx_configs"]), repr(config["validation"]),
               tuple(sorted((f.src_uri, f.url) for f in files)))
        found, kept = disk.lookup(key)
        if found:
            self.content, self.toc, self._title_from_render, self.present_anchor_ids, links = kept
            if links is not None:
                self.links_to_anchors = {files.get_file_from_path(uri): anchors for uri, anchors in links.items()}
            return
        heard, logger = Heard(), logging.getLogger("mkdocs")
        logger.addHandler(heard)
        try:
            original(self, config, files)
        finally:
            logger.removeHandler(heard)
        links = getattr(self, "links_to_anchors", None)
        if not heard.records and all(f is not None for f in (links or {})):
            disk.store(key, (self.content, self.toc, self._title_from_render, self.present_anchor_ids,
                             None if links is None else {f.src_uri: anchors for f, anchors in links.items()}))

    render.lesson_remembered = True
    pages.Page.render = render
