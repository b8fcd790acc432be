"""The conformance kit (``python -m pulse_core.conformance``) passes on this
engine, and fails, saying where, on an engine or a vector that is wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulse_core import ConnectionConfig, PulseConnection
from pulse_core.conformance import DEFAULT_SPEC, load, main, replay_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_every_vector_passes_on_this_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    count = len(load(DEFAULT_SPEC / "scenarios")) + len(load(DEFAULT_SPEC / "messages"))
    assert capsys.readouterr().out.splitlines()[-1] == f"{count} of {count} vectors passed"


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pulse_core.conformance", "-k", "close", "-v"],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert listed and all("close" in line for line in listed)


def copy_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec"
    shutil.copytree(DEFAULT_SPEC / "scenarios", spec / "scenarios")
    shutil.copytree(DEFAULT_SPEC / "messages", spec / "messages")
    return spec


def test_a_wrong_vector_fails_with_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_spec(tmp_path)
    path = spec / "scenarios" / "close-delivers-every-final-before-closed.json"
    vector = json.loads(path.read_text())
    for step in vector["steps"]:
        if step.get("state") == "closing":
            step["state"] = "open"
            break
    path.write_text(json.dumps(vector))
    (spec / "messages" / "broken.json").write_text("{not json")
    assert main(["--vectors", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "FAIL scenarios/close-delivers-every-final-before-closed" in out
    assert "state closing, expected open" in out
    assert "FAIL messages/broken" in out and "could not be replayed: JSONDecodeError" in out
    assert ", 2 failed" in out.splitlines()[-1]


def test_a_vector_the_replayer_cannot_read_is_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec"
    (spec / "scenarios").mkdir(parents=True)
    (spec / "scenarios" / "odd.json").write_text(json.dumps({"steps": [{"do": "start"}]}))
    assert main(["--vectors", str(spec)]) == 1
    assert "could not be replayed: KeyError" in capsys.readouterr().out


def test_no_vectors_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--vectors", str(tmp_path)]) == 2
    assert "no vectors found" in capsys.readouterr().err


class ForgetsClosedSockets(PulseConnection):
    """A broken engine: it ignores a socket that closed under it."""

    def connection_closed(self, now: float, *, code: int | None = None, reason: str = "") -> None:
        self._input(now)


def broken_engine(config: ConnectionConfig, jitter: Any) -> PulseConnection:
    return ForgetsClosedSockets(config, jitter=jitter)


def test_a_broken_engine_fails_the_kit_saying_where() -> None:
    failing = {
        name: list(replay_scenario(vector, broken_engine))
        for name, vector in load(DEFAULT_SPEC / "scenarios")
    }
    failing = {name: problems for name, problems in failing.items() if problems}
    assert "server-text-echoing-the-key-is-redacted" in failing
    first = failing["server-text-echoing-the-key-is-redacted"][0]
    assert first.startswith("step 8 (connection_closed at 0.7): events [] != expected")
