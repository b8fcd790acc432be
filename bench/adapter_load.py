"""Many real-time sessions on one core: what each costs (a benchmark, not a test).

    python bench/adapter_load.py [--sessions 200] [--seconds 20] [--chunk-ms 20]
                                 [--client pulse|bare] [--emulator-path DIR]

Starts the emulator (token engine) in a subprocess pinned to CPU 0, pins this
process to CPU 1, then runs ``--sessions`` clients in this one process, each
sending token audio in ``--chunk-ms`` chunks, each chunk when its audio has
been spoken (a live source), and finalizing every two seconds of audio, as a
voice agent does. The application only registers handlers (it never opens
``events()``).

``--client bare`` runs the same load over bare trio-websocket (one
``send_message`` per chunk, a task discarding what the server sends): the
floor that Trio and trio-websocket set for any client built on them.

Printed, over the streaming phase only (connecting and closing excluded):

* **CPU-s/audio-h**: this process's CPU time (user + system) per hour of
  audio sent, all sessions together;
* **real time**: audio seconds each session sent over the wall time it took,
  for the slowest session and the median (1.00 keeps up; less falls behind);
* **late p50/p99**: how late a chunk went out past the moment its audio was
  spoken, in milliseconds;
* **CPU**: the cores this process used while streaming, and the emulator's (near
  1.00, the emulator is what falls behind, not the client);
* **KiB/session**: this process's resident set growth from before the sessions
  opened to the end of streaming, per session, and the part of it that is
  audio the engine holds for replay (``PulseConnection.buffered_bytes``).

The machine may be shared: run the before and after side by side, and more
than once (``PYTHONPATH`` picks the code under test; ``--emulator-path`` the
emulator's, the same for both).
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

RATE = 16000
WORDS = "hello world this is a pulse load test one two three four five six seven"
FINALIZE_EVERY = 2.0


def rss_kib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_emulator(port: int, sessions: int, path: str | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    command = [
        sys.executable, "-m", "pulse_trio", "emulator", "--engine", "token",
        "--port", str(port), "--max-sessions", str(sessions + 10),
    ]  # fmt: skip
    if hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", "0", *command]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the emulator did not start")


class Load:
    """The shared schedule and the figures each session reports."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        from pulse_trio.emulator.token_audio import encode

        self.args = args
        self.url = url
        self.chunk = RATE * 2 * args.chunk_ms // 1000
        audio = encode(WORDS, sample_rate=RATE, gap=0.15, trail=0.3)
        total = int(args.seconds * RATE * 2)
        self.audio = (audio * (total // len(audio) + 1))[:total]
        self.chunks = [
            self.audio[i : i + self.chunk] for i in range(0, len(self.audio), self.chunk)
        ]
        self.ratios: list[float] = []
        self.lateness: list[float] = []
        self.transcripts = 0
        self.failed = 0
        self.held = 0
        self.opened = 0
        self.all_open = trio.Event()
        self.start = 0.0

    async def stream(self, send: Any, finalize: Any, index: int) -> None:
        """Send every chunk when its audio has been spoken; finalize now and then."""
        self.opened += 1
        if self.opened == self.args.sessions:
            self.start = trio.current_time() + 0.5
            self.all_open.set()
        await self.all_open.wait()
        seconds = self.args.chunk_ms / 1000
        # Sessions start spread over one chunk, as independent callers would.
        begin = self.start + seconds * index / self.args.sessions
        per_finalize = round(FINALIZE_EVERY / seconds)
        late = self.lateness
        for number, chunk in enumerate(self.chunks):
            due = begin + number * seconds
            now = trio.current_time()
            if now < due:
                await trio.sleep_until(due)
            else:
                late.append(now - due)
            await send(chunk)
            if finalize is not None and number % per_finalize == per_finalize - 1:
                await finalize()
        self.ratios.append(len(self.chunks) * seconds / (trio.current_time() - begin))


async def pulse_client(load: Load, index: int) -> None:
    from pulse_trio import SessionFailedError, open_session

    try:
        async with open_session(
            api_key="bench-key", base_url=load.url, encoding="linear16", sample_rate=RATE
        ) as session:

            @session.event_handler("on_transcript")
            def count(event: Any) -> None:
                load.transcripts += 1

            await load.stream(session.send_audio, session.finalize, index)
            load.held += session.engine.buffered_bytes
    except SessionFailedError:
        # A slow emulator (a busy machine) can make the close time out: counted.
        load.failed += 1


async def bare_client(load: Load, index: int) -> None:
    from trio_websocket import ConnectionClosed, open_websocket_url

    from pulse_core import ConnectionConfig

    config = ConnectionConfig(api_key="bench-key", base_url=load.url, sample_rate=RATE)
    headers = [(k.encode(), v.encode()) for k, v in config.headers()]
    async with open_websocket_url(config.url(), extra_headers=headers) as ws:

        async def read() -> None:
            try:
                while True:
                    await ws.get_message()
                    load.transcripts += 1
            except ConnectionClosed:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)

            async def finalize() -> None:
                await ws.send_message('{"type":"finalize"}')

            await load.stream(ws.send_message, finalize, index)
            nursery.cancel_scope.cancel()


def process_cpu_seconds(pid: int | None) -> float:
    """A child's CPU time (user + system), from /proc; 0 where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace, url: str, server: int | None) -> dict[str, float]:
    load = Load(args, url)
    client = pulse_client if args.client == "pulse" else bare_client
    # Loaded before the baseline: what code takes is not memory per session.
    for name in ("pulse_trio._session", "trio_websocket"):
        importlib.import_module(name)
    rss0 = rss_kib()
    async with trio.open_nursery() as nursery:
        for index in range(args.sessions):
            nursery.start_soon(client, load, index)
        await load.all_open.wait()
        await trio.sleep_until(load.start)
        cpu0, wall0, server0 = cpu_seconds(), time.monotonic(), process_cpu_seconds(server)
        while len(load.ratios) < args.sessions:
            await trio.sleep(0.05)
        cpu = cpu_seconds() - cpu0
        wall = time.monotonic() - wall0
        server_cpu = process_cpu_seconds(server) - server0
        if os.environ.get("ADAPTER_LOAD_TRACEMALLOC"):
            import tracemalloc

            top = tracemalloc.take_snapshot().statistics("lineno")[:25]
            for stat in top:
                print(f"{stat.size / 1024 / args.sessions:8.1f} KiB/session  {stat.traceback}")
        rss = rss_kib() - rss0
        # Closing is not measured: the sessions end when the nursery does.
    failed = load.failed
    audio_hours = args.sessions * len(load.chunks) * args.chunk_ms / 1000 / 3600
    late = sorted(load.lateness) or [0.0]
    return {
        "cpu_per_audio_hour": cpu / audio_hours,
        "cpu_share": cpu / wall,
        "server_share": server_cpu / wall,
        "real_time_min": min(load.ratios),
        "real_time_median": statistics.median(load.ratios),
        "late_p50_ms": 1000 * late[len(late) // 2] if load.lateness else 0.0,
        "late_p99_ms": 1000 * late[int(len(late) * 0.99)] if load.lateness else 0.0,
        "kib_per_session": rss / args.sessions,
        "held_kib_per_session": load.held / 1024 / args.sessions,
        "transcripts": load.transcripts,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--client", choices=("pulse", "bare"), default="pulse")
    parser.add_argument("--emulator-path", help="PYTHONPATH for the emulator's process")
    parser.add_argument("--url", help="use a running emulator instead of starting one")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    emulator = None
    url = args.url
    if url is None:
        port = free_port()
        emulator = start_emulator(port, args.sessions, args.emulator_path)
        url = f"ws://127.0.0.1:{port}"
    try:
        if os.environ.get("ADAPTER_LOAD_TRACEMALLOC"):
            import tracemalloc

            tracemalloc.start()
        figures = trio.run(run, args, url, emulator.pid if emulator is not None else None)
    finally:
        if emulator is not None:
            emulator.send_signal(signal.SIGINT)
            try:
                emulator.wait(10)
            except subprocess.TimeoutExpired:
                emulator.kill()
    code = Path(__import__("pulse_trio").__file__).resolve().parents[1]
    print(
        f"{args.client} N={args.sessions} {args.chunk_ms} ms ({code}): "
        f"CPU-s/audio-h {figures['cpu_per_audio_hour']:.1f}  "
        f"CPU {figures['cpu_share']:.2f} core (emulator {figures['server_share']:.2f})  "
        f"real time min {figures['real_time_min']:.3f} median {figures['real_time_median']:.3f}  "
        f"late p50 {figures['late_p50_ms']:.1f} p99 {figures['late_p99_ms']:.1f} ms  "
        f"KiB/session {figures['kib_per_session']:.0f} "
        f"(replay audio {figures['held_kib_per_session']:.0f})  "
        f"transcripts {figures['transcripts']}  failed {figures['failed']}"
    )


if __name__ == "__main__":
    main()
