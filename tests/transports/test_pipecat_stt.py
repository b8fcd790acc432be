"""examples/pipecat_stt.py: a Pipecat STT service on pulse's engine, in a pipeline.

Pipecat is not installed next to pulse, so each test runs
``tests/transports/pipecat_driver.py`` as a subprocess with the interpreter
``PULSE_PIPECAT_PYTHON`` names (``.ci/run`` creates one; skipped when unset),
against the emulator on loopback, and checks what reached the end of the
pipeline and what the emulator received. The driver runs this checkout's
``pulse_core`` and examples (``PYTHONPATH``), whatever pulse that interpreter has.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from pulse_trio.emulator import ServerSession
from tests.emulator.test_compat import (
    CLOSE_STREAM,
    FINALIZE,
    TURNS,
    RecordingEmulator,
    token_turn,
)

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("pipecat_driver.py")
FIRST, SECOND = (token_turn(words) for words in TURNS)
WORDS = [" ".join(words) for words in TURNS]


def turn(audio: bytes, *, stop: bool = True) -> list[list[Any]]:
    steps: list[list[Any]] = [["speech_started"], ["audio", audio.hex()]]
    return [*steps, ["speech_stopped"]] if stop else steps


async def drive(
    python: str, emulator: RecordingEmulator, steps: list[list[Any]], **program: Any
) -> dict[str, Any]:
    """Run the driver with ``steps`` against ``emulator``; return its result."""
    program = {"base_url": emulator.url(), "sample_rate": 16000, "steps": steps, **program}
    with trio.fail_after(60):
        process = await trio.run_process(
            [python, str(DRIVER)],
            stdin=json.dumps(program).encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    stdout = process.stdout.decode(errors="replace")
    stderr = process.stderr.decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"driver failed:\n{stdout}\n{stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    assert not result.get("timed_out"), f"the driver timed out: {result}\n{stderr[-4000:]}"
    return result


class CuttingEmulator(RecordingEmulator):
    """The recording emulator; the i-th connection is dropped (no close frame)
    after ``cuts[i]`` bytes of audio. A fault is taken by the first connection
    it is due on, so each is armed only as its connection starts."""

    def __init__(self, cuts: tuple[int, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cuts = list(cuts)

    async def _run(self, ws: WebSocketConnection, session: ServerSession) -> None:
        if self.cuts:
            self.faults.drop(after_bytes=self.cuts.pop(0))
        await super()._run(ws, session)


async def serve_and_drive(
    python: str, steps: list[list[Any]], emulator: RecordingEmulator | None = None, **program: Any
) -> tuple[dict[str, Any], RecordingEmulator]:
    """Serve ``emulator`` while the driver runs ``steps``."""
    emulator = emulator or RecordingEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        result = await drive(python, emulator, steps, **program)
        nursery.cancel_scope.cancel()
    return result, emulator


def of_kind(result: dict[str, Any], kind: str) -> list[Any]:
    return [item[1] for item in result["seen"] if item[0] == kind]


async def test_finals_are_exactly_the_words_with_interims_and_ttfs(pipecat_python: str) -> None:
    steps = [*turn(FIRST), ["wait_finals", 1], *turn(SECOND), ["wait_finals", 2], ["end"]]
    result, emulator = await serve_and_drive(pipecat_python, steps)

    assert of_kind(result, "error") == []
    assert result["seen"] == [
        ["interim", "hello"],
        ["interim", "hello world"],
        ["final", "hello world", True],
        ["interim", "second"],
        ["interim", "second turn"],
        ["final", "second turn", True],
        ["end"],
    ]
    # One TTFS measurement per finalized turn, and the published p99 announced.
    assert len(result["ttfs"]) == 2
    assert result["ttfs_p99_latency"] == 1.59
    assert result["handlers"] == ["connected", "disconnected"]

    (handshake,) = emulator.handshakes_seen
    assert handshake.path == "/waves/v1/stt/live"
    assert handshake.query["language"] == "en"
    assert handshake.query["word_timestamps"] == "true"  # replay alignment
    assert "keywords" not in handshake.query  # omitted when empty
    assert handshake.header("Authorization") == "Bearer test-key"
    assert handshake.header("X-Source") == "pipecat"
    (connection,) = emulator.sessions
    assert connection.texts == [FINALIZE, FINALIZE, CLOSE_STREAM]
    assert b"".join(connection.binary) == FIRST + SECOND
    assert connection.close_code == 1000


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param((len(FIRST) // 2,), id="mid-first-turn"),
        pytest.param((len(FIRST) + len(SECOND) // 2,), id="mid-second-turn"),
        pytest.param((len(FIRST) // 3, len(FIRST) // 3), id="twice"),
    ],
)
async def test_a_dropped_connection_replays_and_loses_no_word(
    pipecat_python: str, cuts: tuple[int, ...]
) -> None:
    steps = [*turn(FIRST), *turn(SECOND), ["wait_finals", 2], ["end"]]
    result, emulator = await serve_and_drive(pipecat_python, steps, CuttingEmulator(cuts))

    assert of_kind(result, "error") == []
    assert of_kind(result, "final") == WORDS
    assert result["seen"][-1] == ["end"]
    assert len(emulator.sessions) == len(cuts) + 1
    assert result["handlers"].count("connected") == len(cuts) + 1
    assert result["handlers"].count("disconnected") == len(cuts) + 1
    # Every finalize owed was asked again on the socket that answered it.
    last = emulator.sessions[-1]
    assert last.texts[-1] == CLOSE_STREAM
    assert last.close_code == 1000


async def test_a_settings_change_mid_turn_finishes_the_turn_first(pipecat_python: str) -> None:
    steps = [
        *turn(FIRST, stop=False),
        ["settings", {"diarize": True}],
        *turn(SECOND),
        ["wait_finals", 2],
        ["end"],
    ]
    result, emulator = await serve_and_drive(pipecat_python, steps)

    assert of_kind(result, "error") == []
    assert of_kind(result, "final") == WORDS
    first, second = emulator.handshakes_seen
    assert first.query["diarize"] == "false"
    assert second.query["diarize"] == "true"
    old, new = emulator.sessions
    # The old connection finished the turn (its final delivered), then closed.
    assert old.texts == [FINALIZE]
    assert b"".join(old.binary) == FIRST
    assert old.close_code == 1000
    assert new.texts == [FINALIZE, CLOSE_STREAM]
    assert b"".join(new.binary) == SECOND


async def test_a_settings_change_pulse_refuses_is_an_error_and_changes_nothing(
    pipecat_python: str,
) -> None:
    steps = [
        *turn(FIRST, stop=False),
        ["settings", {"numerals": "sometimes", "diarize": True}],
        *turn(SECOND),
        ["end"],
    ]
    result, emulator = await serve_and_drive(pipecat_python, steps)

    (error,) = of_kind(result, "error")
    assert "settings not applied" in error
    assert "numerals" in error
    # The session goes on as it was, every word transcribed (the service is
    # still usable: Pipecat gave it the second turn's audio), on one
    # connection that never sent diarize.
    assert " ".join(of_kind(result, "final")).split() == " ".join(WORDS).split()
    (handshake,) = emulator.handshakes_seen
    assert handshake.query["diarize"] == "false"
    assert result["settings"] == {"numerals": "auto", "diarize": False}


async def test_end_frame_sends_close_stream_and_pushes_the_last_final_first(
    pipecat_python: str,
) -> None:
    # The VAD never closed the turn: only close_stream gets its words.
    steps = [*turn(FIRST, stop=False), ["end"]]
    result, emulator = await serve_and_drive(pipecat_python, steps)

    assert of_kind(result, "error") == []
    assert [item for item in result["seen"] if item[0] != "interim"] == [
        ["final", "hello world", False],
        ["end"],
    ]
    (connection,) = emulator.sessions
    assert connection.texts == [CLOSE_STREAM]
    assert connection.close_code == 1000


async def test_cancel_frame_leaves_without_close_stream(pipecat_python: str) -> None:
    steps = [*turn(FIRST, stop=False), ["sleep", 0.5], ["cancel"]]
    result, emulator = await serve_and_drive(pipecat_python, steps)

    assert ["end"] not in result["seen"]
    assert of_kind(result, "final") == []
    (connection,) = emulator.sessions
    assert CLOSE_STREAM not in connection.texts
    assert FINALIZE not in connection.texts


async def test_a_refused_key_is_one_permanent_error_and_its_audio_is_reported(
    pipecat_python: str,
) -> None:
    emulator = RecordingEmulator(api_keys={"another-key"})
    steps = [*turn(FIRST), ["sleep", 0.5], ["end"]]
    result, emulator = await serve_and_drive(pipecat_python, steps, emulator)

    errors = of_kind(result, "error")
    (failed,) = [error for error in errors if "session failed" in error]
    assert "401" in failed
    assert all("test-key" not in error for error in errors)
    # Audio the engine held when the session failed is reported, never lost
    # silently; after that the service is unusable and Pipecat stops giving
    # it audio.
    lost = [re.fullmatch(r".* lost (\d+) bytes of audio .*: session_failed", e) for e in errors]
    assert len(errors) == 1 + sum(1 for match in lost if match)
    assert result["handlers"] == ["connection_error"]
    assert of_kind(result, "final") == []
    assert emulator.sessions == []


CONSTRUCTOR_CHECK = """
import json
from pipecat.transcriptions.language import Language
from examples.pipecat_stt import PulseSTTService

