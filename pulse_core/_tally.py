"""``Tally``: the session's own counts, and its summary (``SessionSummary``).

Most of what ``Closed.summary`` reports is counted by the part that does the
work: the ledger counts audio received, sent and dropped, ``Turns`` the turns
and their latency, ``Liveness`` the keepalives. The counts that belong to no
part are kept here (connections, reconnects, finals), and the summary of them
all is put together here, in one place.

Invariants:

* ``connections`` counts sockets that opened, and numbers them: the live
  socket is number ``connections``;
* ``reconnects`` counts the sockets that opened after a failure (an attempt
  that failed, or a socket lost), not those that replaced a socket on purpose
  (a settings switch) or the first one;
* ``finals`` counts the finals delivered as a ``Transcript``: a final that
  repeats transcribed words is not one (PROTOCOL §5).
"""

from __future__ import annotations

from ._events import SessionSummary
from ._ledger import AudioLedger
from ._liveness import Liveness
from ._turns import Turns

__all__ = ["Tally"]


class Tally:
    """Connections, reconnects and finals of one session."""

    __slots__ = ("_failed", "_tps", "connections", "finals", "reconnects")

    def __init__(self, ticks_per_second: int) -> None:
        self._tps = ticks_per_second
        self._failed = False  # the next socket to open is a reconnect
        self.connections = 0
        self.reconnects = 0
        self.finals = 0

    def failed(self) -> None:
        """An attempt failed or a socket was lost, and another attempt follows."""
        self._failed = True

    def opened(self) -> bool:
        """A socket opened: whether it is a reconnect."""
        self.connections += 1
        reconnect = self._failed
        if reconnect:
            self.reconnects += 1
            self._failed = False
        return reconnect

    def final(self) -> None:
        """A final is delivered."""
        self.finals += 1

    def summary(self, ledger: AudioLedger, turns: Turns, liveness: Liveness) -> SessionSummary:
        """What has happened so far, from every part's counts."""
        tps = self._tps
        return SessionSummary(
            audio_seconds_received=ledger.received / tps,
            audio_seconds_sent=ledger.max_sent / tps,
            finals=self.finals,
            finalized_turns=turns.finalized,
            timed_out_turns=turns.timed_out,
            connections=self.connections,
            reconnects=self.reconnects,
            dropped_bytes=ledger.dropped_bytes,
            dropped_seconds=ledger.dropped_ticks / tps,
            keepalives=liveness.count,
            latency=turns.latency.summary(),
        )
