"""Every run of the suite has one Hypothesis seed, and says what it is.

Without ``--hypothesis-seed`` a seed is drawn here and forced for the run, so
the property and chaos tests explore new examples on every run and yet any
failure can be replayed exactly: the seed is in the report header and in each
failing test's report, as the command that reruns it.

Tests marked ``slow`` (the long property and chaos runs) are skipped unless
selected with ``-m slow`` or ``PULSE_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

SEED_OPTION = "hypothesis_seed"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Runs before Hypothesis' plugin reads the option.
    if getattr(config.option, SEED_OPTION, None) is None:
        setattr(config.option, SEED_OPTION, str(secrets.randbelow(2**32)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("PULSE_SLOW_TESTS"):
        return
    skip = pytest.mark.skip(reason="a long generated run: select it with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis seed: {getattr(config.option, SEED_OPTION)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        seed = getattr(item.config.option, SEED_OPTION)
        report.sections.append(
            (
                "reproduce",
                f"python -m pytest '{item.nodeid}' --hypothesis-seed={seed}",
            )
        )


@pytest.fixture
def pipecat_python() -> str:
    """The interpreter with pipecat-ai installed that ``PULSE_PIPECAT_PYTHON``
    names (``.ci/run`` makes one); tests that need it are skipped without it."""
    python = os.environ.get("PULSE_PIPECAT_PYTHON")
    if not python:
        pytest.skip("set PULSE_PIPECAT_PYTHON to a Python that has pipecat-ai installed")
    if not Path(python).exists():
        pytest.fail(f"PULSE_PIPECAT_PYTHON={python} does not exist")
    return python
