""".ci/run installs with uv from the sources pip is configured with (.ci/uv_options.py)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("uv_options", ROOT / ".ci" / "uv_options.py")
uv_options = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uv_options)

# `pip config list` on a machine with a global file, an [install] section and PIP_* variables (pip prints the keys
# sorted, so ':env:' comes first although it wins).
CONFIG_LIST = """\
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/srv/old-wheels'
global.index-url='https://mirror.example/simple'
install.index-url='https://other.example/simple'
freeze.find-links='/ignored'
"""


def test_pip_settings_are_read_in_pips_order_of_precedence():
    assert uv_options.settings(CONFIG_LIST) == {
        "default-timeout": "180", "find-links": "/opt/wheels", "cert": "/etc/ssl/certs/ca-certificates.crt",
        "constraint": "/etc/xdg/pip/constraints.txt", "index-url": "https://other.example/simple",
        "extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple"}


def test_uv_gets_every_source_and_pips_choice_of_versions():
    assert uv_options.options(CONFIG_LIST) == [
        "--index-strategy", "unsafe-best-match", "--index-url", "https://other.example/simple",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels", "--constraint", "/etc/xdg/pip/constraints.txt"]
    assert uv_options.cert(CONFIG_LIST) == "/etc/ssl/certs/ca-certificates.crt"


def test_no_pip_configuration_means_pypi_alone():
    assert uv_options.options("") == ["--index-strategy", "unsafe-best-match"]
    assert uv_options.cert("") == ""


def test_torch_is_imported_from_compiled_bytecode():
    """.ci/run compiles the bytecode as it installs (uv's --compile-bytecode, pip's default): where
    PYTHONDONTWRITEBYTECODE is set, as on CI, every test process would otherwise compile torch again."""
    import importlib.util
    spec = importlib.util.find_spec("torch")
    assert Path(importlib.util.cache_from_source(spec.origin)).is_file()
