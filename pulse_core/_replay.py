"""Replay: what a socket is sent when it did not carry the session so far
(spec/PROTOCOL.md §6 rules 6 and 7).

After a reconnect or a settings switch the new socket gets, before any new
audio, every frame the server has not confirmed with a delivered final (the
ledger knows which) with the finalizes still owed placed exactly where their
turns end, so each is answered by a final covering the same audio as before.
When a settings switch is abandoned by ``close()``, the live socket gets what
was held back from it instead (:func:`send_held`).

Both keep the timeline right: a new socket's clock starts at the first tick it
is sent; held audio that the replay bound dropped becomes a jump.
"""

from __future__ import annotations

from ._commands import FINALIZE, Command, SendBinary, SendText
from ._ledger import AudioLedger
from ._timeline import Timeline
from ._turns import Turns

__all__ = ["replay", "send_held"]


def replay(now: float, ledger: AudioLedger, turns: Turns, timeline: Timeline) -> list[Command]:
    """The commands that bring a fresh socket up to the session's position.

    A turn whose finalize timed out unanswered and whose audio is replayed is
    asked for again (``Turns.reask``), so its text comes now. The socket is
    fresh: no message was heard on it before these finalizes.
    """
    commands: list[Command] = []
    headers = ledger.stream_headers
    if headers:
        # A new connection is a new Ogg stream: it needs the header pages.
        commands.append(SendBinary(headers))
    turns.reask(now, ledger.replay_from)
    origin: int | None = None
    ticks = 0
    last = ledger.max_sent
    for start, first, end, data in ledger.replay_frames():
        for request in turns.owed_before(start):
            commands.append(SendText(FINALIZE))
            turns.sent(now, request)
        if origin is None:
            origin = first
        commands.append(SendBinary(data))
        ticks += end - first
        last = max(last, end)
    for request in turns.take_owed():
        commands.append(SendText(FINALIZE))
        turns.sent(now, request)
    timeline.restart(ledger.received - ticks if origin is None else origin, ticks)
    ledger.sent(ledger.received)
    ledger.max_sent = last
    return commands


def send_held(
    now: float, ledger: AudioLedger, turns: Turns, timeline: Timeline, *, heard: int = 0
) -> list[Command]:
    """The frames and finalizes held back from the live socket (a settings
    drain), in order, so it can carry the session to its end. ``heard``: the
    messages that socket brought so far (for the stalled-finalize rule)."""
    commands: list[Command] = []
    expected = ledger.sent_upto
    for start, end, data in ledger.unsent_frames():
        for request in turns.owed_before(start):
            commands.append(SendText(FINALIZE))
            turns.sent(now, request, heard=heard)
        if start > expected:
            # Held audio was dropped (replay bound): the session jumps ahead
            # while this socket's clock does not.
            timeline.jump(start - expected)
        expected = end
        commands.append(SendBinary(data))
        timeline.advance(end - start)
        ledger.max_sent = max(ledger.max_sent, end)
    for request in turns.take_owed():
        commands.append(SendText(FINALIZE))
        turns.sent(now, request, heard=heard)
    ledger.sent_upto = ledger.received
    return commands
