"""The one list of end-to-end scenarios, run through the Pipecat service.

``examples/pipecat_scenarios.py`` is the factory: each scenario's steps become
Pipecat frames for ``PulseSTTService`` (examples/pipecat_stt.py) in the
interpreter ``PULSE_PIPECAT_PYTHON`` names (``.ci/run`` creates one; skipped
when unset), and what reached the end of the pipeline is checked by the same
runner and checks as the Trio adapter and the asyncio transport.

Every scenario's steps are expressed through frames today (``finalize`` as
``VADUserStoppedSpeakingFrame``, the one way a Pipecat pipeline ends a turn).
A step the factory has no frame for makes its scenario a skip that names it,
never a silent pass.
"""

from __future__ import annotations

import pytest

from examples import pipecat_scenarios
from pulse_trio.emulator.scenarios import SCENARIOS, Scenario, run_scenario

#: The steps the factory turns into frames.
EXPRESSED = frozenset(
    {"audio", "speech_stopped", "finalize", "update_settings", "wait", "wait_connected", "close"}
)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_pipecat_service_passes(scenario: Scenario, pipecat_python: str) -> None:
    missing = sorted({step.op for step in scenario.steps} - EXPRESSED)
    if missing:
        pytest.skip(f"no Pipecat frame expresses the step(s) {', '.join(missing)}")
    result = run_scenario(scenario, pipecat_scenarios.factory)
    assert result.passed, str(result)
