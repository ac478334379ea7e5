"""Timings a reader can trust: every snippet that reads the clock times its work more than once and prints the median
and how far the timings spread; its stamp says how busy the machine was; and chapter 5 says what its timings show."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT, cell_output, prose
from tools import environment, recordings, snippets
from tools.record import timing_cells

TIMING_SNIPPETS = {path.stem: timing_cells(path) for path in snippets.find() if timing_cells(path)}
CHAPTER = ROOT / "docs" / "chapters" / "batch-size.md"
CHAPTER_ZH = ROOT / "docs" / "chapters" / "batch-size.zh.md"


def test_the_timing_cells_are_found():
    """The recorder's warning and the test below find the timing cells by their calls to time.perf_counter."""
    assert {name: TIMING_SNIPPETS.get(name) for name in ("batch_size_effects", "checkpointing", "fast_path",
                                                          "training_loop")} == {
        "batch_size_effects": ["throughput"], "checkpointing": ["time"], "fast_path": ["setup"],
        "training_loop": ["loop"]}


@pytest.mark.parametrize("name", sorted(TIMING_SNIPPETS))
def test_committed_timings_print_a_median_and_a_spread_and_stamp_the_load(name):
    for device, recording in recordings.load_all(name).items():
        printed = prose("".join(cell["stdout"] for cell in recording["cells"]))
        assert "median" in printed, (name, device)
        assert re.search(r"\d to \d|\d-\d|±", printed), (name, device)           # fastest to slowest, or ±
        load = recording["environment"].get("load_per_cpu")
        assert isinstance(load, float) and load >= 0, (name, device)              # recorded with the load stamped
        assert "load_per_cpu" not in environment.KEY_FIELDS


def test_checkpointing_prints_the_spread_of_its_seven_steps(recorded):
    timing = cell_output(recorded("checkpointing"), "time")
    for label in ("no checkpointing", "runs of 4 blocks"):
        found = re.search(rf"^{label}\s+([\d.]+) ms a step \(median of 7\)\n\s+([\d.]+) to ([\d.]+) ms "
                          r"\(fastest to slowest\)$", timing, re.M)
        assert found, timing
        median, fastest, slowest = map(float, found.groups())
        assert 0 < fastest <= median <= slowest
    low, high = map(float, re.search(r"^Ratio in each of the 7 turns \(one step of each, in a row\): ([\d.]+) to "
                                     r"([\d.]+)$", timing, re.M).groups())
    assert 0 < low <= high


def last_doubling(recording: dict) -> tuple[int, str]:
    """What the CPU recording of batch_size_effects says about its last doubling: the median's change in % and the
    verdict on the timings of the two sizes."""
    change, verdict = re.search(r"^Last doubling, 2048 -> 4096: median samples/s ([+-]\d+)%;\n(.+)\.$",
                                cell_output(recording, "throughput"), re.M).groups()
    return int(change), verdict


# What each edition of chapter 5 must say (and must not say) for each verdict of the recording it shows.
SAYS = {
    "every timing at 4096 is faster than every timing at 2048": (
        ["still climbing at the last doubling"], ["最后一次翻倍时仍在上升"], ["levels off", "趋于平稳"]),
    "the timings of the two batch sizes overlap": (
        ["no clear rise at the last doubling"], ["最后一次翻倍时没有明显的提高"], ["still climbing", "仍在上升"]),
    "every timing at 4096 is slower than every timing at 2048": (
        ["falls at the last doubling"], ["最后一次翻倍时反而下降"], ["still climbing", "仍在上升"]),
}


def test_chapter_5_says_what_the_throughput_does_at_the_last_doubling():
    """The chapter once said the throughput "levels off" while its own output climbed 21% at the last doubling."""
    change, verdict = last_doubling(recordings.load("batch_size_effects", "cpu"))
    english, chinese, never = SAYS[verdict]
    assert f"rises {change}%" in CHAPTER.read_text(encoding="utf-8") or change <= 0
    text, text_zh = CHAPTER.read_text(encoding="utf-8"), CHAPTER_ZH.read_text(encoding="utf-8")
    for phrase in english:
        assert phrase in text, phrase
    for phrase in chinese:
        assert phrase in text_zh, phrase
    for phrase in never:
        assert phrase not in text and phrase not in text_zh, phrase


def test_chapter_5_quotes_the_fast_paths_median_ratio_and_its_range():
    """Both editions quote the ratio of the medians and the range any two runs give, as the CPU recording prints
    them (the site test checks every number in prose against the recordings; this one checks which numbers)."""
    compare = cell_output(recordings.load("fast_path", "cpu"), "compare")
    ratio = re.search(r"fast path is ([\d.]+)x faster", compare)[1]
    lowest, highest = re.search(r"from ([\d.]+)x to ([\d.]+)x taking any run", compare).groups()
    assert f"{ratio}×" in CHAPTER.read_text(encoding="utf-8")
    assert f"{lowest}× to {highest}×" in CHAPTER.read_text(encoding="utf-8")
    assert f"{ratio} 倍" in CHAPTER_ZH.read_text(encoding="utf-8")
    assert f"{lowest}× 到 {highest}×" in CHAPTER_ZH.read_text(encoding="utf-8")
