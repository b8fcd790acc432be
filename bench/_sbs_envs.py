"""The side-by-side benchmark's virtual environments: one per client library.

Each client is measured in an interpreter that holds it and nothing of the
others, so no import of one inflates another's memory: ``pulse`` (this
checkout, installed with ``pip install <checkout>``, plus trio-websocket for
its floor), ``smallestai`` (the SDK, plus ``websockets`` for the asyncio floor)
and ``pipecat``. Their pins are ``bench/requirements-<env>.txt``; none of them
is a dependency of pulse. They live in ``bench/.venvs/`` (ignored by git) and
are made once; pulse is reinstalled from the checkout on every run, so the
same command measures whatever the checkout holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ENVS", "prepare"]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
ENVS = ("pulse", "smallestai", "pipecat")


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(*command: str | Path) -> None:
    """Run quietly; on failure show what it said, and stop."""
    shown = " ".join(str(part) for part in command)
    print(f"  $ {shown}", file=sys.stderr, flush=True)
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"{shown} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def prepare(env: str, given: dict[str, str]) -> str:
    """The interpreter for ``env``: the one given with ``--python``, else the
    environment under ``bench/.venvs/``, made (and for pulse, refreshed) now."""
    if env in given:
        return os.path.abspath(given[env])  # not resolved: a venv's python is a link
    venv = VENVS / env
    python = _python(venv)
    marker = venv / ".ready"
    requirements = BENCH / f"requirements-{env}.txt"
    if not marker.exists() or marker.read_text() != requirements.read_text():
        print(f"making the {env} environment in {venv}", file=sys.stderr, flush=True)
        _run(sys.executable, "-m", "venv", "--clear", venv)
        _run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
        _run(python, "-m", "pip", "install", "-q", "-r", requirements)
        marker.write_text(requirements.read_text())
    if env == "pulse":
        # The checkout as it is now: the measured code, whatever branch this is.
        _run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", ROOT)
    return str(python)
