"""Where recordings live, reading them, and whether each one is current for its snippet. No torch here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools import snippets

OUTPUTS_DIR = snippets.ROOT / "docs" / "outputs"
FIX_COMMAND = "python -m tools.record"


def path_for(name: str, outputs_dir: Path = OUTPUTS_DIR) -> Path:
    return Path(outputs_dir) / f"{name}.json"


def figure_file(figure: str, outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """A recorded figure path ('outputs/<name>/<file>.png', relative to docs/) as a file under ``outputs_dir``."""
    return Path(outputs_dir) / Path(figure).relative_to("outputs")


def notebooks_dir(outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """Notebooks made from recordings sit beside them: docs/outputs → docs/notebooks."""
    return Path(outputs_dir).parent / "notebooks"


def notebook_problem(snippet: Path, recording: dict, outputs_dir: Path = OUTPUTS_DIR) -> str | None:
    from tools import notebooks
    path = notebooks.path_for(snippet.stem, notebooks_dir(outputs_dir))
    if not path.exists():
        return f"no notebook at {path}"
    if path.read_text(encoding="utf-8") != notebooks.text(notebooks.build(snippet, recording, outputs_dir)):
        return f"stale: {path.name} does not match the recording"
    return None


def load(name: str, outputs_dir: Path = OUTPUTS_DIR) -> dict | None:
    path = path_for(name, outputs_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@dataclass(frozen=True)
class Problem:
    name: str
    reason: str

    def __str__(self):
        return f"{self.name}: {self.reason} — run `{FIX_COMMAND} {self.name}`"


def problems(snippets_dir: Path = snippets.SNIPPETS_DIR, outputs_dir: Path = OUTPUTS_DIR) -> list[Problem]:
    """Every missing or stale recording: no recording, a snippet whose bytes changed, a missing figure,
    cells that no longer match, or a recording whose snippet is gone."""
    found = []
    paths = snippets.find(snippets_dir)
    for path in paths:
        recording = load(path.stem, outputs_dir)
        if recording is None:
            found.append(Problem(path.stem, f"no recording at {path_for(path.stem, outputs_dir)}"))
        elif recording.get("sha256") != snippets.sha256(path):
            found.append(Problem(path.stem, f"stale: {path.name} changed since it was recorded"))
        elif [c["name"] for c in recording["cells"]] != [c.name for c in snippets.cells(path)]:
            found.append(Problem(path.stem, "stale: the recording's cells differ from the snippet's"))
        else:
            missing = [f for c in recording["cells"] for f in c["figures"]
                       if not figure_file(f, outputs_dir).exists()]
            if missing:
                found.append(Problem(path.stem, f"figure missing: {', '.join(missing)}"))
            elif notebook := notebook_problem(path, recording, outputs_dir):
                found.append(Problem(path.stem, notebook))
    names = {p.stem for p in paths}
    for orphan in sorted(Path(outputs_dir).glob("*.json")):
        if orphan.stem not in names:
            found.append(Problem(orphan.stem, f"recording without a snippet (delete {orphan}, its folder and notebook)"))
    return found
