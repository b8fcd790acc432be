"""What every benchmark driver shares: the plan it is given and the record it keeps.

Standard library only: the drivers run in virtual environments that hold one
client each (pulse, the smallestai SDK, Pipecat), none of them this checkout.

The plan (a JSON file written by ``bench/side_by_side.py``) says where the
server is, how many sessions, how long, how the audio is cut and paced, and
holds the token audio of every word the drivers need. Session ``k`` speaks
turn ``j`` as ``finalize_every`` seconds of audio: silence, then the words
``s<k> t<j>`` ending 0.1 s before the turn does, then a finalize. So every
final's text is unique, and both the server and the client can stamp it.

The record: for each turn, when the driver asked for its final and when the
final came; how late (behind the real-time schedule) each finalize went out;
errors; and the driver's own CPU seconds (``getrusage``, every thread) from
just before the first connection to just after the last session ended.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Plan", "Record", "idle_exit", "load"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Plan:
    """The run a driver is asked for (see the module documentation)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.url: str = data["url"]
        self.api_key: str = data["api_key"]
        self.sessions: int = data["sessions"]
        self.seconds: float = data["seconds"]
        self.chunk_ms: int = data["chunk_ms"]
        self.finalize_every: float = data["finalize_every"]
        self.realtime: bool = data["realtime"]
        self.rate: int = data["rate"]
        self.out = Path(data["out"])
        self.idle: bool = data.get("idle", False)
        self._words = {word: bytes.fromhex(audio) for word, audio in data["words"].items()}
        self._gap = bytes(2 * round(self.rate * 0.1))
        self.chunk_bytes = 2 * self.rate * self.chunk_ms // 1000
        self.turn_bytes = 2 * round(self.rate * self.finalize_every)
        self.turns = max(1, round(self.seconds / self.finalize_every))

    @property
    def query(self) -> str:
        """The live path and the query every driver asks for."""
        return (
            f"/waves/v1/stt/live?model=pulse&language=en&encoding=linear16&sample_rate={self.rate}"
        )

    def chunks(self, session: int, turn: int) -> Iterator[bytes]:
        """Session ``session``'s turn ``turn`` (silence, two words, 0.1 s of
        silence) in chunks, each made as it is asked for (as a live
        source reads them), so that a driver holds no more of its audio than
        a client is given: memory per session is the client's."""
        spoken = self._words[f"s{session}"] + self._gap + self._words[f"t{turn}"] + self._gap
        silent = self.turn_bytes - len(spoken)
        size = self.chunk_bytes
        for start in range(0, self.turn_bytes, size):
            end = min(start + size, self.turn_bytes)
            if end <= silent:
                yield bytes(end - start)
            else:
                yield bytes(max(0, silent - start)) + spoken[max(0, start - silent) : end - silent]

    def due(self, session: int, chunk: int, start: float) -> float:
        """When chunk number ``chunk`` of a session is due, in real time.

        Sessions start spread over one chunk's time, as independent calls do.
        """
        spread = self.chunk_ms / 1000 * session / max(1, self.sessions)
        return start + spread + chunk * self.chunk_ms / 1000

    @staticmethod
    def key(session: int, turn: int) -> str:
        return f"s{session} t{turn}"


class Record:
    """What a driver saw (see the module documentation)."""

    def __init__(self, plan: Plan, client: str) -> None:
        self.plan = plan
        self.client = client
        self.asked: dict[str, float] = {}
        self.got: dict[str, float] = {}
        self.lag: list[float] = []
        self.errors: list[str] = []
        self.finished = 0
        #: Summed over sessions: the most audio each held for replay at once
        #: (clients that hold none leave it 0).
        self.replay_held = 0
        #: Audio bytes walked through by a pacing floor, which has no server.
        self.paced = 0
        self._cpu = 0.0
        self._wall = 0.0
        self.started = 0.0

    def start(self) -> float:
        self._cpu = _cpu()
        self.started = self._wall = time.time()
        return self._wall

    def finalize(self, session: int, turn: int, due: float | None) -> None:
        now = time.time()
        self.asked[Plan.key(session, turn)] = now
        if due is not None:
            self.lag.append(max(0.0, now - due))

    def final(self, text: str) -> None:
        self.got.setdefault(text, time.time())

    def error(self, session: int, what: object) -> None:
        if len(self.errors) < 50:
            self.errors.append(f"session {session}: {type(what).__name__}: {what}"[:300])

    def write(self) -> None:
        cpu, wall = _cpu() - self._cpu, time.time() - self._wall
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.plan.out.write_text(
            json.dumps(
                {
                    "client": self.client,
                    "sessions": self.plan.sessions,
                    "finished": self.finished,
                    "cpu": cpu,
                    "wall": wall,
                    "started": self.started,
                    "peak_rss_kb": peak,
                    "replay_held": self.replay_held,
                    "paced": self.paced,
                    "asked": self.asked,
                    "got": self.got,
                    "lag": self.lag,
                    "errors": self.errors,
                }
            )
        )


def load(client: str) -> tuple[Plan, Record]:
    """The plan named by the first argument, and an empty record for ``client``."""
    plan = Plan(json.loads(Path(sys.argv[1]).read_text()))
    return plan, Record(plan, client)


def idle_exit(plan: Plan, record: Record) -> bool:
    """For the idle run (the client imported, nothing else): write and say so."""
    if plan.idle:
        record.start()
        record.write()
    return plan.idle
