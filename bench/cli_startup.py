"""How long the ``pulse`` command takes to answer before it does any work
(a benchmark, not a test: it asserts nothing; results in bench/README.md).

    python bench/cli_startup.py [--runs N]

Runs each command N times in a fresh interpreter, from the repository's root,
and prints the median and the fastest wall time, and the same less a bare
``python -c pass`` (the interpreter's own start, which no change here can
shorten):

* ``pulse --help`` and ``pulse transcribe --help``;
* an argument error (``pulse transcribe x.wav --format docx``), exit status 2;
* for comparison, importing the whole session stack (``pulse_trio._session``:
  Trio, trio-websocket, the engine), which ``--help`` used to pay for.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

COMMANDS = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "pulse --help": [PYTHON, "-m", "pulse_trio", "--help"],
    "pulse transcribe --help": [PYTHON, "-m", "pulse_trio", "transcribe", "--help"],
    "pulse transcribe x.wav --format docx": [
        PYTHON,
        "-m",
        "pulse_trio",
        "transcribe",
        "x.wav",
        "--format",
        "docx",
    ],
    "import pulse_trio._session": [PYTHON, "-c", "import pulse_trio._session"],
}


def timed(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()
    timed(COMMANDS["pulse --help"], 2)  # compile the bytecode, warm the file cache
    results = {name: timed(command, args.runs) for name, command in COMMANDS.items()}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':40} {'median':>8} {'fastest':>8} {'over python':>12}")
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"{name:40} {median * 1000:6.0f}ms {min(times) * 1000:6.0f}ms {(median - base) * 1000:10.0f}ms"
        )


if __name__ == "__main__":
    main()
