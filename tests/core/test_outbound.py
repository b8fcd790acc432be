"""``Outbound`` on its own: what the live socket is sent, and what each send changes.

Invariants checked (pulse_core/_outbound.py):

* a frame made while streaming is sent at once: the ledger counts it sent,
  the connection's clock moves by its ticks and the keepalive is pushed back;
  a frame made while nothing streams is only kept, and moves none of them;
* the replay bound is enforced after every frame: audio a live socket was
  sent is only a gap when evicted, anything else is reported dropped at once;
* a keepalive is the encoding's silence, which moves the connection's clock
  and not session time, or a ping for Opus, which moves no clock but the
  keepalive's;
* a finalize goes out counted in flight with the messages heard so far;
* a socket that opens is sent the replay and then streams; held audio sent
  to a drained socket pushes the keepalive back only when there was audio,
  and its finalizes count the messages that socket brought.
"""

from __future__ import annotations

from typing import Any

from pulse_core import AudioDropped, DropReason, SendBinary, SendPing, SendText
from pulse_core._commands import FINALIZE
from pulse_core._ledger import AudioLedger
from pulse_core._liveness import KEEPALIVE_PING, Liveness
from pulse_core._outbound import Outbound
from pulse_core._timeline import Timeline
from pulse_core._turns import Latency, Turns
from tests.core.engine import config


class Parts:
    """An ``Outbound`` over fresh parts, one tick per byte (mu-law, 8 kHz)."""

    def __init__(self, **overrides: Any) -> None:
        options = config(**{"encoding": "mulaw", "sample_rate": 8000, **overrides})
        self.drops: list[AudioDropped] = []
        self.ledger = AudioLedger(options, self.drops.append)
        self.timeline = Timeline(options.ticks_per_second)
        self.liveness = Liveness(options)
        self.turns = Turns(timeout=5.0, max_pending=8, latency=Latency(10, 1.0))
        self.out = Outbound(self.ledger, self.timeline, self.liveness, self.turns)


def test_nothing_streams_until_a_socket_opens() -> None:
    parts = Parts()
    assert parts.out.streaming is False
    assert parts.out.frames(1.0, [(b"\x01" * 80, 80)], live=False) == []
    assert (parts.ledger.received, parts.ledger.sent_upto, parts.timeline.ticks) == (80, 0, 0)
    assert parts.liveness.last_wire == 0.0
    assert parts.out.opened(2.0) == [SendBinary(b"\x01" * 80)]  # the replay
    assert parts.out.streaming is True
    assert (parts.ledger.sent_upto, parts.timeline.ticks, parts.liveness.last_wire) == (80, 80, 2.0)


def test_a_socket_opening_with_nothing_to_replay_is_not_written_to() -> None:
    parts = Parts()
    parts.liveness.opened(2.0)
    assert parts.out.opened(3.0) == []
    assert (parts.out.streaming, parts.liveness.last_wire) == (True, 2.0)


def test_while_streaming_every_frame_goes_out_at_once() -> None:
    parts = Parts()
    parts.out.opened(0.0)
    frames = [(b"\x01" * 80, 80), (b"\x02" * 40, 40)]
    assert parts.out.frames(3.0, frames, live=True) == [SendBinary(data) for data, _ in frames]
    assert (parts.ledger.sent_upto, parts.ledger.max_sent) == (120, 120)
    assert (parts.timeline.ticks, parts.liveness.last_wire) == (120, 3.0)
    assert parts.timeline.session_time(0.01) == 0.01  # no mark: the clocks move together


def test_a_frame_held_back_from_a_live_socket_is_not_sent() -> None:
    parts = Parts()
    parts.out.opened(0.0)
    parts.out.streaming = False  # a settings switch holds new audio back
    assert parts.out.frames(1.0, [(b"\x01" * 80, 80)], live=True) == []
    assert (parts.ledger.sent_upto, parts.timeline.ticks) == (0, 0)
    assert parts.out.held(2.0) == [SendBinary(b"\x01" * 80)]
    assert (parts.ledger.sent_upto, parts.timeline.ticks, parts.liveness.last_wire) == (80, 80, 2.0)