Settings = PulseSTTService.Settings
stt = PulseSTTService(
    api_key="k",
    settings=Settings(language=Language.EN_US, keywords="NVIDIA:2,Pipecat", extra={"eou_timeout_ms": 500}),
)
out = {"query": dict(stt._pulse_settings().query())}
for name, settings in {
    "pulse-2 in Hindi": Settings(model="pulse-2", language=Language.HI),
    "numerals": Settings(numerals="sometimes"),
    "eou_timeout_ms": Settings(extra={"eou_timeout_ms": 5}),
}.items():
    try:
        PulseSTTService(api_key="k", settings=settings)
        out[name] = None
    except ValueError as exc:
        out[name] = str(exc)
print("RESULT " + json.dumps(out))
"""


async def test_the_constructor_takes_pipecat_settings_and_refuses_bad_ones(
    pipecat_python: str,
) -> None:
    with trio.fail_after(60):
        process = await trio.run_process(
            [pipecat_python, "-c", CONSTRUCTOR_CHECK],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    stdout = process.stdout.decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, process.stderr.decode(errors="replace")[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    query = result["query"]
    # Pipecat's Language.EN_US is Pulse's en; extras that are Pulse parameters are sent.
    assert query["language"] == "en"
    assert query["keywords"] == "NVIDIA:2,Pipecat"
    assert query["eou_timeout_ms"] == "500"
    assert query["word_timestamps"] == "true"
    assert query["endpointing"] == "true"  # SmallestSTTService's defaults otherwise
    # Refused in the constructor, before any pipeline or connection.
    assert "English-only" in result["pulse-2 in Hindi"]
    assert "numerals" in result["numerals"]
    assert "eou_timeout_ms" in result["eou_timeout_ms"]


def test_the_service_and_its_driver_compile() -> None:
    # Keeps both honest where Pipecat is not installed.
    for path in (ROOT / "examples" / "pipecat_stt.py", DRIVER):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
