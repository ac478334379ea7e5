"""The README's install facts: the files it names exist, the pins agree, and the minimum Python is what the pins need."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)")


def pins(name: str) -> dict[str, str]:
    """``{distribution: version}`` for a requirements file and the files it includes with ``-r``."""
    found = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if include := re.match(r"^\s*-r\s+(\S+)", line):
            found.update(pins(include[1]))
        elif match := PIN.match(line):
            found[match[1].lower()] = match[2]
    return found


def minimum_python(requirements: str) -> tuple[int, int]:
    """The highest ``Requires-Python: >=3.N`` among the pinned distributions (as installed here at their pins)."""
    lowest = (3, 0)
    for name, version in pins(requirements).items():
        try:
            installed = metadata.metadata(name)
        except metadata.PackageNotFoundError:
            continue
        if installed["Version"] != version:
            continue
        if bound := re.search(r">=\s*(\d+)\.(\d+)", installed.get("Requires-Python") or ""):
            lowest = max(lowest, (int(bound[1]), int(bound[2])))
    return lowest


def test_every_requirements_file_the_readme_installs_exists():
    named = set(re.findall(r"-r\s+(\S+)", README))
    assert {"requirements.txt", "requirements-docs.txt"} <= named
    for name in named:
        assert (ROOT / name).is_file(), name
        pins(name)  # its includes exist too


def test_a_library_pinned_twice_has_one_version():
    """Within what one environment installs: the CPU set's files (requirements-gpu.txt is the CUDA set's own)."""
    seen: dict[str, tuple[str, str]] = {}
    for path in sorted(set(ROOT.glob("requirements*.txt")) - {ROOT / "requirements-gpu.txt"}):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := PIN.match(line):
                name, version = match[1].lower(), match[2]
                assert seen.setdefault(name, (version, path.name))[0] == version, \
                    f"{name}: {version} in {path.name}, {seen[name][0]} in {seen[name][1]}"


def test_the_tests_install_what_a_reader_installs():
    dev = pins("requirements-dev.txt")
    for name in ("requirements.txt", "requirements-docs.txt"):
        assert pins(name).items() <= dev.items(), name


def test_readme_states_the_minimum_python_the_pins_require():
    need = max(minimum_python("requirements.txt"), minimum_python("requirements-docs.txt"))
    claims = {tuple(map(int, m)) for m in re.findall(r"Python (\d+)\.(\d+)(?:\+| or newer)", README)}
    assert claims == {need}, f"the pins need Python {need[0]}.{need[1]}; the README says {sorted(claims)}"


def test_each_device_class_pins_every_library_that_decides_a_recording():
    from tools import environment
    for device, path in environment.PINS_FILES.items():
        found = environment.pinned(path)
        assert set(environment.LIBRARIES) <= set(found), (device, path.name)
        assert all(environment.public(v) == v for v in found.values()), path.name   # public versions only
    gpu = environment.pinned(environment.PINS_FILES["cuda"])
    assert gpu["nbformat"] == pins("requirements.txt")["nbformat"]      # the recorder writes the same notebooks
