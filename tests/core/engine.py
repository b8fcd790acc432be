"""A small harness for driving PulseConnection in tests."""

from __future__ import annotations

import json
from typing import Any

from pulse_core import (
    CloseConnection,
    Command,
    Connect,
    ConnectionConfig,
    Event,
    PulseConnection,
    SendBinary,
    SendPing,
    SendText,
)
from pulse_core._liveness import LIVENESS_PING

BASE_URL = "ws://127.0.0.1:8765"


def config(**options: Any) -> ConnectionConfig:
    options.setdefault("base_url", BASE_URL)
    return ConnectionConfig(api_key="sk_test_harness", **options)


class Harness:
    """A PulseConnection plus the outputs it produced, kept for inspection."""

    def __init__(self, jitter: Any = None, *, answer_pings: bool = True, **options: Any) -> None:
        self.conn = PulseConnection(config(**options), jitter=jitter)
        #: Answer the engine's liveness pings at once, as a live server does
        #: (the answered pings are kept in ``commands`` and ``probes`` but not
        #: returned by ``tick``).
        self.answer_pings = answer_pings
        #: When each liveness probe went out.
        self.probes: list[float] = []
        self._heard_at = -1.0  # when the harness's server was last heard
        self.commands: list[Command] = []
        self.events: list[Event] = []
        self.now = 0.0

    def at(self, now: float) -> Harness:
        self.now = now
        return self

    def collect(self) -> tuple[list[Command], list[Event]]:
        commands, events = self.conn.commands(), self.conn.events()
        self.commands += commands
        self.events += events
        return commands, events

    def open(self) -> tuple[list[Command], list[Event]]:
        if self.conn.state.value == "idle":
            self.conn.start(self.now)
        self.conn.connection_opened(self.now)
        self._heard_at = self.now
        return self.collect()

    def send(self, data: bytes) -> list[Command]:
        self.conn.send_audio(self.now, data)
        return self.collect()[0]

    def message(self, payload: dict[str, Any] | str) -> list[Event]:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.conn.receive_message(self.now, text)
        self._heard_at = self.now
        return self.collect()[1]

    def tick(self, now: float) -> tuple[list[Command], list[Event]]:
        self.now = now
        self.conn.handle_timer(now)
        commands, events = self.collect()
        probe = SendPing(LIVENESS_PING)
        count = commands.count(probe)
        assert count <= 1, f"{count} liveness probes in one tick"
        if count:
            # A probe only after ping_interval with nothing heard (PROTOCOL §6 rule 11).
            silent = now - self._heard_at
            assert silent >= self.conn.config.ping_interval - 1e-9, (
                f"a liveness probe at {now} though the server was heard {silent:g} s before"
            )
            self.probes.append(now)
        if self.answer_pings and count:
            self.conn.pong_received(now)
            self._heard_at = now
            more_commands, more_events = self.collect()
            commands = [command for command in commands if command != probe] + more_commands
            events += more_events
        return commands, events

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def audio_sent(commands: list[Command]) -> bytes:
    return b"".join(command.data for command in commands if isinstance(command, SendBinary))


def texts(commands: list[Command]) -> list[str]:
    return [command.text for command in commands if isinstance(command, SendText)]


def kinds(items: list[Any]) -> list[str]:
    return [type(item).__name__ for item in items]


__all__ = [
    "BASE_URL",
    "CloseConnection",
    "Connect",
    "Harness",
    "SendBinary",
    "SendPing",
    "SendText",
    "audio_sent",
    "config",
    "kinds",
    "texts",
]
