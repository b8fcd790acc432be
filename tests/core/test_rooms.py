"""Every room of the engine is on the map.

docs/architecture.md names each module of ``pulse_core``, so whoever comes to
change a rule finds the room that holds it, and each part the conductor asks
is driven on its own by ``tests/core/test_<part>.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(path.stem for path in (ROOT / "pulse_core").glob("_*.py"))
# The vocabulary every room shares: data, not bookkeeping of their own.
SHARED = frozenset({"__init__", "_commands", "_errors", "_events"})
# Languages by region are data, checked with the configuration (test_config.py).
TESTED_ELSEWHERE = frozenset({"_languages"})


def test_the_modules_are_found() -> None:
    assert {"_connection", "_closing", "_outbound", "_retry"} <= set(MODULES)


@pytest.mark.parametrize("module", [name for name in MODULES if name not in SHARED])
def test_every_room_is_named_in_the_architecture_notes(module: str) -> None:
    notes = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"`{module}.py`" in notes


@pytest.mark.parametrize(
    "module", [name for name in MODULES if name not in SHARED | TESTED_ELSEWHERE]
)
def test_every_room_has_tests_of_its_own(module: str) -> None:
    assert (ROOT / "tests" / "core" / f"test{module}.py").is_file()
