"""``Liveness``: keeping the live connection alive, and noticing when it is not
(spec/PROTOCOL.md §6 rules 4 and 11).

Two rules share one room because both are about what the socket carried and
when:

* **Keepalive.** The service closes a connection that carries nothing for a
  while, so when no audio went out for ``keepalive_interval`` the engine sends
  a keepalive: silence in the session's encoding (it shifts the server's clock,
  which the timeline records), or a WebSocket ping for Opus, which has no
  byte-level silence.
* **Liveness.** A connection can die without a close: the server stops reading
  and answering while TCP stays up (half-open), or writes stop completing. When
  nothing at all was heard from the server (no message, no pong) for
  ``ping_interval``, the engine pings it; when nothing is heard for
  ``ping_timeout`` more, the connection is dead and is replaced like any lost
  connection (its unconfirmed audio is replayed). Detection takes at most
  ``ping_interval + ping_timeout`` (10 s by default), whatever the application
  does. A write that cannot complete is caught by the same rule: the ping
  cannot go out, so no pong comes back.

This part remembers when the socket last carried anything each way and answers
what is due. It sends nothing itself.

Invariants:

* ``last_wire`` only moves forward within a connection, and a keepalive moves
  it to ``now``, so after :meth:`keepalive` its deadline is a whole interval
  away (the timer never spins); likewise a probe moves the liveness deadline
  to ``ping_timeout`` away, and anything heard moves it back to
  ``ping_interval`` away;
* both clocks restart when a connection opens: silence before a connection
  existed is never held against it.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from ._config import ConnectionConfig

__all__ = ["KEEPALIVE_PING", "LIVENESS_PING", "Check", "Liveness"]

#: Payload of the keepalive ping (Opus sessions).
KEEPALIVE_PING: Final = b"pulse-keepalive"
#: Payload of the liveness probe.
LIVENESS_PING: Final = b"pulse-liveness"


class Check(enum.Enum):
    """What the liveness rule asks for now."""

    NOTHING = "nothing"
    PING = "ping"
    DEAD = "dead"


class Liveness:
    """Keepalive and liveness timing of the live connection."""

    __slots__ = (
        "_interval",
        "_ping_interval",
        "_ping_timeout",
        "count",
        "last_heard",
        "last_wire",
        "messages",
        "probe_sent",
        "silence",
        "silence_ticks",
    )

    def __init__(self, config: ConnectionConfig) -> None:
        self._interval = config.keepalive_interval
        self._ping_interval = config.ping_interval
        self._ping_timeout = config.ping_timeout
        #: The keepalive silence (``None``: send a ping instead).
        self.silence = config.encoding.silence(config.sample_rate, config.keepalive_silence)
        width = config.encoding.sample_width or 1
        #: Connection ticks one keepalive silence adds.
        self.silence_ticks = len(self.silence) // width if self.silence else 0
        #: When audio or a keepalive last went out on the socket.
        self.last_wire = 0.0
        #: Messages heard on this connection.
        self.messages = 0
        #: When anything (a message or a pong) last came in from the server.
        self.last_heard = -math.inf
        #: When the unanswered liveness ping went out (``None``: none is).
        self.probe_sent: float | None = None
        #: Keepalives sent this session.
        self.count = 0

    def opened(self, now: float) -> None:
        """A connection opened at ``now``: both clocks start here."""
        self.last_wire = now
        self.messages = 0
        self.last_heard = now
        self.probe_sent = None

    def wrote(self, now: float) -> None:
        """Audio went out on the socket."""
        self.last_wire = now

    def received(self, now: float) -> None:
        """A message came in from the server."""
        self.messages += 1
        self.heard(now)

    def heard(self, now: float) -> None:
        """A message or a pong came in from the server: it is alive."""
        self.last_heard = now
        self.probe_sent = None

    # -- keepalive --------------------------------------------------------------

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

    # -- liveness ---------------------------------------------------------------

    def check_deadline(self) -> float:
        """When the liveness rule next has something to decide."""
        if self.probe_sent is not None:
            return self.probe_sent + self._ping_timeout
        return self.last_heard + self._ping_interval

    def check(self, now: float) -> Check:
        """Whether to probe the server now, or to give the connection up."""
        if now < self.check_deadline():
            return Check.NOTHING
        if self.probe_sent is None:
            self.probe_sent = now
            return Check.PING
        return Check.DEAD
