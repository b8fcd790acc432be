"""pulse_core is sans-IO: no sockets, clocks, randomness, threads or event loops."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pulse_core"
FORBIDDEN = frozenset(
    {
        "trio",
        "asyncio",
        "socket",
        "time",
        "random",
        "threading",
        "ssl",
        "select",
        "selectors",
        "anyio",
        "websockets",
        "trio_websocket",
    }
)
# Modules a dependency (attrs: attr._compat imports threading, which imports time)
# loads; pulse_core itself must still not import them.
LOADED_BY_DEPENDENCIES = frozenset({"threading", "time"})


def imported_modules(source: str) -> set[str]:
    """Absolute module names imported anywhere in ``source`` (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def dynamic_imports(source: str) -> list[str]:
    """Calls that import by name at run time: ``__import__(...)``, ``import_module(...)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in {"__import__", "import_module"}:
                found.append(ast.unparse(node))
    return found


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def test_the_import_walker_sees_every_kind_of_import() -> None:
    source = (
        "import time\n"
        "import os.path as p\n"
        "from asyncio import sleep\n"
        "from . import _local\n"
        "def f():\n"
        "    import socket\n"
        "    from trio import lowlevel\n"
    )
    found = {top(name) for name in imported_modules(source)}
    assert found == {"time", "os", "asyncio", "socket", "trio"}
    assert dynamic_imports("importlib.import_module('ssl')\n__import__('time')") == [
        "importlib.import_module('ssl')",
        "__import__('time')",
    ]


def test_package_sources_are_found() -> None:
    files = sorted(path.name for path in PACKAGE.glob("*.py"))
    for expected in ("__init__.py", "_audio.py", "_config.py", "_connection.py", "_settings.py"):
        assert expected in files


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_no_module_imports_io(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    bad = sorted(name for name in imported_modules(source) if top(name) in FORBIDDEN)
    assert bad == [], f"{path.name} imports {bad}"
    assert dynamic_imports(source) == [], f"{path.name} imports by name at run time"
    assert "importlib" not in {top(name) for name in imported_modules(source)}


def run_fresh(script: str) -> list[str]:
    """Run ``script`` in a fresh interpreter that skips site hooks (``-S``).

    The interpreter itself loads ``time`` while starting (zipimport), so the
    scripts compare against what is loaded before their imports.
    """
    # Where this interpreter finds the dependencies (a virtual environment
    # made with --system-site-packages finds them outside its own purelib).
    found = [entry for entry in sys.path if entry and Path(entry).is_dir()]
    paths = dict.fromkeys(
        [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *found]
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["file"] == str(PACKAGE / "__init__.py")
    return payload["loaded"]


PRELUDE = f"""
import json, sys
FORBIDDEN = {sorted(FORBIDDEN)!r}
def forbidden():
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
"""


def test_importing_pulse_core_itself_loads_nothing_forbidden() -> None:
    # Load the dependencies first, then forget every forbidden module they
    # pulled in: anything forbidden present afterwards was imported by pulse_core.
    script = PRELUDE + (
        "import attrs, cattrs\n"
        "for name in forbidden():\n"
        "    del sys.modules[name]\n"
        "import pulse_core\n"
        "print(json.dumps({'file': pulse_core.__file__, 'loaded': forbidden()}))\n"
    )
    assert run_fresh(script) == []


def test_importing_pulse_core_loads_no_network_loop_or_random_module() -> None:
    script = PRELUDE + (
        "before = set(forbidden())\n"
        "import pulse_core\n"
        "print(json.dumps({'file': pulse_core.__file__,"
        " 'loaded': sorted(set(forbidden()) - before)}))\n"
    )
    loaded = run_fresh(script)
    assert [name for name in loaded if top(name) not in LOADED_BY_DEPENDENCIES] == []
