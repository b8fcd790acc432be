"""What the engine does between its parts, for tests that drive the parts
on their own (pulse_core/_connection.py, pulse_core/_outbound.py)."""

from __future__ import annotations

from pulse_core._ledger import AudioLedger, Frame
from pulse_core._timeline import Timeline

__all__ = ["add_frame"]


def add_frame(
    ledger: AudioLedger,
    data: bytes,
    ticks: int,
    *,
    streaming: bool = False,
    live: bool = False,
    timeline: Timeline | None = None,
) -> Frame:
    """Add a cut frame as ``Outbound.frames`` does; returns it.

    ``live``: a socket is open; ``streaming``: the frame goes out on it now
    (not held back by a settings drain), so the ledger counts it as sent and
    ``timeline``, if given, moves on. Then the replay bound is kept: evicted
    audio the live socket has is only a gap, anything else is dropped and,
    with a socket open, reported at once.
    """
    assert live or not streaming, "only a live socket is sent audio"
    frame = ledger.append(data, ticks)
    if streaming:
        ledger.sent(frame[1])
        if timeline is not None:
            timeline.advance(ticks)
    if ledger.over_bound:
        ledger.evict(live=live)
        if live:
            ledger.report_drop()
    return frame
