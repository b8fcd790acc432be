"""The ``pulse`` command run as its users run it, for the suites that test it.

``pulse()`` runs ``python -m pulse_trio ARGS`` in a subprocess to the end, from
the repository's root (so this checkout's package is the one imported), with
an environment that holds no key unless the test gives one. ``closed_port()``
is a loopback port nothing listens on.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

__all__ = ["ROOT", "Result", "closed_port", "command_env", "pulse"]

ROOT = Path(__file__).resolve().parents[1]


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without a key or NO_COLOR, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("SMALLEST_API_KEY", "NO_COLOR")}
    env.update(extra or {})
    return env


async def pulse(
    *args: str | Path,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 30.0,
) -> Result:
    """Run `python -m pulse_trio ARGS` to the end (at most ``timeout`` seconds)."""
    with trio.fail_after(timeout):
        process = await trio.run_process(
            [sys.executable, "-m", "pulse_trio", *map(str, args)],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=command_env(env),
            cwd=cwd,
        )
    return Result(process.returncode, process.stdout.decode(), process.stderr.decode())


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
