"""`pulse transcribe --local` and `pulse emulator` with the speech engine, as a user runs them.

The README's first command transcribes examples/speech.wav with `--local`;
here it must say the sample's words (word error rate at most 10% against
examples/speech.txt). Without the ``local`` extra (its modules hidden in the
subprocess) the command says in one line how to install it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from pulse_trio.emulator._engines import speech_engine_missing, speech_max_sessions
from tests.command import ROOT, Result, command_env, pulse
from tests.speech import REFERENCE, SAMPLE, word_error_rate

INSTALL = "python -m pip install 'pulse-stt[local]'"
#: Runs the command with the speech engine's modules hidden, as if the extra were not installed.
WITHOUT_EXTRA = (
    "import sys; sys.modules['faster_whisper'] = None; "
    "from pulse_trio.cli import main; sys.exit(main(sys.argv[1:]))"
)
needs_extra = pytest.mark.skipif(
    speech_engine_missing() is not None, reason="the local extra is not installed"
)


async def without_extra(*args: str | Path) -> Result:
    """`pulse ARGS` in a subprocess where the speech engine's modules cannot be imported."""
    with trio.fail_after(60):
        process = await trio.run_process(
            [sys.executable, "-c", WITHOUT_EXTRA, *map(str, args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=command_env(None),
            cwd=ROOT,
        )
    return Result(process.returncode, process.stdout.decode(), process.stderr.decode())


@needs_extra
async def test_the_readme_command_reads_the_sample() -> None:
    result = await pulse("transcribe", SAMPLE, "--local", timeout=120)
    assert result.code == 0, result.err
    assert "engine: speech (Whisper tiny.en" in result.err
    assert len(result.lines) == 3  # one final per sentence
    assert word_error_rate(REFERENCE, result.out) <= 0.10, result.out


@needs_extra
async def test_jsonl_carries_word_times_and_interims_from_the_speech_engine() -> None:
    result = await pulse(
        "transcribe", SAMPLE, "--local", "--engine", "whisper", "-f", "jsonl", "--interims",
        "--speed", "4", timeout=120,
    )  # fmt: skip
    assert result.code == 0, result.err
    records = [json.loads(line) for line in result.lines]
    finals = [r for r in records if r.get("type", "final") == "final" and r.get("text")]
    assert len(finals) == 3, records
    assert all(r["words"] and r["start"] < r["end"] for r in finals)
    assert any(r.get("type") == "interim" for r in records), records


async def test_without_the_extra_whisper_says_how_to_install_it() -> None:
    result = await without_extra("transcribe", SAMPLE, "--local", "--engine", "whisper")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert INSTALL in result.err and "Traceback" not in result.err


async def test_without_the_extra_local_reads_token_audio_and_says_how_to_get_speech() -> None:
    result = await without_extra("transcribe", SAMPLE, "--local")
    assert result.code == 0, result.err
    assert result.out == ""
    assert "engine: token audio" in result.err
    assert "no words were recognised" in result.err and INSTALL in result.err


async def test_without_the_extra_the_emulator_says_how_to_install_it() -> None:
    result = await without_extra("emulator", "--engine", "whisper", "--port", "0")
    assert result.code == 2
    assert INSTALL in result.err and "Traceback" not in result.err


async def test_engine_needs_local() -> None:
    result = await pulse("transcribe", SAMPLE, "--engine", "token")
    assert result.code == 2
    assert "--engine chooses the --local emulator's recogniser: add --local" in result.err


async def test_emulator_help_says_how_many_sessions_stay_real_time() -> None:
    result = await pulse("emulator", "--help")
    assert result.code == 0
    help_text = " ".join(result.out.split())
    assert f"default: {speech_max_sessions()} with whisper" in help_text
    assert "--engine {token,whisper}" in help_text
