"""``Outbound``: what the live socket is sent, and what each send changes
(spec/PROTOCOL.md §5; §6 rules 1, 2, 3, 4, 6 and 10).

Anything that goes out on the live socket moves several parts at once, always
the same ones, so each kind of send is done here, in one place:

* a frame of the application's audio: the ledger counts it sent, the
  timeline's connection clock moves with session time, and the keepalive is
  pushed back (``Liveness.wrote``); a frame made while nothing streams is only
  kept, and either way the replay bound is then enforced;
* a keepalive: silence moves the connection's clock only, never session time
  (the timeline marks it); Opus has no byte-level silence, so it is a ping;
* a finalize: ``Turns`` counts it in flight, with the messages the socket
  brought so far (the stalled-socket rule compares against them);
* a fresh socket's replay and a drained socket's held audio (``_replay``),
  which do the same for each frame and finalize they send.

The conductor decides whether to send (the state table); this room does the
send's bookkeeping and returns the commands, queueing nothing itself.

Invariants:

* while :attr:`streaming`, every frame is sent the moment it is made, so the
  socket's clock (``Timeline.ticks``) covers exactly the audio, replay and
  keepalive silence it was sent;
* keepalive silence never moves session time: a time the server gives after
  it maps back by the silence's length;
* audio written to the socket always pushes the keepalive back; a ping does
  not need to.
"""

from __future__ import annotations

from ._commands import FINALIZE, Command, SendBinary, SendPing, SendText
from ._ledger import AudioLedger
from ._liveness import KEEPALIVE_PING, Liveness
from ._replay import replay, send_held
from ._timeline import Timeline
from ._turns import Finalize, Turns

__all__ = ["Outbound"]


class Outbound:
    """The outgoing side of the live socket."""

    __slots__ = ("_ledger", "_liveness", "_timeline", "_turns", "streaming")

    def __init__(
        self, ledger: AudioLedger, timeline: Timeline, liveness: Liveness, turns: Turns
    ) -> None:
        self._ledger = ledger
        self._timeline = timeline
        self._liveness = liveness
        self._turns = turns
        #: The socket is open and takes new audio as it comes (not while a
        #: settings switch holds it back, nor after ``close_stream``).
        self.streaming = False

    def frames(self, now: float, frames: list[tuple[bytes, int]], *, live: bool) -> list[Command]:
        """Cut frames of ``(data, ticks)`` join the session: sent when
        streaming, kept for replay either way. ``live``: a socket is open, so
        evicted audio it was sent is only lost if it dies unconfirmed."""
        ledger = self._ledger
        commands: list[Command] = []
        for data, ticks in frames:
            _, end, _ = ledger.append(data, ticks)
            if self.streaming:
                commands.append(SendBinary(data))
                ledger.sent(end)
                self._timeline.advance(ticks)
                self._liveness.wrote(now)
            if ledger.over_bound:
                ledger.evict(live=live)
                if live:
                    ledger.report_drop()
        return commands

    def finalize(self, now: float, request: Finalize) -> Command:
        """``request`` goes out on the live socket."""
        self._turns.sent(now, request, heard=self._liveness.messages)
        return SendText(FINALIZE)

    def keepalive(self, now: float) -> Command:
        """No audio went out for a keepalive interval: silence, or a ping."""
        silence = self._liveness.keepalive(now)
        if silence is None:
            # Opus has no byte-level silence; a ping keeps the socket alive.
            return SendPing(KEEPALIVE_PING)
        # The silence shifts the server's clock but not the session's.
        self._timeline.silence(self._liveness.silence_ticks)
        return SendBinary(silence)

    def opened(self, now: float) -> list[Command]:
        """A socket opened: bring it up to the session's position, then stream."""
        commands = replay(now, self._ledger, self._turns, self._timeline)
        if self._timeline.ticks:
            self._liveness.wrote(now)
        self.streaming = True
        return commands

    def held(self, now: float) -> list[Command]:
        """What a settings switch held back from the live socket, which is to
        carry the session to its end after all."""
        commands = send_held(
            now, self._ledger, self._turns, self._timeline, heard=self._liveness.messages
        )
        if any(isinstance(command, SendBinary) for command in commands):
            self._liveness.wrote(now)
        return commands
