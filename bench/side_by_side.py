"""Side by side: pulse against the smallestai SDK, Pipecat and bare WebSocket floors.

    python bench/side_by_side.py                    # everything (3 repeats, 40 min or more each)
    python bench/side_by_side.py --quick            # every client, N = 1 and 10, 6 s
    python bench/side_by_side.py --python pipecat=/path/to/python --repeats 3

A benchmark, not a test: it asserts nothing. It measures what a client costs
per hour of audio, whether it keeps up with real time, its memory per session
and how fast finals reach it, for:

* ``pulse-20ms`` and ``pulse-100ms``: ``pulse_trio.open_session`` with
  handlers, 20 ms and 100 ms chunks (``drivers/pulse_driver.py``);
* ``smallestai``: the SDK's ``stream_speech_to_text`` (``drivers/sdk_driver.py``);
* ``pipecat``: ``SmallestSTTService`` in a minimal pipeline per session
  (``drivers/pipecat_driver.py``);
* ``trio-websocket`` and ``websockets``: the floors, the same conversation
  over the bare socket libraries (``drivers/*_driver.py``);
* ``trio-pacing`` and ``asyncio-pacing``: the floors under those, the same
  schedule walked in each event loop with nothing sent
  (``drivers/pacing_driver.py``): what waking every 20 ms per session costs
  the application before any client does any work.

Workloads: ``W1 N=...``: N concurrent sessions, each sending 16 kHz linear16 in
real time (20 ms chunks unless the client says otherwise), a finalize every
3 s, 30 s each; ``W2``: one session sending 10 minutes of audio as fast as the
client takes it (a finalize every 3 s of audio). The audio is token audio
(``pulse_trio.emulator.token_audio``): the server answers with words, and the
words of each turn (``s<session> t<turn>``) are unique.

Every run is a client process of its own (pinned to core 1 where there are two)
against a fresh emulator process (``_sbs_server.py``, pinned to core 0), over
loopback. Each client runs in its own virtual environment (``_sbs_envs.py``);
``--python ENV=PATH`` reuses an interpreter instead (ENV is pulse, smallestai or
pipecat, or a client's name for its environment's), and ``--current`` runs the pulse drivers in this interpreter with the
checkout on the path (no environment made: what the smoke test does).

Output: a markdown table (medians of the repeats, min-max) and ratios of
pulse's CPU per audio hour over each other client's, each taken within one
repeat, then the median, on stdout; every raw record and figure in the JSON file
given by ``--out`` (``bench/side_by_side.json`` by default). What each figure
means: ``_sbs_figures.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from _sbs_envs import prepare  # noqa: E402
from _sbs_figures import added_rows, ratio_rows, run_figures, table  # noqa: E402

from pulse_trio.emulator.token_audio import encode  # noqa: E402

RATE = 16000
API_KEY = "bench-key"
# name: (driver and its arguments, environment, chunk milliseconds)
CLIENTS: dict[str, tuple[str, str, int]] = {
    "pulse-20ms": ("pulse_driver.py", "pulse", 20),
    "pulse-100ms": ("pulse_driver.py", "pulse", 100),
    "smallestai": ("sdk_driver.py", "smallestai", 20),
    "pipecat": ("pipecat_driver.py", "pipecat", 20),
    "trio-websocket": ("trio_websocket_driver.py", "pulse", 20),
    "websockets": ("websockets_driver.py", "smallestai", 20),
    "trio-pacing": ("pacing_driver.py trio", "pulse", 20),
    "asyncio-pacing": ("pacing_driver.py asyncio", "smallestai", 20),
}
REFERENCE = "pulse-20ms"


def _pin(core: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child to ``core``, on a machine with two or more."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None
    cores = sorted(os.sched_getaffinity(0))
    chosen = {cores[min(core, len(cores) - 1)]}
    return lambda: os.sched_setaffinity(0, chosen)


def _words(sessions: int, turns: int) -> dict[str, str]:
    names = [f"s{k}" for k in range(sessions)] + [f"t{j}" for j in range(turns)]
    return {name: encode([name], sample_rate=RATE).hex() for name in names}


class Server:
    """A fresh emulator process for one run; ``stop()`` gives its statistics."""

    def __init__(self, folder: Path) -> None:
        self.stats = folder / "server.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "_sbs_server.py"), str(self.stats)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_pin(0),  # noqa: PLW1509 - the harness starts no threads
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.process.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.stats.exists():
            return {"bytes": 0, "finals": {}, "cpu": 0.0, "wall": 0.0, "sessions": []}
        data: dict[str, Any] = json.loads(self.stats.read_text())
        return data


def run_client(
    python: str, client: str, plan: dict[str, Any], folder: Path, timeout: float
) -> tuple[dict[str, Any], int, str]:
    """Run one driver; its record, its peak RSS (kB, from the kernel) and its stderr's tail."""
    driver, *driver_arguments = CLIENTS[client][0].split()
    plan_file = folder / f"plan-{client}.json"
    plan_file.write_text(json.dumps(plan))
    record_file = Path(plan["out"])
    record_file.unlink(missing_ok=True)
    env = dict(os.environ)
    if plan.get("current"):
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.pop("PYTHONPATH", None)  # the environment's own install, not the checkout
    with open(folder / f"{client}.stderr", "w+") as errors:
        process = subprocess.Popen(
            [python, str(BENCH / "drivers" / driver), str(plan_file), *driver_arguments],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=env,
            cwd=folder,
            preexec_fn=_pin(1),  # noqa: PLW1509 - the harness starts no threads
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                process.returncode = -9
                break
            time.sleep(0.2)
        errors.seek(0)
        tail = errors.read()[-2000:]
    record: dict[str, Any] = {}
    if record_file.exists():
        record = json.loads(record_file.read_text())
    if process.returncode:
        record.setdefault("errors", []).append(f"exit status {process.returncode}: {tail[-500:]}")
    # The whole process's CPU, from the kernel: the figure when the driver was
    # stopped before it could write its own (which leaves out start-up).
    record["cpu_process"] = usage.ru_utime + usage.ru_stime
    return record, usage.ru_maxrss, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=list(CLIENTS))
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 10, 50, 200, 500])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per W1 session")
    parser.add_argument("--w2-seconds", type=float, default=600.0, help="audio in W2")
    parser.add_argument("--finalize-every", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", choices=["w1", "w2"], default=["w1", "w2"])
    parser.add_argument("--quick", action="store_true", help="N = 1 and 10, 6 s, W2 60 s, once")
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="ENV=PATH",
        help="use this interpreter for an environment (pulse, smallestai, pipecat) or a client's",
    )
    parser.add_argument(
        "--current", action="store_true", help="pulse drivers in this interpreter, no venvs"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "side_by_side.json")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds, args.w2_seconds, args.repeats = [1, 10], 6.0, 60.0, 1

    given: dict[str, str] = {}
    for item in args.python:
        name, _, path = item.partition("=")
        # A client's name stands for its environment (pulse-20ms: pulse).
        given[CLIENTS[name][1] if name in CLIENTS else name] = path
    pythons: dict[str, str] = {}
    for client in args.clients:
        env = CLIENTS[client][1]
        if env not in pythons:
            if args.current and env == "pulse":
                pythons[env] = sys.executable
            else:
                pythons[env] = prepare(env, given)

    workloads: list[tuple[str, int, float, bool]] = []
    if "w1" in args.workloads:
        workloads += [(f"W1 N={n}", n, args.seconds, True) for n in args.sessions]
    if "w2" in args.workloads:
        workloads.append(("W2", 1, args.w2_seconds, False))
    most = max(n for _, n, _, _ in workloads)
    longest = max(seconds for _, _, seconds, _ in workloads)
    words = _words(most, max(1, round(longest / args.finalize_every)))

    results: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "runs": [],
    }
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as tmp:
        folder = Path(tmp)
        idle: dict[str, int] = {}
        for client in args.clients:
            # The client library imported, nothing done: the base of RSS per session.
            plan = _plan(
                "ws://127.0.0.1:9",
                1,
                seconds=1.0,
                chunk_ms=20,
                args=args,
                words=words,
                folder=folder,
                realtime=True,
            )
            plan["idle"] = True
            _, idle[client], _ = run_client(pythons[CLIENTS[client][1]], client, plan, folder, 120)
        results["idle_rss_kb"] = idle
        for repeat in range(args.repeats):
            for name, sessions, seconds, realtime in workloads:
                # A different client first in each repeat: no client always gets the fresh machine.
                shift = repeat % len(args.clients)
                for client in args.clients[shift:] + args.clients[:shift]:
                    chunk_ms = CLIENTS[client][2]
                    server = Server(folder)
                    plan = _plan(
                        server.url,
                        sessions,
                        seconds=seconds,
                        chunk_ms=chunk_ms,
                        args=args,
                        words=words,
                        folder=folder,
                        realtime=realtime,
                    )
                    # Past this a run has fallen hopelessly behind: it is stopped, and
                    # reported with the audio the server got and the CPU it spent.
                    timeout = seconds * 8 + 90
                    print(
                        f"[{repeat + 1}/{args.repeats}] {name} {client} ...",
                        file=sys.stderr,
                        end=" ",
                        flush=True,
                    )
                    record, peak, _ = run_client(
                        pythons[CLIENTS[client][1]], client, plan, folder, timeout
                    )
                    stats = server.stop()
                    figures = run_figures(plan, record, stats, idle[client], peak)
                    print(_brief(figures), file=sys.stderr, flush=True)
                    cells.setdefault(name, {}).setdefault(client, []).append(figures)
                    record.pop("got", None)
                    record.pop("asked", None)
                    results["runs"].append(
                        {
                            "workload": name,
                            "client": client,
                            "repeat": repeat,
                            "figures": figures,
                            "server": {k: v for k, v in stats.items() if k != "finals"},
                            "record": record,
                        }
                    )
    results["load_after"] = os.getloadavg()
    results["table"] = table(cells)
    ratios_text, ratios = ratio_rows(cells, REFERENCE)
    results["ratios"] = ratios
    added_text, results["added"] = added_rows(cells, REFERENCE)
    args.out.write_text(json.dumps(results, indent=1))
    print(results["table"])
    print()
    print(ratios_text)
    if added_text:
        print()
        print(added_text)


def _plan(
    url: str,
    sessions: int,
    *,
    seconds: float,
    chunk_ms: int,
    args: argparse.Namespace,
    words: dict[str, str],
    folder: Path,
    realtime: bool,
) -> dict[str, Any]:
    return {
        "url": url,
        "api_key": API_KEY,
        "sessions": sessions,
        "seconds": seconds,
        "chunk_ms": chunk_ms,
        "finalize_every": args.finalize_every,
        "realtime": realtime,
        "rate": RATE,
        "out": str(folder / "record.json"),
        "words": words,
        "current": args.current,
    }


def _brief(figures: dict[str, Any]) -> str:
    cpu = figures.get("cpu_per_audio_hour")
    parts = [f"{cpu:.0f} CPU s/h" if cpu else "no CPU figure"]
    parts.append(f"received {figures['received']:.3f}" if figures.get("received") else "")
    parts.append(f"finals {figures['finals']:.0%}")
    if figures.get("errors"):
        parts.append(f"errors: {figures['errors'][0][:120]}")
    return ", ".join(part for part in parts if part)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


if __name__ == "__main__":
    main()
