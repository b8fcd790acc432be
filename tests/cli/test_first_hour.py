"""The first hour with the `pulse` command: what a new user runs into.

Each test drives the real command in a subprocess: `pulse emulator` failing to
listen, what it and `pulse transcribe` log at -v and -vv, a loopback server
without a key, voice activity however fast a file is sent, the report of
dropped audio, the help and the --stats table, and how little `--help` loads.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pulse_trio.cli._main import _listen_error
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import encode, silence
from tests.cli.test_cli import call, concurrently, riff
from tests.command import ROOT, closed_port, command_env, pulse

KEY = "sk_first_hour_key_0123456789"


# -- pulse emulator ----------------------------------------------------------------------


async def test_emulator_bind_errors_are_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use, elsewhere = await concurrently(
            call("emulator", "--port", str(port)),
            # TEST-NET-1 (RFC 5737): never an address of this machine.
            call("emulator", "--port", "0", "--host", "192.0.2.1"),
        )
    for result, expected in [
        (in_use, f"cannot listen on 127.0.0.1:{port}: the port is in use"),
        (elsewhere, "192.0.2.1 is not an address of this machine (--host 127.0.0.1"),
    ]:
        assert result.code == 2, result.err
        assert result.err.startswith("pulse emulator: cannot listen on "), result.err
        assert expected in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1, result.err


def test_a_host_name_that_does_not_resolve_is_named() -> None:
    # In process: a real lookup would ask the network's name server.
    args = argparse.Namespace(host="no-such-host.invalid", port=8765)
    message = _listen_error(args, socket.gaierror(-2, "Name or service not known"))
    assert message == (
        "cannot listen on no-such-host.invalid:8765: no-such-host.invalid is not a host name "
        "or address that resolves"
    )


@pytest.fixture(scope="module")
def emulators() -> Iterator[dict[str, tuple[str, subprocess.Popen[str]]]]:
    """`pulse emulator` at -v and at -vv: its URL and process, by option."""
    started = {
        option: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pulse_trio",
                "emulator",
                "--port",
                "0",
                "--engine",
                "token",
                option,
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=command_env(None),
        )
        for option in ("-v", "-vv")
    }
    try:
        found = {}
        for option, process in started.items():
            assert process.stderr is not None
            banner = process.stderr.readline()
            match = re.search(r"(ws://127\.0\.0\.1:\d+)", banner)
            assert match, banner
            found[option] = (match[1], process)
        yield found
    finally:
        for process in started.values():
            process.terminate()
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()


def stop(process: subprocess.Popen[str]) -> str:
    """Ctrl-C the emulator, and what it logged."""
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)
    assert process.stderr is not None
    return process.stderr.read()  # with what the banner's readline buffered


async def test_a_loopback_server_needs_no_key_and_the_emulator_logs_at_v_and_vv(
    tmp_path: Path, emulators: dict[str, tuple[str, subprocess.Popen[str]]]
) -> None:
    path = tmp_path / "hello.wav"
    path.write_bytes(riff(encode("hello world", trail=1.0) + encode("again", trail=0.3)))
    results = await concurrently(
        *(call("transcribe", path, "--base-url", url) for url, _ in emulators.values())
    )
    for result in results:
        assert (result.code, result.lines) == (0, ["hello world", "again"]), result.err
        assert "no API key set: sending a placeholder key to ws://127.0.0.1:" in result.err
    info = stop(emulators["-v"][1])
    debug = stop(emulators["-vv"][1])
    accepted = (
        r"\d\d:\d\d:\d\d INFO emulator-1: accepted /waves/v1/stt/live from 127\.0\.0\.1:\d+ "
        r"\(language en, linear16 16000 Hz, word_timestamps\)"
    )
    ended = (
        r"\d\d:\d\d:\d\d INFO emulator-1: ended, closed 1000.*, after 1\.70 s of audio "
        r"\(54400 bytes\)"
    )
    for (url, _), log in zip(emulators.values(), (info, debug), strict=True):
        # The banner's second line says how to reach it, and that no key is needed.
        hint = (
            f"any API key is accepted, and none is needed: pulse transcribe FILE --base-url {url}"
        )
        assert log.startswith(f"  {hint}\n"), log
        assert re.search(accepted, log), log
        assert re.search(ended, log), (ended, log)
        assert "sk_local_emulator" not in log  # headers are never logged
    assert "DEBUG" not in info
    for line in [
        "DEBUG emulator-1: sent transcription (interim) 'hello'",
        "DEBUG emulator-1: sent transcription (final) 'hello world'",
        "DEBUG emulator-1: audio received up to 1.",
        "DEBUG emulator-1: received finalize",
        "DEBUG emulator-1: sent transcription (final, from_finalize) 'again'",
        "DEBUG emulator-1: received close_stream",
        "DEBUG emulator-1: sent transcription (final, is_last) ''",
        "DEBUG emulator-1: closing with 1000 stream closed",
    ]:
        assert line in debug, (line, debug)


# -- pulse transcribe: its debug log, a key it needs -------------------------------------


async def test_debug_log_of_a_session_with_a_reconnect_and_its_replay(tmp_path: Path) -> None:
    path = tmp_path / "talk.wav"
    path.write_bytes(riff(encode("one two three", trail=1.0) + encode("four five", trail=0.5)))
    emulator = Emulator(api_keys={KEY})
    emulator.faults.drop(after_bytes=48_000)  # after the first turn's final
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        url = emulator.url()
        debug, keyless = await concurrently(
            call("transcribe", path, "--base-url", url, "-vv", env={"SMALLEST_API_KEY": KEY}),
            call("transcribe", path, "--base-url", url),
        )
        nursery.cancel_scope.cancel()
    assert (debug.code, debug.lines) == (0, ["one two three", "four five"]), debug.err
    err = debug.err
    assert KEY not in err
    expected = [
        r"\[info\] connecting \(attempt 1\) to ws://127\.0\.0\.1:\d+/waves/v1/stt/live\?model=pulse",
        r"\[info\] connected \(connection 1\)",
        r"\[debug\] received transcription\n",
        r"\[debug\] received transcription \(is_final\)",
        r"\[info\] disconnected \(code \d+, closed by the server\); connecting again",
        r"\[info\] reconnecting in [\d.]+ s \(attempt 2\)",
        r"\[info\] connecting \(attempt 2\) to ws://",
        r"\[debug\] replaying \d+ bytes of audio \([\d.]+ s from session time 0\.\d\d s\) and "
        r"\d finalize\(s\)",
        r"\[debug\] sent \{\"type\":\"finalize\"\}",
        r"\[debug\] sent \{\"type\":\"close_stream\"\}",
        r"\[debug\] received transcription \(is_final, from_finalize\)",
        r"\[debug\] received transcription \(is_final, is_last\)",
        r"\[debug\] closing connection 2: 1000 session closed",
        r"\[info\] closed\n",
    ]
    at = 0
    for pattern in expected:
        found = re.compile(pattern).search(err, at)
        assert found, (pattern, err[at:])
        at = found.end()
    # A server on this machine that wants a key: the refusal says none was set.
    assert keyless.code == 3, keyless.err
    assert "the API key was refused (HTTP 401" in keyless.err
    assert "check SMALLEST_API_KEY (none was set, so a placeholder was sent)" in keyless.err


# -- pulse transcribe: voice activity, dropped audio, help, stats -----------------------


async def test_voice_activity_is_the_same_sent_fast_or_in_real_time(tmp_path: Path) -> None:
    # A 0.4 s word 0.1 s after a short one, and pauses on both sides of 200 ms.
    audio = encode(["a", "x" * 20], gap=0.1, trail=0.3) + encode(["b", "c"], gap=0.25, trail=1.0)
    path = tmp_path / "vad.wav"
    path.write_bytes(riff(audio))
    runs = await concurrently(
        *(
            call(
                "transcribe",
                path,
                "--local",
                "--engine",
                "token",
                "-f",
                "jsonl",
                "--vad-events",
                *pace,
            )
            for pace in ([], ["--realtime"], ["--speed", "3"])
        )
    )
    events = []
    for run in runs:
        assert run.code == 0, run.err
        events.append(
            [
                (o["type"], o["timestamp"])
                for o in map(json.loads, run.lines)
                if o["type"] != "final"
            ]
        )
    assert events[0] == [
        ("speech_started", 0.0),
        ("speech_ended", 0.52),
        ("speech_started", 0.82),
        ("speech_ended", 0.84),
        ("speech_started", 1.09),
        ("speech_ended", 1.11),
    ]
    assert events[1] == events[2] == events[0]


async def test_dropped_audio_notices_add_up_to_what_stats_reports(tmp_path: Path) -> None:
    # Longer than the 30 s kept for replay, against a service that never answers.
    path = tmp_path / "long.wav"
    path.write_bytes(riff(encode("hello", trail=1.0) + silence(39.0)))
    result = await pulse(
        "transcribe",
        path,
        "--base-url",
        f"ws://127.0.0.1:{closed_port()}",
        "--reconnect-attempts",
        "2",
        "--stats",
        env={"SMALLEST_API_KEY": KEY},
    )
    assert result.code == 4, result.err
    notices = [
        float(seconds)
        for seconds in re.findall(r"pulse: ([\d.]+) s of audio \(.*\) will not be", result.err)
    ]
    assert len(notices) == 2, result.err
    total = re.search(r"in all, ([\d.]+) s of audio will not be transcribed", result.err)
    stats = re.search(r"dropped +([\d.]+) s of audio", result.err)
    assert total and stats, result.err
    assert float(total[1]) == float(stats[1]) == pytest.approx(sum(notices), abs=0.01)
    # All of it: given and dropped, or (when the session failed before the file
    # was read to the end, as on a slow machine) never sent, and said so.
    unsent = re.search(r"the input's last ([\d.]+) s were never sent", result.err)
    never_sent = float(unsent[1]) if unsent else 0.0
    assert float(stats[1]) + never_sent == pytest.approx(40.1, abs=0.02)
    assert "more audio waited for the service than is kept for replay (30 s)" in result.err
    assert "the session failed before the service had transcribed it" in result.err


async def test_input_never_sent_when_the_session_fails_is_said(tmp_path: Path) -> None:
    # Read in real time: the service is unreachable long before the end.
    path = tmp_path / "long.wav"
    path.write_bytes(riff(encode("hello", trail=1.0) + silence(39.0)))
    result = await pulse(
        "transcribe",
        path,
        "--base-url",
        f"ws://127.0.0.1:{closed_port()}",
        "--reconnect-attempts",
        "1",
        "--speed",
        "1",
        env={"SMALLEST_API_KEY": KEY},
    )
    assert result.code == 4, result.err
    unsent = re.search(r"the input's last ([\d.]+) s were never sent", result.err)
    assert unsent, result.err
    dropped = sum(
        float(seconds)
        for seconds in re.findall(r"pulse: ([\d.]+) s of audio \(.*\) will not be", result.err)
    )
    assert 30 < float(unsent[1]) <= 40.1
    assert dropped + float(unsent[1]) == pytest.approx(40.1, abs=0.06)


async def test_help_and_errors_say_what_the_command_does(tmp_path: Path) -> None:
    path = tmp_path / "turns.wav"
    # Two turns, each answered by a final with text; the close brings an empty one.
    path.write_bytes(riff(encode("first turn", trail=1.0) + encode("second", trail=0.2)))
    help_, stats, lines, region = await concurrently(
        call("transcribe", "--help"),
        call("transcribe", path, "--local", "--engine", "token", "--stats"),
        call("transcribe", path, "--local", "--engine", "token", "-f", "jsonl"),
        call(
            "transcribe", path, "--region", "us", "--language", "ta", env={"SMALLEST_API_KEY": KEY}
        ),
    )
    text = " ".join(help_.out.split())
    assert "--word-timestamps, --no-word-timestamps word timings: requested unless" in text
    assert "on by default for srt" not in text
    assert stats.lines == ["first turn", "second"]
    assert re.search(r"finals +2 with text \(3 in all\); 1 finalize answered", stats.err)
    # As the README says: turn and latency only on the final that answers a finalize.
    automatic, answer = map(json.loads, lines.lines)
    assert "turn" not in automatic and "latency" not in automatic
    assert answer["turn"] == 1 and answer["latency"] >= 0
    assert region.code == 2
    assert "use --region india" in region.err and "region=" not in region.err


async def test_default_subtitles_have_no_orphans_and_even_lines(tmp_path: Path) -> None:
    long = (
        "we walked along the quiet river for hours and talked about everything that had "
        "happened since the summer ended."
    )
    path = tmp_path / "talk.wav"
    path.write_bytes(
        riff(encode(long, trail=1.0) + encode("That was the plan. Yes. We went anyway.", trail=1.0))
    )
    result = await pulse("transcribe", path, "--local", "--engine", "token", "-f", "srt")
    assert result.code == 0, result.err
    cues = [block.split("\n")[2:] for block in result.out.strip().split("\n\n")]
    texts = [" ".join(lines) for lines in cues]
    assert " ".join(texts) == long + " That was the plan. Yes. We went anyway."
    assert all(len(text.split()) > 1 for text in texts), texts  # no cue of one word
    # The long sentence: two cues as even as they can be (not 84 characters and 9).
    first, second = texts[:2]
    assert first + " " + second == long
    assert abs(len(first) - len(second)) < 12, texts
    # A one-word sentence too short to read shares a cue.
    assert "Yes." not in texts
    for lines in cues:  # each line fits, and two lines are near even
        assert all(len(line) <= 42 for line in lines), lines
        if len(lines) == 2:
            assert abs(len(lines[0]) - len(lines[1])) < 12, lines


async def test_help_and_argument_errors_load_no_session_code() -> None:
    """What `pulse --help` imports (its speed is measured in bench/cli_startup.py)."""
    probe = (
        "import sys\n"
        "from pulse_trio.cli import main\n"
        "for argv in (['--help'], ['transcribe', '--help'], ['emulator', '--help'],\n"
        "             ['transcribe', 'x.wav', '--format', 'docx'], ['bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('trio', 'trio_websocket', 'pulse_core', 'attrs', 'pulse_trio._session')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    with trio.fail_after(30):
        process = await trio.run_process(
            [sys.executable, "-c", probe],
            capture_stdout=True,
            capture_stderr=True,
            cwd=ROOT,
            env=command_env(None),
        )
    assert process.stdout.decode().strip().splitlines()[-1] == "[]"


def test_the_package_says_its_license_and_where_to_read_more() -> None:
    import tomllib  # noqa: PLC0415

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert project["urls"] and all(url.startswith("https://") for url in project["urls"].values())
