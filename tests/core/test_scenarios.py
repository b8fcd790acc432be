"""Every conversation vector in spec/scenarios/ replays exactly against PulseConnection."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pulse_core.conformance import DEFAULT_SPEC, load, replay_scenario

SCENARIOS = DEFAULT_SPEC / "scenarios"

VECTORS = load(SCENARIOS)
SCHEMA = json.loads((SCENARIOS / "schema.json").read_text())


@pytest.mark.parametrize(("name", "vector"), VECTORS, ids=[name for name, _ in VECTORS])
def test_vector_replays(name: str, vector: dict) -> None:
    problems = list(replay_scenario(vector))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "vector"), VECTORS, ids=[name for name, _ in VECTORS])
def test_vector_follows_schema(name: str, vector: dict) -> None:
    jsonschema.validate(vector, SCHEMA)


def test_at_least_thirty_vectors_cover_every_behaviour() -> None:
    assert len(VECTORS) >= 30
    covered = {number for _, vector in VECTORS for number in vector["behaviours"]}
    assert covered >= set(range(1, 13)), sorted(set(range(1, 13)) - covered)


def test_replayer_reports_a_wrong_expectation() -> None:
    # The replayer itself must be able to fail: corrupt one expectation.
    name, vector = VECTORS[0]
    broken = json.loads(json.dumps(vector))
    for step in broken["steps"]:
        if step.get("commands"):
            step["commands"] = [*step["commands"][1:], {"type": "send_text", "text": "nope"}]
            break
    assert list(replay_scenario(broken)), name
