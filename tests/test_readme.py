"""Every code block in README.md, checked: what the README shows is what happens.

* ``sh`` blocks: each `pulse` (or `python -m pulse_trio`) command is parsed by
  the command's own parser, so every option shown exists and takes the value
  shown; other commands are the few the README is known to show; the quick
  start's `pulse transcribe examples/hello.wav --local` runs for real.
* ``python`` blocks run: the Trio example against the emulator over in-memory
  streams (it prints every line a user would see), token audio is decoded
  back, and the engine walk-through runs with a made-up clock and frame.
* the ``text`` block is the emulator's log at -v and -vv: each line must be in
  the real log of the same run, in order, once times and ports are set aside.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import pulse_trio
from pulse_trio import _session
from pulse_trio.cli._args import _parser
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import TokenDecoder
from tests.command import ROOT, command_env
from tests.speech import REFERENCE, word_error_rate

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS: list[tuple[str, str]] = re.findall(r"^```(\w*)\n(.*?)^```$", README, re.M | re.S)
HELLO = ROOT / "examples" / "hello.wav"
HELLO_LINES = [
    "hello from pulse, the streaming speech to text client.",
    "every word arrives exactly once.",
]
#: Commands other than pulse the README shows, as they start.
OTHER_COMMANDS = (
    "python -m pip install ",
    "python -m pytest",
    "arecord ",
    "python -m pulse_core.conformance",
)


def blocks(language: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == language]


def test_every_block_is_one_of_the_kinds_checked_here() -> None:
    assert {kind for kind, _ in BLOCKS} == {"sh", "python", "text"}
    assert len(blocks("python")) == 3 and len(blocks("text")) == 1


def shell_commands() -> list[str]:
    commands = []
    for body in blocks("sh"):
        for line in body.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            commands += [part.strip() for part in re.split(r"&&|\|", command) if part.strip()]
    return commands


def test_every_pulse_command_shown_parses() -> None:
    parser = _parser()
    pulses = 0
    for command in shell_commands():
        argv = shlex.split(command)
        if argv[0] == "pulse" or argv[:3] == ["python", "-m", "pulse_trio"]:
            args = argv[1:] if argv[0] == "pulse" else argv[3:]
            parser.parse_args(args)  # exits (SystemExit) on an option that does not exist
            pulses += 1
        else:
            assert command.startswith(OTHER_COMMANDS), command
    assert pulses >= 9


def test_the_conformance_command_shown_passes() -> None:
    shown = [c for c in shell_commands() if c.startswith("python -m pulse_core.conformance")]
    assert shown
    for command in shown:
        process = subprocess.run(
            [sys.executable, *shlex.split(command)[1:]],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert process.returncode == 0, process.stdout + process.stderr
        assert process.stdout.rstrip().endswith("vectors passed"), process.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("faster_whisper") is None,
    reason="the local extra is not installed (.ci/run installs it)",
)
def test_the_quick_start_transcribes_the_speech_sample() -> None:
    """The first command, as shown, reads the sample's words (Whisper tiny.en
    quality: at most 10% word error rate)."""
    command = "pulse transcribe examples/speech.wav --local"
    assert command in shell_commands()
    process = subprocess.run(
        [sys.executable, "-m", "pulse_trio", *shlex.split(command)[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=command_env(None),
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert word_error_rate(REFERENCE, process.stdout) <= 0.10, process.stdout


def test_the_trio_example_prints_each_final_once_and_no_blank_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = [body for body in blocks("python") if "open_session" in body]
    emulator = Emulator()

    def open_session(*args: Any, **kwargs: Any) -> Any:
        # The README's call, reaching the emulator in memory instead of the service.
        return _session.open_session(
            "sk_readme", *args, connector=emulator.memory_connector(), **kwargs
        )

    monkeypatch.setattr(pulse_trio, "open_session", open_session)
    with wave.open(str(HELLO), "rb") as file:
        audio = file.readframes(file.getnframes())
    step = 3200  # 0.1 s

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(audio), step):
            yield audio[offset : offset + step]

    namespace: dict[str, Any] = {
        "chunks": chunks(),
        "vad_says_the_speaker_stopped": lambda chunk: len(chunk) < step,  # the last one
    }
    exec(compile(code, "README.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(HELLO_LINES), lines
    for line, text in zip(lines, HELLO_LINES, strict=True):
        assert line.startswith(text + " "), lines
    assert lines[0].endswith(" None")  # the service's own final: no latency
    assert float(lines[1].rpartition(" ")[2]) >= 0  # it answers the finalize


def test_the_token_audio_example_is_read_back() -> None:
    (code,) = [body for body in blocks("python") if "token_audio import" in body]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    decoder = TokenDecoder("mulaw", 8000)
    words = decoder.feed(namespace["audio"]) + decoder.end_word()
    assert [word.word for word in words] == ["hello", "world"]


def test_the_engine_walk_through_runs() -> None:
    (code,) = [body for body in blocks("python") if "PulseConnection(" in body]
    final = {"type": "transcription", "transcript": "hi", "is_final": True, "from_finalize": True}
    namespace: dict[str, Any] = {
        "key": "sk_readme_example",
        "now": 1.0,
        "pcm_chunk": bytes(640),
        "frame": json.dumps(final),
    }
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["conn"].summary().finals == 1


def normal(line: str) -> str:
    """A log line with its time and ports set aside."""
    line = re.sub(r"^\d\d:\d\d:\d\d ", "T ", line)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", line)


def in_order(shown: list[str], real: list[str]) -> None:
    """Each line of ``shown`` (but ``...``, commands and ^C) is in ``real``, in order."""
    at = 0
    for line in shown:
        if line == "..." or line.startswith(("$ ", "^C")):
            continue
        wanted = normal(line)
        rest = [normal(other) for other in real[at:]]
        assert wanted in rest, (line, real[at:])
        at += rest.index(wanted) + 1


def test_the_emulator_log_shown_is_the_real_one(tmp_path: Path) -> None:
    (log,) = blocks("text")
    shown_v, _, shown_vv = log.partition("$ pulse emulator -vv --engine token\n")
    assert shown_v.startswith("$ pulse emulator -v --engine token\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "pulse_trio", "emulator", "--port", "0", "-vv", "--engine", "token"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=command_env(None),
    )
    try:
        assert server.stderr is not None
        banner = server.stderr.readline()
        url = re.search(r"ws://127\.0\.0\.1:\d+", banner)
        assert url, banner
        client = subprocess.run(
            [sys.executable, "-m", "pulse_trio", "transcribe", str(HELLO), "--base-url", url[0]],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=command_env(None),
            timeout=30,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
        real = [banner.rstrip("\n"), *server.stderr.read().splitlines()]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        if server.stderr is not None:
            server.stderr.close()
    in_order(shown_vv.splitlines(), real)
    # At -v the same, without the DEBUG lines.
    in_order(shown_v.splitlines(), [line for line in real if " DEBUG " not in line])
    assert not any(" DEBUG " in line for line in shown_v.splitlines())
