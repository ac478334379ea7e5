"""Where recordings live, reading them, and whether each one is current for its snippet. No torch here.

Layout, one set per device class (``environment.DEVICES``)::

    docs/outputs/cpu/<name>.json        the CPU recording of snippets/<name>.py (every snippet has one)
    docs/outputs/cpu/<name>/<cell>-<n>.png   its figures
    docs/outputs/cuda/<name>.json       the CUDA recording, where one was made on a GPU (optional)
    docs/notebooks/<name>.ipynb         a notebook built from the CUDA recording if there is one, else the CPU one

``problems`` is the one definition of what needs re-running; ``python -m tools.record``, ``--check`` and the mkdocs
hook all use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools import environment, snippets

OUTPUTS_DIR = snippets.ROOT / "docs" / "outputs"
REQUIRED = "cpu"                         # the set every snippet must have; CI records it
DEVICES = environment.DEVICES


def path_for(name: str, device: str, outputs_dir: Path = OUTPUTS_DIR) -> Path:
    return Path(outputs_dir) / device / f"{name}.json"


def figure_file(figure: str, outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """A recorded figure path ('outputs/<device>/<name>/<file>.png', relative to docs/) as a file under
    ``outputs_dir``."""
    return Path(outputs_dir) / Path(figure).relative_to("outputs")


def notebooks_dir(outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """Notebooks made from recordings sit beside them: docs/outputs → docs/notebooks."""
    return Path(outputs_dir).parent / "notebooks"


def load(name: str, device: str, outputs_dir: Path = OUTPUTS_DIR) -> dict | None:
    path = path_for(name, device, outputs_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def load_all(name: str, outputs_dir: Path = OUTPUTS_DIR) -> dict[str, dict]:
    """``{device: recording}`` for every recording of the snippet, GPU first."""
    found = {device: load(name, device, outputs_dir) for device in DEVICES}
    return {device: recording for device, recording in found.items() if recording}


def has_cuda(name: str, outputs_dir: Path = OUTPUTS_DIR) -> bool:
    """Whether the snippet has a CUDA recording (gpu-only prose is shown only then)."""
    return path_for(name, "cuda", outputs_dir).exists()


def preferred(name: str, outputs_dir: Path = OUTPUTS_DIR) -> dict | None:
    """The recording a notebook is built from: the CUDA one where it exists, else the CPU one."""
    return next(iter(load_all(name, outputs_dir).values()), None)


def notebook_problem(snippet: Path, recording: dict, outputs_dir: Path = OUTPUTS_DIR) -> str | None:
    from tools import notebooks
    path = notebooks.path_for(snippet.stem, notebooks_dir(outputs_dir))
    if not path.exists():
        return f"no notebook at {path}"
    expected = notebooks.text(notebooks.build(snippet, recording, outputs_dir, load_all(snippet.stem, outputs_dir)))
    if path.read_text(encoding="utf-8") != expected:
        return f"stale: {path.name} does not match the recording"
    return None


def reasons(path: Path, device: str, outputs_dir: Path = OUTPUTS_DIR,
            pins_files: dict[str, Path] | None = None) -> list[str]:
    """Why the ``device`` recording of snippet ``path`` needs re-running; [] when it is current."""
    recording = load(path.stem, device, outputs_dir)
    if recording is None:
        return [f"no recording at {path_for(path.stem, device, outputs_dir)}"]
    found = []
    if recording.get("sha256") != snippets.sha256(path):
        found.append(f"stale: {path.name} changed since it was recorded")
    elif [c["name"] for c in recording["cells"]] != [c.name for c in snippets.cells(path)]:
        found.append("stale: the recording's cells differ from the snippet's")
    differences = environment.key_differences(recording.get("environment", {}), device, pins_files)
    if differences:
        found.append(f"stale: recorded with {'; '.join(differences)} "
                     f"({environment.pins_name(device, pins_files)})")
    missing = [f for c in recording["cells"] for f in c["figures"] if not figure_file(f, outputs_dir).exists()]
    if missing:
        found.append(f"figure missing: {', '.join(missing)}")
    return found


@dataclass(frozen=True)
class Problem:
    name: str
    device: str
    reason: str
    kind: str = "recording"          # or "notebook" (rewritten without running anything) or "orphan"

    @property
    def fix(self) -> str:
        return f"python -m tools.record --device {self.device} {self.name}"

    def __str__(self):
        where = "" if self.device == REQUIRED else (
            f" on a machine with a CUDA GPU, or delete docs/outputs/{self.device}/{self.name}.json to show the "
            "CPU recording alone")
        return f"{self.name} ({self.device}): {self.reason} — run `{self.fix}`{where}"


def problems(snippets_dir: Path = snippets.SNIPPETS_DIR, outputs_dir: Path = OUTPUTS_DIR,
             pins_files: dict[str, Path] | None = None) -> list[Problem]:
    """Every recording that needs re-running: a missing CPU recording; for every recording that exists, a snippet
    whose bytes or cells changed, a library version other than the one pinned for its device class, a missing figure; a notebook that
    does not match; a recording whose snippet is gone."""
    found = []
    paths = snippets.find(snippets_dir)
    for path in paths:
        current = {}
        for device in DEVICES:
            if device != REQUIRED and not path_for(path.stem, device, outputs_dir).exists():
                continue
            why = reasons(path, device, outputs_dir, pins_files)
            found += [Problem(path.stem, device, reason) for reason in why]
            current[device] = not why
        best = next(iter(current))            # the notebook follows the preferred recording
        if current.get(best) and (notebook := notebook_problem(path, load(path.stem, best, outputs_dir),
                                                               outputs_dir)):
            found.append(Problem(path.stem, best, notebook, "notebook"))
    names = {p.stem for p in paths}
    for device in DEVICES:
        for orphan in sorted((Path(outputs_dir) / device).glob("*.json")):
            if orphan.stem not in names:
                found.append(Problem(orphan.stem, device,
                                     f"recording without a snippet (delete {orphan}, its folder and notebook)",
                                     "orphan"))
    for old in sorted(Path(outputs_dir).glob("*.json")):
        found.append(Problem(old.stem, REQUIRED, f"recording in the old layout (delete {old} and its folder)",
                              "orphan"))
    return found
