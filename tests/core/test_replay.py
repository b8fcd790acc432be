"""``replay`` and ``send_held`` on their own: what a socket is sent to catch up.

Invariants checked (pulse_core/_replay.py):

* a fresh socket gets every frame from ``replay_from`` on, in order, a partly
  confirmed PCM frame trimmed to its unconfirmed part (a compressed one whole),
  with Ogg header pages first;
* each owed finalize goes out exactly where its turn ends (before the first
  frame starting at or after its position), the rest after the last frame, and
  each becomes in flight; a turn whose request timed out unanswered and whose
  audio is replayed is asked for again;
* the timeline restarts at the first tick sent (or at the write position when
  nothing is replayed) with the replayed ticks on the wire; the ledger then
  counts everything received as sent;
* ``send_held`` sends what a settings drain held back, with owed finalizes in
  place, and a jump in the timeline where the replay bound dropped held audio.
"""

from __future__ import annotations

import pytest

from pulse_core import SendBinary, SendText
from pulse_core._commands import FINALIZE, Command
from pulse_core._ledger import AudioLedger
from pulse_core._replay import replay, send_held
from pulse_core._timeline import Timeline
from pulse_core._turns import Latency, Turns
from tests.core.engine import config
from tests.core.ogg import HEADERS, audio_page, toc
from tests.core.parts import add_frame

F = SendText(FINALIZE)


class Session:
    """The three parts replay works on, put together as the engine does."""

    def __init__(self, encoding: str = "mulaw", sample_rate: int = 8000, **overrides: object):
        options = config(encoding=encoding, sample_rate=sample_rate, max_chunk_delay=0, **overrides)
        self.tps = options.ticks_per_second
        self.ledger = AudioLedger(options, lambda drop: None)
        self.turns = Turns(timeout=5.0, max_pending=64, latency=Latency(10, 1.0))
        self.timeline = Timeline(self.tps)
        self.streaming = False
        self.live = False

    def audio(self, data: bytes) -> list[bytes]:
        """Give audio; returns the frames cut from it."""
        frames = []
        for frame, ticks in self.ledger.hold(0.0, data):
            add_frame(
                self.ledger,
                frame,
                ticks,
                streaming=self.streaming,
                live=self.live,
                timeline=self.timeline,
            )
            frames.append(frame)
        return frames

    def finalize(self, now: float = 0.0) -> int:
        request = self.turns.open(now, self.ledger.received, user=True)
        assert request is not None
        if self.streaming:
            self.turns.sent(now, request)
        else:
            self.turns.owe(request)
        return request.turn

    def open(self, now: float = 1.0) -> list[Command]:
        commands = replay(now, self.ledger, self.turns, self.timeline)
        self.streaming = self.live = True
        return commands

    def lose(self) -> None:
        self.turns.socket_ended()
        self.ledger.socket_ended()
        self.streaming = self.live = False

    def answered(self, now: float) -> int:
        """The turn the next final answers."""
        answer = self.turns.answer(now, True)
        assert answer is not None
        return answer.turn

    def at(self, ticks: float, *, end: bool = False) -> float:
        return self.timeline.session_ticks(ticks / self.tps, end=end)


def frames(*sizes: int, start: int = 1) -> list[bytes]:
    return [bytes([start + n]) * size for n, size in enumerate(sizes)]


# -- replay -----------------------------------------------------------------------------


def test_the_first_socket_gets_everything_with_finalizes_where_turns_end() -> None:
    session = Session()
    a, b, c, d = frames(10, 10, 10, 10)
    session.audio(a)
    first = session.finalize()
    session.audio(b)
    session.audio(c)
    second = session.finalize()
    session.audio(d)
    third = session.finalize()
    commands = session.open(now=2.0)
    assert commands == [
        SendBinary(a),
        F,
        SendBinary(b),
        SendBinary(c),
        F,
        SendBinary(d),
        F,
    ]
    assert (first, second, third) == (1, 2, 3)
    # Every owed request is now in flight, answered in order.
    assert not session.turns.owed
    assert [session.answered(3.0) for _ in range(3)] == [1, 2, 3]
    ledger = session.ledger
    assert (ledger.sent_upto, ledger.max_sent, ledger.received) == (40, 40, 40)
    assert (session.timeline.ticks, session.at(0)) == (40, 0)


def test_a_new_socket_starts_at_replay_from_with_a_partly_confirmed_frame_trimmed() -> None:
    session = Session("linear16")
    session.open()
    a, b = bytes(range(20)), bytes(range(20, 40))
    session.audio(a)
    session.audio(b)
    session.ledger.confirm(4)  # an automatic final, mid-frame
    session.lose()
    commands = session.open(now=3.0)
    assert commands == [SendBinary(a[8:]), SendBinary(b)]
    # The new connection's clock starts at the first tick sent.
    assert session.timeline.ticks == 16
    assert session.at(0) == 4
    assert session.at(16, end=True) == 20
    assert (session.ledger.sent_upto, session.ledger.max_sent) == (20, 20)


def test_a_partly_confirmed_compressed_frame_is_replayed_whole() -> None:
    session = Session("opus", 48000)
    session.open()
    packet = bytes([toc(0, 1)]) + bytes(20)  # two 10 ms frames: 960 ticks
    session.audio(packet)
    session.ledger.confirm(480)
    session.lose()
    assert session.open() == [SendBinary(packet)]
    assert (session.timeline.ticks, session.at(0)) == (960, 0)


