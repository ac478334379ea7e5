"""MkDocs hook: expand ``<!-- cell: SNIPPET/CELL -->`` markers into the cell's code, recorded outputs, figures and
stamps, one content tab per device class that recorded it (GPU first).

It reads snippet files and recordings only: building the site never runs a snippet and never imports torch.
A recording that needs re-running (``tools.recordings.problems``, the same definition as ``python -m tools.record``
and ``--check``), or a marker naming a cell that does not exist, is a warning, so ``mkdocs build --strict`` fails,
naming the snippet and the command that fixes it.

Markers:

- ``<!-- cell: SNIPPET/CELL [no-code] [no-output] [gpu] [collapsed] [answer] -->``: the cell. ``gpu`` marks a cell
  whose output differs on a GPU: without a CUDA recording it still gets a GPU tab, saying that it has not been
  recorded on a GPU yet. ``collapsed`` folds the code (titled with the cell's first comment line, which says what it
  holds); ``answer`` folds code and outputs together, an exercise's answer to open after predicting it.
- ``<!-- gpu-only: SNIPPET -->`` … ``<!-- /gpu-only -->``: prose about GPU results, kept only when SNIPPET has a
  CUDA recording. ``<!-- cpu-only: SNIPPET -->`` … ``<!-- /cpu-only -->``: kept only when it has none.
- ``<!-- computation-times -->`` (every cell's seconds and peak memory, per device) and ``<!-- recorded-hardware -->``
  (which machines produced the outputs, and how many snippets each recorded).
"""
from __future__ import annotations

import base64
import html
import json
import logging
import os
import posixpath
import re
import sys
from pathlib import Path

from markdown.extensions.toc import slugify
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url

# MkDocs loads this file by path; make its package importable however mkdocs was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import build_speed, environment, notebook_pages, notebooks, recordings, snippets, translations  # noqa: E402

log = logging.getLogger("mkdocs.hooks.lesson")
DOCS = Path(__file__).resolve().parent.parent / "docs"
CELL_MARKER = re.compile(r"^(?P<indent>[ \t]*)<!--[ \t]*cell:[ \t]*(?P<snippet>[\w-]+)/(?P<cell>[a-z][a-z0-9-]*)"
                         r"(?P<flags>(?:[ \t]+[a-z-]+)*)[ \t]*-->[ \t]*$", re.MULTILINE)
# After an answer marker: one blank line, then a paragraph (not a list item, heading, marker or admonition).
ANSWER_EXPLANATION = re.compile(r"[ \t]*\n[ \t]*\n(?P<text>(?P<indent>[ \t]*)(?![ \t]|\d+\.\s|[-*+]\s|#|<!--|\?\?\?|!!!)"
                                r"[^\n]+(?:\n(?![ \t]*\n)[^\n]+)*)")
