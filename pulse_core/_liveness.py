"""``Liveness``: keeping the live connection alive (spec/PROTOCOL.md §8).

The service closes a connection that carries nothing for a while, so when no
audio went out for ``keepalive_interval`` the engine sends a keepalive: silence
in the session's encoding (it shifts the server's clock, which the timeline
records), or a WebSocket ping for Opus, which has no byte-level silence.

This part remembers when the socket last carried anything each way and says
when the next keepalive is due and what it is. It sends nothing itself.

Invariants:

* ``last_wire`` only moves forward within a connection, and a keepalive moves
  it to ``now``, so after :meth:`keepalive` the deadline is a whole interval
  away (the timer never spins);
* ``last_received`` is reset when a connection opens: silence before a
  connection existed is never held against it.
"""

from __future__ import annotations

import math
from typing import Final

from ._config import ConnectionConfig

__all__ = ["KEEPALIVE_PING", "Liveness"]

#: Payload of the keepalive ping (Opus sessions).
KEEPALIVE_PING: Final = b"pulse-keepalive"


class Liveness:
    """Keepalive timing of the live connection."""

    __slots__ = ("_interval", "count", "last_received", "last_wire", "silence", "silence_ticks")

    def __init__(self, config: ConnectionConfig) -> None:
        self._interval = config.keepalive_interval
        #: The keepalive silence (``None``: send a ping instead).
        self.silence = config.encoding.silence(config.sample_rate, config.keepalive_silence)
        width = config.encoding.sample_width or 1
        #: Connection ticks one keepalive silence adds.
        self.silence_ticks = len(self.silence) // width if self.silence else 0
        #: When audio or a keepalive last went out on the socket.
        self.last_wire = 0.0
        #: When anything last came in from the server.
        self.last_received = -math.inf
        #: Keepalives sent this session.
        self.count = 0

    def opened(self, now: float) -> None:
        """A connection opened at ``now``: both clocks start here."""
        self.last_wire = now
        self.last_received = now

    def wrote(self, now: float) -> None:
        """Audio went out on the socket."""
        self.last_wire = now

    def heard(self, now: float) -> None:
        """A frame came in from the server."""
        self.last_received = now

    def deadline(self) -> float:
        """When the next keepalive is due if nothing goes out before."""
        return self.last_wire + self._interval

    def due(self, now: float) -> bool:
        return now >= self.last_wire + self._interval

    def keepalive(self, now: float) -> bytes | None:
        """A keepalive goes out now: its silence, or ``None`` for a ping."""
        self.last_wire = now
        self.count += 1
        return self.silence
