"""Ctrl-C and the errors of a first hour with the `pulse` command, in subprocesses.

Ctrl-C at a terminal signals the whole foreground process group (the producer
of a pipeline too), so these tests do the same: each command runs in a process
group of its own and gets SIGINT through ``os.killpg``. A race shows in some
runs only, so each case runs several times, concurrently to keep it quick.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from pulse_trio.emulator.token_audio import encode
from tests.command import ROOT, command_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

RUNS = 4
PULSE = [sys.executable, "-m", "pulse_trio"]
#: What the installed `pulse` script runs.
SCRIPT = [sys.executable, "-c", "import sys; from pulse_trio.cli import main; sys.exit(main())"]


@contextmanager
def group_of(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    """End whatever is left of these processes' groups, whatever the test did."""
    try:
        yield
    finally:
        for process in processes:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_ctrl_c_while_stdin_is_quiet_exits_130_after_the_transcript(tmp_path: Path) -> None:
    """A producer that has gone quiet (a microphone in a pause) leaves a read
    of stdin waiting when Ctrl-C comes: the command still finishes the
    transcript and exits 130, and the interpreter does not abort at exit. The
    same from a named pipe, which once left the command hanging instead."""
    audio = tmp_path / "speech.raw"
    audio.write_bytes(encode("hello there", trail=1.0) + encode("still talking"))
    fifo = tmp_path / "microphone"
    os.mkfifo(fifo)
    # The producers ignore SIGINT and hold the pipe open, writing nothing more.
    through_stdin = ["sh", "-c", f"trap '' INT; cat '{audio}'; exec sleep 60"]
    through_fifo = ["sh", "-c", f"trap '' INT; exec 3>'{fifo}'; cat '{audio}' >&3; exec sleep 60"]
    runs = []
    for path, producer_command in [("-", through_stdin)] * RUNS + [(str(fifo), through_fifo)]:
        producer = subprocess.Popen(producer_command, stdout=subprocess.PIPE, process_group=0)
        assert producer.stdout is not None
        pulse = subprocess.Popen(
            [*PULSE, "transcribe", path, "--encoding", "linear16", "--local", "--engine", "token"],
            stdin=producer.stdout if path == "-" else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=command_env(None),
            process_group=producer.pid,
        )
        producer.stdout.close()
        runs.append((producer, pulse))
    with group_of(*(producer for producer, _ in runs)):
        for _, pulse in runs:
            assert pulse.stdout is not None
            first = pulse.stdout.readline()  # the first turn's final: the audio is in
            assert first == b"hello there\n"
        time.sleep(0.5)  # the rest is sent, and each reader waits for more
        for producer, _ in runs:
            os.killpg(producer.pid, signal.SIGINT)
        for _, pulse in runs:
            out, err = pulse.communicate(timeout=20)
            text = err.decode()
            assert pulse.returncode == 130, text
            assert out == b"still talking\n"  # the turn in progress was finished
            assert "Fatal Python error" not in text and "Traceback" not in text
            assert "interrupted: finishing the transcript" in text


def test_ctrl_c_stops_pulse_emulator_with_one_line_and_130() -> None:
    """Its banner says Ctrl-C stops it: idle or with a client half-way through a
    handshake, run as `python -m pulse_trio` or as the `pulse` script."""
    servers = [
        subprocess.Popen(
            [*command, "emulator", "--port", "0"],
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=command_env(None),
            process_group=0,
        )
        for command in (PULSE, SCRIPT) * (RUNS // 2)
    ]
    clients: list[socket.socket] = []
    try:
        with group_of(*servers):
            for index, server in enumerate(servers):
                assert server.stderr is not None
                banner = server.stderr.readline().decode()
                match = re.search(r"ws://127\.0\.0\.1:(\d+)", banner)
                assert match, banner
                if index % 2:
                    client = socket.create_connection(("127.0.0.1", int(match[1])))
                    client.sendall(b"GET /waves/v1/stt/live HTTP/1.1\r\nHost: x\r\n")
                    clients.append(client)
                time.sleep(0.1 * index)
                os.killpg(server.pid, signal.SIGINT)
            for server in servers:
                _, err = server.communicate(timeout=20)
                text = err.decode()
                assert server.returncode == 130, text
                assert text.strip().splitlines()[-1] == "pulse emulator: stopped", text
                assert "Traceback" not in text and "Error" not in text
    finally:
        for client in clients:
            client.close()
