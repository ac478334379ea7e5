"""Print the options that make `uv pip install` take packages from where `pip install` is configured to (pip's
configuration files and PIP_* variables: index-url, extra-index-url, find-links, constraint, cert), one per line.

.ci/run installs the tests' requirements with uv when it can: the same packages as pip (`--index-strategy
unsafe-best-match` is pip's rule: the best version from every index), about 20 s instead of pip's 90 s, most of
which is unpacking the CUDA build of torch and its libraries (5 GB).

Usage: python .ci/uv_options.py [--cert]   (--cert: print only the certificate bundle pip trusts, or nothing)"""
from __future__ import annotations

import ast
import shlex
import subprocess
import sys

# pip's order for `pip install`: [global], then [install], then the PIP_* variables (":env:"); the later wins.
SECTIONS = ("global", "install", ":env:")
LISTS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}


def settings(config_list: str) -> dict[str, str]:
    """{option: value} in force for `pip install`, from the lines of `pip config list` (`section.option='value'`)."""
    found: dict[tuple[str, str], str] = {}
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        section, dot, option = key.rpartition(".")
        if sep and dot and section in SECTIONS:
            found[section, option] = ast.literal_eval(value) if value[:1] in "'\"" else value
    return {option: value for section in SECTIONS for (where, option), value in found.items() if where == section}


def options(config_list: str) -> list[str]:
    """uv pip install's options for those settings. A value that holds several (pip splits them on white space)
    becomes one option each."""
    chosen = settings(config_list)
    result = ["--index-strategy", "unsafe-best-match"]
    if "index-url" in chosen:
        result += ["--index-url", chosen["index-url"]]
    for option, flag in LISTS.items():
        for value in shlex.split(chosen.get(option, "")):
            result += [flag, value]
    return result


def cert(config_list: str) -> str:
    """The certificate bundle pip is told to trust ('' when none), for uv's SSL_CERT_FILE."""
    return settings(config_list).get("cert", "")


if __name__ == "__main__":
    text = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                          capture_output=True, text=True, check=True).stdout
    print(cert(text) if sys.argv[1:] == ["--cert"] else "\n".join(options(text)))
