"""pulse_trio is an adapter with two wings, and the imports keep them apart.

* The adapter, at the top: ``pulse_trio/__init__.py``, ``_session.py``,
  ``_connector.py``, ``_errors.py``, ``_transport_errors.py``. It imports
  neither wing.
* ``pulse_trio/cli/``: the ``pulse`` command. It may use the adapter and the
  emulator's public package (only when used: the emulator loads slowly),
  never the emulator's private modules.
* ``pulse_trio/emulator/``: the local server, its protocol engine and token
  audio. It does not import the command line.
* Shared private helpers at the top (``_g711.py``, ``_websocket.py``) serve the
  adapter or both wings, and import neither wing.
* ``__main__.py`` is the entry point: it alone, outside the wing, runs the
  command line.

The rules are read from the source (every import statement, also inside
functions), so they hold whatever is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pulse_trio"
CLI = "pulse_trio.cli"
EMULATOR = "pulse_trio.emulator"
ADAPTER = frozenset(
    {
        "pulse_trio",
        "pulse_trio._session",
        "pulse_trio._connector",
        "pulse_trio._errors",
        "pulse_trio._log_redaction",
        "pulse_trio._transport_errors",
    }
)
SHARED = frozenset({"pulse_trio._g711", "pulse_trio._websocket"})
ENTRY_POINT = "pulse_trio.__main__"
#: The imports by name that are allowed, and why: the scenario runner loads the
#: factory its user names (``--factory package.module:function``), which is the
#: user's code, not one of pulse_trio's modules.
DYNAMIC_IMPORTS = {"pulse_trio.emulator.scenarios": ["importlib.import_module(module)"]}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, module: str, package: bool) -> list[tuple[str, bool]]:
    """Every module ``source`` imports, absolute, and whether the import is at
    module level (not inside a function). ``from X import y`` counts as
    importing ``X`` and ``X.y`` (``y`` may be a submodule)."""
    tree = ast.parse(source)
    deferred = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    here = module.split(".") if package else module.split(".")[:-1]
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        top = id(node) not in deferred
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                source_module = f"{base}.{node.module}" if node.module else base
            else:
                source_module = node.module or ""
            found.append((source_module, top))
            found.extend((f"{source_module}.{alias.name}", top) for alias in node.names)
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def private_part(name: str, package: str) -> bool:
    """``name`` is a private module (or a name in one) inside ``package``."""
    rest = name[len(package) + 1 :].split(".") if name != package else []
    return bool(rest) and rest[0].startswith("_")


def broken_rules(module: str, found: list[tuple[str, bool]]) -> list[str]:
    """The layout rules that ``module``'s imports break."""
    broken = []
    for name, top in found:
        if not under(name, "pulse_trio"):
            continue
        if under(name, CLI) and not under(module, CLI) and module != ENTRY_POINT:
            broken.append(f"{module} imports {name}: only the command line itself may")
        if module in ADAPTER and under(name, EMULATOR):
            broken.append(f"{module} imports {name}: the adapter does not import the emulator")
        if module in SHARED and (under(name, CLI) or under(name, EMULATOR)):
            broken.append(f"{module} imports {name}: a shared helper imports neither wing")
        if under(module, CLI) and under(name, EMULATOR):
            if private_part(name, EMULATOR):
                broken.append(f"{module} imports {name}: the emulator's private insides")
            elif top:
                broken.append(
                    f"{module} imports {name} at module level: the command loads the emulator "
                    "only when it runs it"
                )
    return broken


def test_every_module_has_a_place() -> None:
    for module in MODULES:
        placed = (
            module in ADAPTER
            or module in SHARED
            or module == ENTRY_POINT
            or under(module, CLI)
            or under(module, EMULATOR)
        )
        assert placed, (
            f"{module} is in no wing: add it to the adapter, a wing or the shared helpers"
        )
    assert set(ADAPTER | SHARED | {ENTRY_POINT}) <= set(MODULES), "a module named here has moved"
    assert CLI in MODULES and EMULATOR in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_keep_the_wings_apart(module: str) -> None:
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    broken = broken_rules(module, imports(source, module, is_package(path)))
    assert not broken, "\n".join(broken)
    tree = ast.parse(source)
    dynamic = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", ""))
        in ("__import__", "import_module")
    ]
    allowed = DYNAMIC_IMPORTS.get(module, [])
    assert [call for call in dynamic if call not in allowed] == [], (
        f"{module} imports by name at run time, out of these rules' sight"
    )


@pytest.mark.parametrize(
    "module", sorted(name for name, path in MODULES.items() if is_package(path))
)
def test_every_package_says_what_it_exports(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert "__all__" in names, f"{module} has no __all__"


# -- the rules themselves, on imports that break them -----------------------------------------


@pytest.mark.parametrize(
    ("module", "package", "source", "broken"),
    [
        ("pulse_trio._session", False, "from .cli import main", "only the command line"),
        ("pulse_trio", True, "from . import cli", "only the command line"),
        ("pulse_trio._connector", False, "import pulse_trio.emulator", "does not import the em"),
        ("pulse_trio._errors", False, "from .emulator import Emulator", "does not import the em"),
        ("pulse_trio.emulator._server", False, "from ..cli import main", "only the command line"),
        ("pulse_trio.emulator", True, "from pulse_trio.cli._main import main", "only the command"),
        ("pulse_trio._g711", False, "from .emulator import token_audio", "neither wing"),
        ("pulse_trio.cli._main", False, "def f():\n    from .._session import Session\n", ""),
        (
            "pulse_trio.cli._main",
            False,
            "def f():\n    from pulse_trio.emulator._server import Emulator\n",
            "private insides",
        ),
        (
            "pulse_trio.cli._main",
            False,
            "def f():\n    from ..emulator import _protocol\n",
            "private insides",
        ),
        ("pulse_trio.cli._main", False, "from pulse_trio.emulator import Emulator", "module level"),
        ("pulse_trio.cli._main", False, "def f():\n    from pulse_trio.emulator import X\n", ""),
        (
            "pulse_trio.cli._main",
            False,
            "def f():\n    from pulse_trio.emulator.token_audio import encode\n",
            "",
        ),
        ("pulse_trio.__main__", False, "from .cli import main", ""),
    ],
)
def test_the_rules_see_a_forbidden_import(
    module: str, package: bool, source: str, broken: str
) -> None:
    found = broken_rules(module, imports(source, module, package))
    if broken:
        assert found and all(broken in message for message in found), found
    else:
        assert found == []
