"""The one list of end-to-end scenarios, run against every transport here.

The Trio adapter (``pulse_trio.open_session``) and the asyncio transport
(``examples/asyncio_transport.py``) each go through
``pulse_trio.emulator.scenarios.SCENARIOS`` on loopback, through the same
runner; a transport that forgets to tell the engine its socket closed, and
one that never calls ``handle_timer``, are failed by the kit, by name and
with what was wrong.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import attrs
import pytest

from examples import asyncio_scenarios, asyncio_transport
from pulse_trio.emulator.scenarios import (
    SCENARIOS,
    Factory,
    Observed,
    Scenario,
    Step,
    Target,
    main,
    run_all,
    run_scenario,
    trio_factory,
)
from tests.command import ROOT

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_trio_adapter_passes(scenario: Scenario) -> None:
    result = run_scenario(scenario, trio_factory)
    assert result.passed, str(result)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_asyncio_transport_passes(scenario: Scenario) -> None:
    result = run_scenario(scenario, asyncio_scenarios.factory)
    assert result.passed, str(result)


class _ForgetsClosedSockets(asyncio_transport.AsyncioSession):
    """A broken transport: when the server's socket goes away, it never tells
    the engine (``connection_closed``), so the engine writes into the void."""

    def _closed(self, link: asyncio_transport._Link, exc: Exception) -> None:
        del link, exc


class _NeverCallsTheTimer(asyncio_transport.AsyncioSession):
    """A broken transport: it never calls ``handle_timer``, so nothing the
    engine schedules happens (liveness probes, retries, the close timeout)."""

    async def _timer(self) -> None:
        await asyncio.Event().wait()


def _broken(session_class: type[asyncio_transport.AsyncioSession]) -> Factory:
    def factory(target: Target) -> Observed:
        original = asyncio_transport.AsyncioSession
        asyncio_transport.AsyncioSession = session_class  # type: ignore[misc]
        try:
            return asyncio.run(asyncio_scenarios.run_steps(target))
        finally:
            asyncio_transport.AsyncioSession = original  # type: ignore[misc]

    return factory


def test_a_transport_that_forgets_a_closed_socket_fails_the_kit() -> None:
    result = run_scenario(BY_NAME["reconnect_replay"], _broken(_ForgetsClosedSockets))
    assert not result.passed
    message = str(result)
    assert message.startswith("FAIL reconnect_replay: "), message
    # The words the dropped socket carried never became finals, and the close
    # could not complete: the kit says both.
    assert "the finals should hold exactly 'one two three four five six seven eight'" in message
    assert "the session should end with no error, not SessionFailedError" in message
    assert "at least 2 connections should open, not 1" in message


def test_a_transport_that_never_calls_the_timer_fails_the_kit() -> None:
    # The scenario's own time limit, shortened: the broken run ends only there.
    silent = attrs.evolve(BY_NAME["silent_server"], timeout=8.0)
    message = str(run_scenario(silent, _broken(_NeverCallsTheTimer)))
    assert message.startswith("FAIL silent_server: "), message
    assert "the session should end with no error, not TimeoutError" in message
    assert "the silent server should be reported as such" in message


def test_target_and_observed_round_trip_through_json() -> None:
    for scenario in SCENARIOS:
        target = scenario.target("ws://127.0.0.1:1")
        assert Target.from_json(target.to_json()) == target
    observed = Observed(
        finals=("a b", "c"),
        error="AuthenticationError",
        error_message="refused",
        connected=2,
        disconnected=1,
        disconnect_reasons=("gone",),
        events=("Connected", "Closed"),
        is_last_missing=False,
    )
    assert Observed.from_json(observed.to_json()) == observed
    assert observed.words == ["a", "b", "c"]


def test_a_factory_that_raises_or_hangs_is_a_failure_not_a_crash() -> None:
    scenario = Scenario(
        name="tiny",
        description="",
        steps=(Step(op="close"),),
        check=lambda _o, _s: [],
        timeout=0.1,
    )

    def raises(_target: Target) -> Observed:
        raise RuntimeError("no transport here")

    def hangs(_target: Target) -> Observed:
        import time  # noqa: PLC0415

        time.sleep(11)
        return Observed()

    assert str(run_scenario(scenario, raises)) == (
        "FAIL tiny: the factory raised RuntimeError: no transport here"
    )
    assert "did not return within 10 s" in str(run_scenario(scenario, hangs))


def test_run_all_picks_scenarios_by_name() -> None:
    results = run_all(trio_factory, ["finalize"])
    assert [r.scenario for r in results] == ["finalize"]


def test_the_command_lists_and_runs_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listed] == list(BY_NAME)
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulse_trio.emulator.scenarios",
            "--factory",
            "examples.asyncio_scenarios:factory",
            "--scenario",
            "finalize",
            "--scenario",
            "graceful_close",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert process.stdout.splitlines() == [
        "PASS finalize",
        "PASS graceful_close",
        "2 passed, 0 failed",
    ]