def test_held_with_no_audio_does_not_push_the_keepalive_back() -> None:
    parts = Parts()
    parts.out.opened(0.0)
    parts.out.frames(1.0, [(b"\x01" * 80, 80)], live=True)
    parts.out.streaming = False
    assert parts.out.held(2.0) == []
    request = parts.turns.open(3.0, parts.ledger.received, user=False)
    assert request is not None
    parts.turns.owe(request)  # held back too: only a finalize is to be sent
    parts.liveness.received(3.5)
    assert parts.out.held(4.0) == [SendText(FINALIZE)]
    assert (parts.liveness.last_wire, request.sent_at, request.heard) == (1.0, 4.0, 1)


def test_evicted_audio_the_live_socket_has_is_only_a_gap() -> None:
    parts = Parts(replay_seconds=0.01)  # 80 ticks kept
    parts.out.opened(0.0)
    parts.out.frames(1.0, [(b"\x01" * 80, 80), (b"\x02" * 80, 80)], live=True)
    assert parts.drops == []  # the socket has it: lost only if it dies unconfirmed
    parts.ledger.socket_ended()
    parts.ledger.report_drop()
    assert [(drop.bytes, drop.reason) for drop in parts.drops] == [(80, DropReason.REPLAY_OVERFLOW)]


def test_evicted_audio_no_socket_has_is_dropped_at_once_on_a_live_socket() -> None:
    parts = Parts(replay_seconds=0.01)
    parts.out.opened(0.0)
    parts.out.streaming = False  # held back: the socket never had it
    parts.out.frames(1.0, [(b"\x01" * 80, 80), (b"\x02" * 80, 80)], live=True)
    assert [(drop.bytes, drop.start) for drop in parts.drops] == [(80, 0.0)]


def test_evicted_audio_with_no_socket_is_reported_when_one_opens() -> None:
    parts = Parts(replay_seconds=0.01)
    parts.out.frames(1.0, [(b"\x01" * 80, 80), (b"\x02" * 80, 80)], live=False)
    assert parts.drops == []  # merged with what follows until the loss is final
    parts.ledger.report_drop()
    assert [drop.bytes for drop in parts.drops] == [80]


def test_a_keepalive_is_silence_that_moves_only_the_connections_clock() -> None:
    parts = Parts(keepalive_silence=0.1)
    parts.out.opened(0.0)
    parts.out.frames(0.5, [(b"\x01" * 80, 80)], live=True)
    assert parts.out.keepalive(5.5) == SendBinary(b"\xff" * 800)
    assert (parts.timeline.ticks, parts.liveness.last_wire, parts.liveness.count) == (880, 5.5, 1)
    # A time after the silence maps back by its length.
    assert round(parts.timeline.session_ticks(0.11)) == 80
    assert parts.ledger.sent_upto == 80  # the session's audio did not move


def test_an_opus_keepalive_is_a_ping() -> None:
    parts = Parts(encoding="opus", sample_rate=48000)
    parts.out.opened(0.0)
    assert parts.out.keepalive(5.0) == SendPing(KEEPALIVE_PING)
    assert (parts.timeline.ticks, parts.liveness.last_wire, parts.liveness.count) == (0, 5.0, 1)


def test_a_finalize_goes_out_with_the_messages_heard_so_far() -> None:
    parts = Parts()
    parts.out.opened(0.0)
    parts.out.frames(0.5, [(b"\x01" * 80, 80)], live=True)
    parts.liveness.received(0.6)
    parts.liveness.received(0.7)
    request = parts.turns.open(1.0, parts.ledger.received, user=True)
    assert request is not None
    assert parts.out.finalize(1.0, request) == SendText(FINALIZE)
    assert (request.sent_at, request.heard, parts.turns.awaiting) == (1.0, 2, True)