def test_ogg_header_pages_come_first() -> None:
    session = Session("ogg_opus", 48000)
    pages = [audio_page(960, 2), audio_page(1920, 3)]
    session.audio(HEADERS + b"".join(pages))
    assert session.open() == [SendBinary(HEADERS), SendBinary(pages[0]), SendBinary(pages[1])]
    session.ledger.confirm(1920)
    session.lose()
    # Nothing left to replay, but a new connection is a new Ogg stream.
    assert session.open() == [SendBinary(HEADERS)]


def test_with_nothing_to_replay_the_clock_starts_at_the_write_position() -> None:
    session = Session()
    session.open()
    session.audio(bytes(30))
    turn = session.finalize()
    session.ledger.confirm(30)
    session.lose()  # the request is owed again: its final never came
    assert session.open(now=4.0) == [F]
    assert session.answered(5.0) == turn
    assert (session.timeline.ticks, session.at(5)) == (0, 35)
    assert session.ledger.sent_upto == 30


def test_a_timed_out_turn_whose_audio_is_replayed_is_asked_for_again() -> None:
    session = Session()
    session.open()
    a, b = frames(10, 10)
    session.audio(a)
    turn = session.finalize(now=0.0)
    session.audio(b)
    request = session.turns.due(5.0)
    assert request is not None and request.turn == turn
    session.turns.time_out(5.0, request, "no final")
    session.lose()
    commands = session.open(now=6.0)
    assert commands == [SendBinary(a), F, SendBinary(b)]
    answer = session.turns.answer(7.0, True)
    assert answer is not None
    assert (answer.turn, answer.position, answer.late, answer.latency) == (
        turn + 1,
        10,
        False,
        None,
    )


def test_no_reask_when_the_turn_was_confirmed() -> None:
    session = Session()
    session.open()
    a, b = frames(10, 10)
    session.audio(a)
    session.finalize()
    session.audio(b)
    request = session.turns.next()
    assert request is not None
    session.turns.time_out(5.0, request, "no final")
    session.ledger.confirm(10)  # a later final covered the turn after all
    session.lose()
    assert session.open() == [SendBinary(b)]
    assert session.turns.answer(6.0, None) is None  # no finalize was sent again


def test_max_sent_remembers_the_furthest_any_socket_got() -> None:
    session = Session(replay_seconds=0.0025)  # 20 bytes kept
    session.open()
    session.audio(bytes(10))
    session.audio(bytes(10))
    session.lose()
    session.audio(bytes(10))  # no socket: the oldest frame is dropped
    session.open()
    assert session.ledger.max_sent == 30
    assert session.at(0) == 10


def test_audio_dropped_before_any_socket_had_it_never_counts_as_sent() -> None:
    session = Session(replay_seconds=0.0025)  # 20 bytes kept
    session.open()
    session.audio(bytes(10))
    session.lose()
    session.audio(bytes(30))  # a frame larger than the bound: dropped whole
    assert session.open() == []
    ledger = session.ledger
    assert (ledger.sent_upto, ledger.max_sent) == (40, 10)
    assert (session.timeline.ticks, session.at(0)) == (0, 40)


# -- send_held ---------------------------------------------------------------------------


def test_send_held_sends_what_a_drain_held_back_with_its_finalizes() -> None:
    session = Session()
    session.open()
    a, b, c = frames(10, 10, 10)
    session.audio(a)
    session.streaming = False  # a settings drain: audio is held back
    session.audio(b)
    turn = session.finalize()
    session.audio(c)
    commands = send_held(2.0, session.ledger, session.turns, session.timeline)
    assert commands == [SendBinary(b), F, SendBinary(c)]
    assert session.answered(2.5) == turn
    assert (session.ledger.sent_upto, session.ledger.max_sent) == (30, 30)
    assert session.timeline.ticks == 30
    assert session.timeline.marks == 0  # nothing was dropped: no jump


def test_send_held_jumps_over_held_audio_the_bound_dropped() -> None:
    session = Session(replay_seconds=0.0025)  # 20 bytes kept
    session.open()
    a, b, c, d = frames(10, 10, 10, 10)
    session.audio(a)
    session.streaming = False
    session.audio(b)
    session.audio(c)  # "a" (on the socket) is evicted: a gap
    session.audio(d)  # "b" (held back) is evicted: dropped
    session.finalize()
    commands = send_held(2.0, session.ledger, session.turns, session.timeline)
    assert commands == [SendBinary(c), SendBinary(d), F]
    timeline = session.timeline
    assert (timeline.ticks, timeline.marks) == (30, 1)
    # Connection tick 10 is where "a" ended and "c" began: session 10 and 20.
    assert session.at(10, end=True) == 10
    assert session.at(10) == 20
    assert session.at(15) == 25
    assert session.at(8) == 20  # a start just before the jump snaps after it
    assert session.at(12, end=True) == 10  # an end just after it snaps before
    assert session.ledger.sent_upto == 40


def test_send_held_with_nothing_held_sends_the_owed_finalizes() -> None:
    session = Session()
    session.open()
    session.audio(bytes(10))
    session.streaming = False
    session.finalize()
    assert send_held(1.0, session.ledger, session.turns, session.timeline) == [F]
    assert session.turns.awaiting


@pytest.mark.parametrize("held", [1, 2, 3])
def test_send_held_puts_each_finalize_before_the_first_frame_after_its_turn(held: int) -> None:
    session = Session()
    session.open()
    session.audio(bytes(10))
    session.streaming = False
    expected: list[Command] = []
    for n in range(held):
        frame = bytes([n + 1]) * 10
        session.audio(frame)
        session.finalize()
        expected += [SendBinary(frame), F]
    assert send_held(1.0, session.ledger, session.turns, session.timeline) == expected
