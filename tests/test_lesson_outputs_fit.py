"""What the snippets print fits 88 columns, the width their code keeps to, so a chapter shows outputs without
cutting off the column the prose is about. Recorded afresh on the CPU."""
from __future__ import annotations

import pytest

from tools import snippets

WIDTH = 88

# Lines a library prints itself, wider than 88 and not ours to re-lay out: torchinfo's summary table is 90
# columns wide at its default column widths (its "====" rules are the lines over 88). Every other line must fit.
ALLOWED = {
    ("mnist_mlp", "torchinfo"): "torchinfo's own summary table, 90 columns",
    ("cifar_mlp", "exercise-summaries"): "torchinfo's own summary table, 90 columns",
}


def torchinfo_table_line(line: str) -> bool:
    """A rule of torchinfo's table, 90 "=" wide (its header and rows fit 88)."""
    return set(line) == {"="}


@pytest.mark.parametrize("name", [p.stem for p in snippets.find()])
def test_every_printed_line_fits_88_columns(recorded, name):
    rec = recorded(name)
    too_wide = []
    for cell in rec["cells"]:
        for line in cell["stdout"].splitlines():
            if len(line) <= WIDTH:
                continue
            if (name, cell["name"]) in ALLOWED and torchinfo_table_line(line):
                continue
            too_wide.append(f"{name}/{cell['name']}: {len(line)} columns: {line[:60]}...")
    assert not too_wide, "\n".join(too_wide)


def test_the_allowed_lines_are_really_torchinfo_tables(recorded):
    """The allow-list is not a loophole: each entry holds a torchinfo table, and only its lines are wider."""
    for (name, cell), _ in ALLOWED.items():
        output = next(c["stdout"] for c in recorded(name)["cells"] if c["name"] == cell)
        wide = [line for line in output.splitlines() if len(line) > WIDTH]
        assert wide and all(torchinfo_table_line(line) for line in wide), (name, cell)
        assert max(len(line) for line in wide) == 90