HEADING = re.compile(r"^(#{1,3})[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
DEVICE_BLOCK = re.compile(r"^<!--[ \t]*(?P<kind>gpu|cpu)-only:[ \t]*(?P<snippet>[\w-]+)[ \t]*-->[ \t]*\n"
                          r"(?P<body>.*?)^<!--[ \t]*/(?P=kind)-only[ \t]*-->[ \t]*$", re.MULTILINE | re.DOTALL)
TABLE_MARKERS = {"computation-times", "recorded-hardware"}
TABLE_MARKER = re.compile(r"^<!--[ \t]*(?P<table>[a-z-]+)[ \t]*-->[ \t]*$", re.MULTILINE)
FLAGS = {"no-code", "no-output", "gpu", "collapsed", "answer"}
KIND = environment.KIND
WORDS = {   # the hook's own words, per edition (mkdocs-static-i18n puts the Chinese edition under zh/)
    "en": {
        "output": "Output", "stderr": "stderr and warnings", "not_recorded_tab": "GPU · not recorded",
        "not_recorded": "This tab is empty because the cell has not run on a GPU yet. On a GPU it prints what the GPU "
                        "itself measures (the CUDA allocator's bytes, or GPU times), which differs from the CPU tab "
                        "beside it. [Run it yourself]({guide}) shows how to record it on yours.",
        "silent": "This cell printed nothing here.", "folded": "{where}",
        "answer": "Answer (open it after you have predicted)",
        "stale": "Stale or missing recording", "missing_snippet": "Missing snippet", "missing_cell": "Missing cell",
        "recorded_on": "recorded on", "and_on": " and on ", "notebook": "notebook",
        "run_yourself": "Run this page's code yourself:",
        "notebook_intro": "The whole of {file}, cell by cell, with what each cell printed; the cells its chapter "
                          "folds are folded here too.",
        "copy_note": "A visible cell's copy button gives code that runs when you paste it after the file's setup and "
                     "the folded cells above it, in the page's order; each file also runs whole. Tap a figure to "
                     "see it full size.",
        "copy_code": "Copy to Clipboard", "copied": "Copied!",
        "open": " (", "close": ")", "comma": ", ", "colon": ": ", "list": ", ", "seconds": " s",
        "taught_in": "Taught in ", "download": "Download", "colab": "Open in Colab",
        "downloads_label": "Downloads for this notebook",
        "times_summary_header": "| Snippet | Device | Seconds | Slowest cell | Highest peak (MiB) |",
        "times_header": "| Cell | Seconds | Peak memory (MiB) | Measured as |",
        "times_cells": "{name} on {device}: every cell",
        "times_total": "All snippets together, each in its own fresh process: {summary}.",
        "times_on": "on {kind}, **{seconds:.1f} s**",
        "process resident memory (RSS)": "process resident memory (RSS)",
        "cuda max_memory_allocated": "cuda max_memory_allocated",
        "hardware_header": "| Device | torch | torchvision | CUDA | Python | Recorded | Snippets |",
        "no_gpu": "All {total} snippets were recorded on a CPU, and **none has been recorded on a GPU yet**: where a "
                  "GPU would print something different, the page's GPU tab says so and says how to record it.",
        "some_gpu": "All {total} snippets were recorded on a CPU; {on_gpu} of them also on a GPU, shown in a GPU tab "
                    "beside the CPU one.",
    },
    "zh": {
        "output": "输出", "stderr": "标准错误与警告（stderr、warnings）", "not_recorded_tab": "GPU · 尚未录制",
        "not_recorded": "这个标签页是空的：这个单元格还没有在 GPU 上运行过。在 GPU 上，它打印的是 GPU 自己测得的结果"
                        "（CUDA 分配器统计的字节数，或 GPU 上的耗时），与旁边 CPU 标签页的内容不同。"
                        "[自己动手运行]({guide})介绍了怎样在你的 GPU 上录制它。",
        "silent": "这个单元格在这里没有输出。", "folded": "{where}",
        "answer": "答案（先自己预测，再展开）",
        "stale": "录制已过期或缺失", "missing_snippet": "找不到代码文件", "missing_cell": "找不到单元格",
        "recorded_on": "录制于", "and_on": "，以及", "notebook": "笔记本",
        "run_yourself": "自己运行本页的代码：",
        "notebook_intro": "{file} 的全部单元格，依次列出，每个单元格下面是它打印的输出；章节里折叠的单元格，这里也折叠。",
        "copy_note": "用可见单元格的复制按钮复制的代码，按页面顺序粘贴在该文件的准备单元格和上方折叠的单元格之后就能运行；"
                     "每个代码文件也可以整个运行。点按图片可查看原尺寸。",
        "copy_code": "复制到剪贴板", "copied": "已复制！",
        "open": "（", "close": "）", "comma": "，", "colon": "：", "list": "、", "seconds": " 秒",
        "taught_in": "讲解见", "download": "下载", "colab": "在 Colab 中打开",
        "downloads_label": "本笔记本的下载",
        "times_summary_header": "| 代码文件 | 设备 | 秒 | 最慢的单元格 | 最高峰值（MiB） |",
        "times_header": "| 单元格 | 秒 | 峰值（MiB） | 测量方式 |",
        "times_cells": "{name}（{device}）：每个单元格",
        "times_total": "全部代码文件合计（每个都在新的进程中运行）：{summary}。",
        "times_on": "{kind} 上 **{seconds:.1f} 秒**",
        "process resident memory (RSS)": "进程常驻内存（RSS）",
        "cuda max_memory_allocated": "CUDA 的 max_memory_allocated（峰值显存）",
        "hardware_header": "| 设备 | torch | torchvision | CUDA | Python | 录制日期 | 代码文件数 |",
        "no_gpu": "全部 {total} 个代码文件都在 CPU 上录制，**还没有任何一个在 GPU 上录制过**：凡是 GPU 会输出不同结果的"
                  "地方，页面上的 GPU 标签页都会说明这一点，并给出录制的命令。",
        "some_gpu": "全部 {total} 个代码文件都在 CPU 上录制；其中 {on_gpu} 个也在 GPU 上录制，显示在 CPU 标签页旁边的 GPU "
                    "标签页中。",
    },
}


def lang(page) -> str:
    """The page's edition: 'zh' under zh/, else 'en'."""
    return "zh" if page is not None and page.url.startswith("zh/") else "en"


def t(page, key: str, **values) -> str:
    return WORDS[lang(page)][key].format(**values)
_stale: dict[str, str] = {}
_taught: dict[str, tuple] = {}          # snippet name -> (the chapter page that first shows it, section title)


FULL_BUILD = build_speed.FULL_BUILD     # LESSON_FULL_BUILD=1: build without tools/build_speed.py's shortcuts (tests)
JIEBA_USER_DICT = Path(__file__).resolve().parent.parent / ".cache" / "jieba-user.txt"


@event_priority(100)        # before Material's search plugin loads jieba's dictionaries in its own on_config
def on_config(config):
    """Chinese search keeps each glossary term whole: the terms and aliases of the Chinese glossary's table
    (``translations.search_words``) become jieba's user dictionary, written once per build."""
    search = config["plugins"].get("material/search") or config["plugins"].get("search")
    if search is not None and not search.config.get("jieba_dict_user"):
        build_speed.write_atomically(JIEBA_USER_DICT, "".join(f"{word}\n" for word in translations.search_words())
                                     .encode("utf-8"))                          # builds side by side
        search.config["jieba_dict_user"] = str(JIEBA_USER_DICT)
    if not FULL_BUILD:
        build_speed.cache_highlighting()
        build_speed.remember_markdown()
    return config


# Material's search worker cuts a Chinese query into words it finds in the index, but never tries a word that ends
# at the query's last character (``for (j = i + 1; j < query.length; j++)``), so "梯度累积" is searched as "梯度*"
# and every page about gradients ranks alongside. The built worker is patched to try that word too (j <= length).
WORKER_SEGMENT = re.compile(r"for\(let (\w)=(\w)\+1;\1<(\w)\.length;\1\+\+\)\3\.slice\(\2,\1\)in ")


def patch_search_worker(site_dir: str) -> None:
    workers = list((Path(site_dir) / "assets" / "javascripts" / "workers").glob("search.*.min.js"))
    for worker in workers:
        text = worker.read_text(encoding="utf-8")
        patched, count = WORKER_SEGMENT.subn(lambda m: m[0].replace(f"{m[1]}<{m[3]}.length", f"{m[1]}<={m[3]}.length"),
                                             text)
        if count != 1:
            log.warning("Material's search worker %s has changed: the Chinese query segmentation patch "
                        "(tools/hook.py, WORKER_SEGMENT) matched %d times, not once", worker.name, count)
        worker.write_text(patched, encoding="utf-8")
    if not workers:
        log.warning("no search worker under assets/javascripts/workers to patch")


@event_priority(-200)       # after mkdocs-jupyter and mkdocs-static-i18n
def on_files(files, config):
    """Check every recording once per build, publish the snippet files so readers can download them, and give each
    edition its notebook pages (see ``notebook_files``)."""
    notebook_files(files, config)
    _stale.clear()
    key = build_speed.fingerprint([snippets.SNIPPETS_DIR, recordings.OUTPUTS_DIR, notebooks.NOTEBOOKS_DIR],
                                  list(environment.PINS_FILES.values()))
    for problem in (recordings.problems() if FULL_BUILD else build_speed.checked_once(key, recordings.problems)):
        _stale.setdefault(f"{problem.name}/{problem.device}", str(problem))
        log.warning("Recording %s", problem)
    for path in snippets.find():
        files.append(File(f"snippets/{path.name}", str(snippets.ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files


def notebook_files(files, config) -> None:
    """mkdocs-static-i18n remakes every file as a plain File after mkdocs-jupyter has wrapped the notebooks, so the
    notebooks would be copied as raw JSON instead of rendered (ultrabug/mkdocs-static-i18n#198); and it files them
    as shared assets, so the Chinese edition would have no notebook pages. Wrap each one again, in place (a new
    Files object breaks i18n's lookups), at this edition's address: notebooks/NAME/ or zh/notebooks/NAME/."""
    from mkdocs_jupyter.plugin import NotebookFile
    i18n = config["plugins"].get("i18n")
    prefix = "" if i18n is None or i18n.current_language == i18n.default_language else f"{i18n.current_language}/"
    for index, file in enumerate(list(files)):
        if isinstance(file, NotebookFile) or not re.fullmatch(r"notebooks/[\w-]+\.ipynb", file.src_uri):
            continue
        wrapped = NotebookFile(file, config["use_directory_urls"], config["site_dir"])
        wrapped.dest_path = prefix + wrapped.dest_path
        wrapped.abs_dest_path = str(Path(config["site_dir"]) / wrapped.dest_path)
        wrapped.url = prefix + wrapped.url
        files.remove(file)
        files.append(wrapped)


def _relative(page, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page.file.src_uri) or ".")


def tab_label(recording: dict) -> str:
    """The device as a tab names it, short enough for two tabs side by side on a phone: 'CPU · Intel Xeon' for
    'CPU · Intel(R) Xeon(R) Processor' (the stamp under the cell keeps the full name)."""
    label = environment.label(recording["environment"])
    label = re.sub(r"\((?:R|TM)\)|\bProcessor\b|\bCPU @ [\d.]+GHz|\b\d+-Core\b", "", label)
    return re.sub(r"\s+", " ", label).strip()


def stamp(found: dict[str, dict], page) -> str:
    """One line naming the snippet, its notebook, and every recording of it: device, torch, date, seconds the whole
    file took. Shown once per snippet section, after its last cell there."""
    first = next(iter(found.values()))
    snippet = first["snippet"]
    name = Path(snippet).stem
    comma, opening, closing, unit = (t(page, key) for key in ("comma", "open", "close", "seconds"))
    runs = [f"**{environment.label(r['environment'])}**{opening}torch {r['environment']['torch']}"
            + (f"{comma}CUDA {r['environment']['cuda']}" if r["environment"].get("cuda") else "")
            + f"{comma}{r['environment']['recorded_at'][:10]}{comma}{r['seconds']:.1f}{unit}{closing}"
            for r in found.values()]
    return (f"[{snippet}]({_relative(page, snippet)}) · [{t(page, 'notebook')}]"
            f"({_relative(page, f'notebooks/{name}.ipynb')}) · "
            f"{t(page, 'recorded_on')} {t(page, 'and_on').join(runs)}\n{{: .cell-stamp }}")


def fence(text: str, language: str, title: str, css_class: str = "") -> str:
    ticks = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    if css_class:
        return f'{ticks}{{.{language} .{css_class} title="{title}"}}\n{text.rstrip()}\n{ticks}'
    return f'{ticks}{language} title="{title}"\n{text.rstrip()}\n{ticks}'


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def outputs(result: dict, page, key: str = "") -> str:
    """A recorded cell's stdout, its stderr and warnings (styled apart) and its figures; '' when it has none."""
    parts = []
    if result["stdout"]:
        parts.append(fence(result["stdout"], "text", t(page, "output")))
    errors = result.get("stderr", "") + "".join(f"{w}\n" for w in result.get("warnings", []))
    if errors:
        parts.append(fence(errors, "text", t(page, "stderr"), "cell-stderr"))
    for number, (figure, description) in enumerate(zip(result["figures"], result["figure_descriptions"]), start=1):
        if lang(page) == "zh":
            description = translations.chinese("figures", f"{key}/{number}", description, _zh or None)  # key: device/snippet/cell
        size = notebook_pages.png_size((DOCS / figure).read_bytes()[:32]) if (DOCS / figure).is_file() else None
        box = f" width={size[0]} height={size[1]}" if size else ""   # the page keeps its layout while it loads
        parts.append(f"![{description}]({_relative(page, figure)}){{ loading=lazy{box} }}")
    return "\n\n".join(parts)


def render_cell(snippet_name: str, cell_name: str, flags: set[str], page, with_stamp: bool = True,
                explanation: str = "") -> str:
    """The cell's code, its outputs (one content tab per device when there is more than one, GPU first) and, with
    ``with_stamp``, the snippet's stamp."""
    path = snippets.SNIPPETS_DIR / f"{snippet_name}.py"
    where = f"{page.file.src_uri}: <!-- cell: {snippet_name}/{cell_name} -->"
    if not path.exists():
        log.warning("%s names a snippet that does not exist (%s)", where, path)
        return f'!!! failure "{t(page, "missing_snippet")}"\n    `{snippet_name}` does not exist.'
    cell = next((c for c in snippets.cells(path) if c.name == cell_name), None)
    if cell is None or flags - FLAGS:
        log.warning("%s: no cell %r in %s, or unknown flags %s", where, cell_name, path.name, flags - FLAGS or "")
        return f'!!! failure "{t(page, "missing_cell")}"\n    `{snippet_name}/{cell_name}` does not exist.'
    code = fence(cell.source, "python", f"{path.name} · {cell.name}")
    found = recordings.load_all(snippet_name)
    stale = [_stale[f"{snippet_name}/{device}"] for device in recordings.DEVICES if f"{snippet_name}/{device}" in _stale]
    if stale or recordings.REQUIRED not in found:
        reason = "\n\n    ".join(stale) or "no recording"
        return f'!!! failure "{t(page, "stale")}"\n    {reason}\n\n{code}'
    if "collapsed" in flags:
        code = f'??? example "{fold_title(page, snippet_name, cell)}"\n\n{_indent(code)}'
    parts = [] if "no-code" in flags else [code]
    blocks = [(tab_label(recording), outputs(next(r for r in recording["cells"] if r["name"] == cell_name), page,
                                                    f"{device}/{snippet_name}/{cell_name}"))
              for device, recording in found.items()] if "no-output" not in flags else []
    if any(body for _, body in blocks):
        selected = 0
        if len(blocks) == 1 and "gpu" in flags:
            blocks.insert(0, (t(page, "not_recorded_tab"),
                              t(page, "not_recorded", guide=_relative(page, "reference/run-it-yourself.md") + "#recording-on-a-gpu")))
            selected = 1
        if len(blocks) == 1:
            parts.append(blocks[0][1])
        else:
            parts.append("\n\n".join(f'==={"+" if index == selected else ""} "{label}"\n\n'
                                     f'{_indent(body or t(page, "silent"))}'
                                     for index, (label, body) in enumerate(blocks)))
    if with_stamp:
        parts.append(stamp(found, page))
    if "answer" in flags:  # an exercise's answer: code, outputs, stamp and the explanation after it, folded together
        return (f'??? success "{t(page, "answer")}"\n\n'
                + _indent("\n\n".join(parts + ([explanation] if explanation else []))))
    return "\n\n".join(parts)


def fold_title(page, snippet_name: str, cell) -> str:
    """A folded cell's title: 'file · cell: what it holds' (the cell's opening comment; on /zh/ its Chinese from
    i18n/zh.yml while that translates today's comment)."""
    label = snippets.fold_label(cell.source)
    if label and lang(page) == "zh":
        label = translations.chinese("folds", f"{snippet_name}/{cell.name}", label, _zh or None)
    return t(page, "folded", where=f"{snippet_name}.py · {cell.name}" + (t(page, "colon") + label if label else ""))


def expand_cells(markdown: str, page) -> str:
    """Expand every cell marker. A snippet's stamp follows the last cell of each run of its cells: the next marker
    belongs to another snippet, or a heading comes first, or it is the page's last marker."""
    matches = list(CELL_MARKER.finditer(markdown))
    pieces, last = [], 0
    for index, match in enumerate(matches):
        following = matches[index + 1] if index + 1 < len(matches) else None
        with_stamp = (following is None or following["snippet"] != match["snippet"]
                      or HEADING.search(markdown, match.end(), following.start()) is not None)
        flags, indent, end = set(match["flags"].split()), match["indent"], match.end()
        explanation = ""
        if "answer" in flags:          # the paragraph right after an answer explains it: it goes into the fold
            after = ANSWER_EXPLANATION.match(markdown, end)
            if after and after["indent"] == indent and (following is None or after.end() <= following.start()):
                explanation = "\n".join(line[len(indent):] for line in after["text"].splitlines())
                end = after.end()
        text = render_cell(match["snippet"], match["cell"], flags, page, with_stamp, explanation)
        pieces += [markdown[last:match.start()],
                   "\n".join(f"{indent}{line}" if line else "" for line in text.splitlines())]
        last = end
    pieces.append(markdown[last:])
    return "".join(pieces)


def snippet_links(markdown: str, page, config) -> str:
    """After the page's H1: the snippets its cells come from, each with its notebook, its .py and Colab."""
    names = list(dict.fromkeys(m["snippet"] for m in CELL_MARKER.finditer(markdown)))
    names = [n for n in names if (snippets.SNIPPETS_DIR / f"{n}.py").exists()]
    heading = re.search(r"^# .*$", markdown, re.MULTILINE)
    if not names or not heading:
        return markdown
    repo = config["repo_url"].removeprefix("https://github.com/").strip("/")
    items = [f"`{name}.py`{t(page, 'open')}[{t(page, 'notebook')}]({_relative(page, f'notebooks/{name}.ipynb')}) · "
             f"[.py]({_relative(page, f'snippets/{name}.py')}) · "
             f"[Colab](https://colab.research.google.com/github/{repo}/blob/main/docs/notebooks/{name}.ipynb)"
             f"{t(page, 'close')}" for name in names]
    links = (f"\n\n<div class=\"snippet-links\" markdown>\n**{t(page, 'run_yourself')}** "
             + t(page, "list").join(items) + f"\n\n{t(page, 'copy_note')}\n</div>\n")
    return markdown[:heading.end()] + links + markdown[heading.end():]


def device_blocks(markdown: str, page) -> str:
    """Keep or drop ``gpu-only`` / ``cpu-only`` prose blocks by whether their snippet has a CUDA recording."""
    known = {p.stem for p in snippets.find()}

    def keep(match):
        name = match["snippet"]
        if name not in known:
            log.warning("%s: <!-- %s-only: %s --> names a snippet that does not exist",
                        page.file.src_uri, match["kind"], name)
            return ""
        has_gpu = recordings.has_cuda(name)
        return match["body"] if has_gpu == (match["kind"] == "gpu") else ""
    return DEVICE_BLOCK.sub(keep, markdown)


def _all_recordings():
    for path in snippets.find():
        for device, recording in recordings.load_all(path.stem).items():
            yield path.stem, device, recording


def computation_times(page) -> str:
    """One row per snippet and device (seconds for the whole file, its slowest cell, its highest peak), then every
    cell's figures in a folded table per snippet."""
    rows = [t(page, "times_summary_header"), "|---|---|--:|---|--:|"]
    folds, totals = [], {}
    for name, device, recording in _all_recordings():
        totals[device] = totals.get(device, 0) + recording["seconds"]
        cells = recording["cells"]
        slowest = max(cells, key=lambda c: c["seconds"])
        peak = max(cells, key=lambda c: c["peak_memory_bytes"])
        rows.append(f"| [{name}]({_relative(page, f'notebooks/{name}.ipynb')}) | {tab_label(recording)} "
                    f"| **{recording['seconds']:.2f}** | {slowest['name']} ({slowest['seconds']:.2f} s) "
                    f"| {peak['peak_memory_bytes'] / 2**20:,.1f} |")
        table = [t(page, "times_header"), "|---|--:|--:|---|"]
        table += [f"| {cell['name']} | {cell['seconds']:.3f} | {cell['peak_memory_bytes'] / 2**20:,.1f} "
                  f"| {WORDS[lang(page)].get(cell['peak_memory_kind'], cell['peak_memory_kind'])} |" for cell in cells]
        folds.append(f'??? note "{t(page, "times_cells", name=name, device=tab_label(recording))}"\n\n'
                     + _indent("\n".join(table)))
    summary = "; ".join(t(page, "times_on", kind=KIND[device], seconds=seconds) for device, seconds in totals.items())
    return "\n".join(rows) + "\n\n" + t(page, "times_total", summary=summary) + "\n\n" + "\n\n".join(folds)


def recorded_hardware(page) -> str:
    machines: dict[tuple, list[str]] = {}
    for name, device, recording in _all_recordings():
        env = recording["environment"]
        key = (environment.label(env), env["torch"], env["torchvision"], env["cuda"] or "—",
               env["python"], env["recorded_at"][:10])
        machines.setdefault(key, []).append(name)
    rows = [t(page, "hardware_header"), "|---|---|---|---|---|---|---|"]
    rows += [f"| {' | '.join(key)} | {len(names)} |" for key, names in machines.items()]
    total = len(snippets.find())
    on_gpu = sum(1 for path in snippets.find() if recordings.has_cuda(path.stem))
    summary = t(page, "no_gpu", total=total) if on_gpu == 0 else t(page, "some_gpu", total=total, on_gpu=on_gpu)
    return "\n".join(rows) + "\n\n" + summary


_folded: dict[str, dict[str, str]] = {}     # snippet → {cell: label} of the cells a chapter shows folded
_zh: dict[str, dict] = {}                   # tools.translations.load(): Chinese fold titles and figure descriptions


def on_pre_build(config):
    """Read once per build: which cells the chapters fold (``collapsed``; notebook pages fold the same ones), and the
    Chinese edition's words for fold titles and figures (``tools.translations``)."""
    _folded.clear()
    _folded.update(translations.folded_cells(Path(config["docs_dir"])))
    _zh.clear()
    _zh.update(translations.load())
    search = config["plugins"].get("material/search") or config["plugins"].get("search")
    if search is not None and not FULL_BUILD:
        build_speed.index_plain_code(search)


def _div_end(html_text: str, start: int) -> int:
    """The index just past the </div> that closes the <div> starting at ``start``."""
    depth = 0
    for tag in re.finditer(r"<div\b|</div>", html_text[start:]):
        depth += 1 if tag[0] == "<div" else -1
        if depth == 0:
            return start + tag.end()
    return len(html_text)


def fold_notebook_cells(output: str, page) -> str:
    """A notebook page folds the code of the cells its chapter folds (setup, helpers, plotting), as the chapter does;
    the outputs stay open. Cell i of the snippet is the notebook's code cell with id NAME-(i+2) (tools/notebooks.py:
    the stamp and the Colab cell come first)."""
    name = Path(page.file.src_uri).stem
    path = snippets.SNIPPETS_DIR / f"{name}.py"
    if name not in _folded or not path.exists():
        return output
    for index, cell in enumerate(snippets.cells(path)):
        if cell.name not in _folded[name]:
            continue
        anchor = output.find(f'id="cell-id={name.replace("_", "-")}-{index + 2}"')
        start = output.find('<div class="jp-Cell-inputWrapper"', anchor) if anchor >= 0 else -1
        if start < 0:
            continue
        end = _div_end(output, start)
        summary = html.escape(fold_title(page, name, cell))
        output = (f'{output[:start]}<details class="example notebook-fold"><summary>{summary}</summary>'
                  f"{output[start:end]}</details>{output[end:]}")
    return output


DATA_PNG_SRC = re.compile(r'(?P<attribute>src|href)="data:image/png;base64,(?P<data>[A-Za-z0-9+/=\s]+)"')


def figure_files(output: str, page) -> str:
    """A notebook page's figures, and glightbox's links to them full size, from the PNG files its chapter shows
    (outputs/DEVICE/NAME/…), not inlined as base64: a third smaller, loaded lazily, and the browser may have them
    already from the chapter. The .ipynb keeps them inline. A figure that matches no recorded file stays inline."""
    name = Path(page.file.src_uri).stem
    files = {}
    for recording in recordings.load_all(name).values():
        for cell in recording["cells"]:
            for figure in cell["figures"]:
                path = DOCS / figure
                if path.is_file():
                    files[base64.b64encode(path.read_bytes()).decode()] = figure

    def link(match: re.Match) -> str:
        figure = files.get(re.sub(r"\s", "", match["data"]))
        if figure is None:
            return match[0]
        lazy = 'loading="lazy" ' if match["attribute"] == "src" else ""     # the <img>, not glightbox's <a>
        return f'{lazy}{match["attribute"]}="{get_relative_url(figure, page.url)}"'
    return DATA_PNG_SRC.sub(link, output)


def localise_notebook(output: str, page) -> str:
    """A Chinese notebook page (the same .ipynb as the English one) in Chinese: its first cell, the stamp, written
    again from the recording; the figures' alt text from i18n/zh.yml; the copy buttons' words."""
    name = Path(page.file.src_uri).stem
    recording = recordings.preferred(name)
    if recording:
        stamp = html.escape(notebooks.stamp_text(recording, recordings.load_all(name), "zh"))
        stamp = re.sub(r"`([^`]*)`", r"<code>\1</code>", stamp)
        output = re.sub(r'(id="cell-id=[\w-]+-0">.*?)<p><em>.*?</em></p>',     # not in italics: Chinese has none
                        lambda m: f'{m[1]}<p class="notebook-stamp">{stamp}</p>', output, count=1, flags=re.S)
    for key, entry in _zh.get("figures", {}).items():
        if entry.get("zh") and key.startswith(f"{recording['environment']['device'] if recording else ''}/{name}/"):
            output = output.replace(f'alt="{html.escape(entry["en"])}"', f'alt="{html.escape(entry["zh"])}"')
    output = output.replace('aria-label="Copy to Clipboard"', f'aria-label="{t(page, "copy_code")}"')
    return output.replace(">Copied!<", f">{t(page, 'copied')}<")


def on_env(env, config, files):
    """Jinja compiles each theme template once and keeps the result in .cache/lesson/jinja/ (Jinja's own
    FileSystemBytecodeCache, keyed by each template's source): each build, each edition and each ``mkdocs serve``
    rebuild makes a new environment and compiled all 85 of Material's templates again (0.4 s)."""
    if not FULL_BUILD:
        env.bytecode_cache = build_speed.jinja_bytecode_cache()
    return env


@event_priority(100)        # before glightbox and the search read the page (a notebook's: 1 MB, 0.3 MB slimmed)
def on_page_content(html_text, page, config, files):
    """Notebook pages: only the stylesheet rules they use, keyboard-scrollable code boxes, the chapters' folds, and
    figures from files. Done as soon as mkdocs-jupyter has rendered the notebook, so that no later step (glightbox,
    the search, the theme) goes through JupyterLab's whole stylesheet: the pages' content over both editions came to
    40 MB, 14 MB now."""
    if not page.file.src_uri.startswith("notebooks/"):
        return html_text
    slim = build_speed.memo("notebook-page", "tinycss2", sources=(Path(notebook_pages.__file__),))(
        html_text, lambda: notebook_pages.slim(html_text))
    html_text = figure_files(fold_notebook_cells(slim, page), page)
    return localise_notebook(html_text, page) if lang(page) == "zh" else html_text


def on_post_page(output, page, config):
    """Chinese pages: the search looks in the Chinese edition's index (``on_post_build``), found under zh/ beside the
    site's base."""
    # mkdocs-static-i18n's <link rel="alternate" hreflang> tags point at this page in each edition; Material fetches
    # a sitemap.xml beside each of them (it expects edition roots) and gets 404s. The header's language switch
    # already links every page to its other edition.
    output = re.sub(r'<link rel="alternate" href="[^"]*" hreflang="[\w-]+">\s*', "", output)
    if lang(page) == "zh":
        output = re.sub(r'(<script id="__config" type="application/json">[^<]*?"base":\s*")([^"]*)(")',
                        lambda m: f"{m[1]}{m[2]}/zh/{m[3]}", output, count=1)
    return output


@event_priority(-200)       # after mkdocs-static-i18n has built every edition and written the joint search index
def on_post_build(config):
    """One search index per edition, so that a search never answers in the other language: search/ keeps the English
    pages, zh/search/ the Chinese ones (their locations relative to zh/)."""
    build_speed.save_memos()
    i18n = config["plugins"].get("i18n")
    if i18n is None or i18n.building:
        return
    patch_search_worker(config["site_dir"])
    path = Path(config["site_dir"]) / "search" / "search_index.json"
    if not path.exists():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    zh = [dict(d, location=d["location"].removeprefix("zh/")) for d in index["docs"] if d["location"].startswith("zh/")]
    en = [d for d in index["docs"] if not d["location"].startswith("zh/")]
    path.write_text(json.dumps(dict(index, docs=en, config=dict(index["config"], lang=["en"])),
                               ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    target = Path(config["site_dir"]) / "zh" / "search" / "search_index.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    # The Chinese text is already cut into words by jieba (zero-width spaces, which the separator splits on); lunr's
    # own Chinese pipeline would cut it again in the browser and finds nothing, so both editions use lunr's "en".
    target.write_text(json.dumps(dict(index, docs=zh, config=dict(index["config"], lang=["en"])),
                                 ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


REPO_URL = "{{ repo_url }}"   # in a page: the repository's address, from mkdocs.yml's repo_url (its one home)
READING_TIME = "{{ reading_time }}"   # in a page: how long the course takes to read, counted from its pages
WORDS_PER_MINUTE, CJK_PER_MINUTE, CODE_LINES_PER_MINUTE = 200, 300, 20


def reading_time(config, language: str) -> dict[str, int]:
    """How long the course's pages (the nav's Course section) take to read in one edition: ``words`` of prose (for
    Chinese, ``characters`` of it too), ``code`` lines a reader sees open (visible cells' non-blank lines; folded
    cells, answers and outputs not counted) and ``minutes`` at 200 words, 300 Chinese characters and 20 lines of
    code a minute, rounded up to 5."""
    import math
    course = next(item["Course"] for item in config["nav"] if isinstance(item, dict) and "Course" in item)
    words = characters = code = 0
    for entry in course:
        path = Path(config["docs_dir"]) / next(iter(entry.values()))
        if language != "en":
            path = path.with_suffix(f".{language}.md")
        text = path.read_text(encoding="utf-8")
        for match in CELL_MARKER.finditer(text):
            flags = set(match["flags"].split())
            cell = next((c for c in snippets.cells(snippets.SNIPPETS_DIR / f"{match['snippet']}.py")
                         if c.name == match["cell"]), None)
            if cell and not flags & {"collapsed", "no-code", "answer"}:
                code += sum(1 for line in cell.source.splitlines() if line.strip())
        prose = re.sub(r"<!--.*?-->|```.*?```|\]\([^)]*\)|\{[#.][^}]*\}", " ", text, flags=re.S)
        characters += len(re.findall(r"[\u4e00-\u9fff]", prose))
        words += len(re.findall(r"[A-Za-z0-9][\w'’-]*", prose))
    minutes = words / WORDS_PER_MINUTE + characters / CJK_PER_MINUTE + code / CODE_LINES_PER_MINUTE
    return {"words": words, "characters": characters, "code": code, "minutes": 5 * math.ceil(minutes / 5)}


def reading_sentence(config, page) -> str:
    found = reading_time(config, lang(page))
    if lang(page) == "zh":
        return (f"读完六章大约需要 **{found['minutes']} 分钟**（{found['characters']:,} 个汉字按每分钟 {CJK_PER_MINUTE} 字、"
                f"{found['words']:,} 个英文词和数字按每分钟 {WORDS_PER_MINUTE} 个、{found['code']:,} 行展开的代码按每分钟 "
                f"{CODE_LINES_PER_MINUTE} 行计算）；自己运行代码、做练习还需要更多时间。")
    return (f"Reading the six chapters takes about **{found['minutes']} minutes** ({found['words']:,} words of prose "
            f"at {WORDS_PER_MINUTE} a minute and {found['code']:,} lines of open code at {CODE_LINES_PER_MINUTE} a "
            "minute); running the code and doing the exercises takes longer.")


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace(REPO_URL, config["repo_url"].rstrip("/"))
    if READING_TIME in markdown:
        markdown = markdown.replace(READING_TIME, reading_sentence(config, page))
    markdown = device_blocks(markdown, page)
    markdown = snippet_links(markdown, page, config)
    markdown = expand_cells(markdown, page)

    def table(match):
        if match["table"] not in TABLE_MARKERS:
            return match.group(0)
        return computation_times(page) if match["table"] == "computation-times" else recorded_hardware(page)
    return TABLE_MARKER.sub(table, markdown)


def on_nav(nav, config, files):
    """Where each snippet is taught first: the chapter page and the section (## or ###) of its first cell."""
    _taught.clear()
    for page in nav.pages:
        if not page.file.src_uri.startswith("chapters/"):
            continue
        text = Path(page.file.abs_src_path).read_text(encoding="utf-8")
        for match in CELL_MARKER.finditer(text):
            headings = [h for h in HEADING.finditer(text, 0, match.start()) if len(h[1]) > 1]
            _taught.setdefault(match["snippet"], (page, headings[-1]["title"] if headings else None))
    return nav



@event_priority(100)        # before Material's search plugin reads page.meta
def on_page_context(context, page, config, nav):
    """Notebook pages: out of the search index (the chapters hold the same text), and headed by a title, a sentence
    on what they show, a link to the section that teaches them, and the downloads. The last chapter's "Next" does
    not lead into the notebooks."""
    if page.file.src_uri.startswith("notebooks/"):
        page.meta["search"] = {"exclude": True}
        page.content = notebook_header(page, config) + page.content
    elif page.next_page is not None and page.next_page.file.src_uri.startswith("notebooks/"):
        page.next_page = None
    return context


def notebook_header(page, config) -> str:
    name = Path(page.file.src_uri).stem
    repo = config["repo_url"].removeprefix("https://github.com/").strip("/")
    taught = ""
    if name in _taught:
        chapter, section = _taught[name]
        explicit = re.search(r"\s*\{\s*#([\w-]+)[^}]*\}\s*$", section or "")     # `## Title {#id}` (attr_list)
        plain = re.sub(r"[`*_]", "", (section or "")[:explicit.start()] if explicit else (section or ""))
        anchor = explicit[1] if explicit else slugify(plain, "-")
        url = get_relative_url(chapter.url, page.url) + (f"#{anchor}" if section else "")
        title = chapter.title + (t(page, "colon") + plain if section else "")
        zh = lang(page) == "zh"
        taught = (f'{"" if zh else " "}{t(page, "taught_in")}<a href="{html.escape(url)}">{html.escape(title)}</a>'
                  f'{"。" if zh else "."}')
    py = get_relative_url(f"snippets/{name}.py", page.url)
    return (f'<h1>{html.escape(page.title)}</h1>\n'
            f'<p class="notebook-intro">{t(page, "notebook_intro", file=f"<code>{name}.py</code>")}{taught}</p>\n'
            f'<nav class="notebook-links" aria-label="{t(page, "downloads_label")}">'
            f'<a class="md-button" href="{name}.ipynb" download>{t(page, "download")} {name}.ipynb</a> '
            f'<a class="md-button" href="{html.escape(py)}" download>{t(page, "download")} {name}.py</a> '
            f'<a class="md-button" href="https://colab.research.google.com/github/{repo}/blob/main/docs/notebooks/'
            f'{name}.ipynb">{t(page, "colab")}</a></nav>\n')


SAVE_POLL_SECONDS = 0.1


@event_priority(100)        # before any plugin watches a path of its own, so that it is watched the same way
def on_serve(server, config, builder):
    """mkdocs serve looks for saved files every 0.5 s (watchdog's PollingObserver; mkdocs 1.6 has no setting for it),
    so a saved edit waited up to half a second before its rebuild began. Here the same kind of observer looks every
    0.1 s: each look lists the lesson's folders, about 1 ms. docs/ and mkdocs.yml, which mkdocs watches already,
    move to it; ``watch:`` in mkdocs.yml is added after this. With --watch-theme mkdocs' own observer stays: one
    look at Material's 14,500 files takes about 80 ms."""
    for folder in config.theme.dirs:
        try:
            server.unwatch(folder)
        except KeyError:            # not watched: no --watch-theme
            continue
        server.watch(folder)
        return server
    from watchdog.observers.polling import PollingObserver
    watched = list(filter(None, [config.docs_dir, config.config_file_path]))
    for path in watched:
        server.unwatch(path)
    server.observer = PollingObserver(timeout=SAVE_POLL_SECONDS)
    for path in watched:
        server.watch(path)
    return server
