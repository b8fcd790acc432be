"""The examples and the `pulse emulator` command, run as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import trio

from pulse_core import Transcript
from pulse_trio import open_session
from pulse_trio.emulator.token_audio import encode
from tests.command import closed_port

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, timeout: float = 60, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMALLEST_API_KEY"}
    if key is not None:
        env["SMALLEST_API_KEY"] = key
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_transcribe_file_example_uses_the_emulator_without_a_key() -> None:
    result = run("examples/transcribe_file.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello from pulse, the streaming speech to text client.",
        "every word arrives exactly once.",
    ]
    assert "local emulator" in result.stderr


def test_transcribe_file_example_reports_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not a wave file")
    result = run("examples/transcribe_file.py", str(bad))
    assert result.returncode == 2
    assert "transcribe_file:" in result.stderr and "Traceback" not in result.stderr


def test_transcribe_file_example_reports_an_unreachable_server_in_one_line() -> None:
    """The network is down (nothing listens at the URL): the session fails,
    and the example says so in one line and exits 1, without a traceback (an
    ExceptionGroup, before)."""
    port = closed_port()
    result = run(
        "examples/transcribe_file.py",
        "--base-url",
        f"ws://127.0.0.1:{port}",
        key="sk_example_key_0123456789",
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("transcribe_file: "), result.stderr
    assert "Connection refused" in lines[0]
    assert "sk_example_key" not in result.stderr
    assert result.stdout == ""


def test_drive_engine_example_runs_a_whole_session() -> None:
    result = run("examples/drive_engine.py")
    assert result.returncode == 0, result.stderr
    assert "final (turn 1" in result.stdout and "final (turn 2" in result.stdout
    assert "sk_example" not in result.stdout  # the key is never printed


def test_pulse_emulator_command_serves_a_session() -> None:
    async def scenario() -> None:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "pulse_trio", "emulator", "--engine", "token", "--port", "0"],
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            assert process.stderr is not None
            banner = b""
            with trio.fail_after(20):
                while b"listening on" not in banner:
                    banner += await process.stderr.receive_some(1024)
            url = re.search(rb"(ws://[0-9.]+:\d+)", banner).group(1).decode()  # type: ignore[union-attr]
            finals: list[str] = []
            with trio.fail_after(20):
                async with open_session("sk_any", base_url=url) as session:
                    session.event_handler("on_final_transcript")(
                        lambda event: (
                            finals.append(event.text)
                            if isinstance(event, Transcript) and event.text
                            else None
                        )
                    )
                    await session.send_audio(
                        encode(["served", "from", "a", "subprocess"], trail=0.2)
                    )
            assert finals == ["served from a subprocess"]
        finally:
            process.terminate()
            await process.wait()

    trio.run(scenario)


def test_pulse_emulator_rejects_a_bad_port() -> None:
    result = run("-m", "pulse_trio", "emulator", "--port", "99999")
    assert result.returncode == 2
    assert "not a port" in result.stderr
