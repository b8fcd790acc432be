"""``Liveness`` on its own: when a keepalive is due and what it is.

Invariants checked (pulse_core/_liveness.py):

* the next keepalive is due ``keepalive_interval`` after anything last went
  out (audio or a keepalive); a keepalive moves that clock to ``now``, so the
  next one is a whole interval away and the timer never spins;
* ``last_heard`` starts at minus infinity and is reset when a connection
  opens, so silence before a connection existed is never held against it;
  ``messages`` counts the messages (not pongs) of the connection;
* liveness: nothing heard (no message, no pong) for ``ping_interval`` asks
  for one probe; nothing heard ``ping_timeout`` after the probe means dead;
  anything heard, or a new connection, starts over;
* the keepalive is ``keepalive_silence`` seconds of the encoding's silence
  (its bytes are ``Encoding.silence``'s, tested with the encodings), or
  ``None`` (a ping) for Opus, and ``silence_ticks`` is how much connection
  time it adds.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core._liveness import Check, Liveness
from tests.core.engine import config


def make(**overrides: object) -> Liveness:
    return Liveness(config(**overrides))


def test_clocks_start_when_a_connection_opens() -> None:
    liveness = make(keepalive_interval=5.0)
    assert (liveness.last_heard, liveness.messages) == (-math.inf, 0)
    assert (liveness.last_wire, liveness.count) == (0.0, 0)
    liveness.opened(100.0)
    assert (liveness.last_wire, liveness.last_heard) == (100.0, 100.0)
    assert liveness.deadline() == 105.0
    liveness.received(101.0)
    assert (liveness.messages, liveness.last_heard) == (1, 101.0)
    liveness.heard(102.0)  # a pong: the server is alive, but sent no message
    assert (liveness.messages, liveness.last_heard) == (1, 102.0)
    liveness.opened(200.0)  # a new connection: earlier silence does not count
    assert (liveness.messages, liveness.last_heard) == (0, 200.0)


def test_a_keepalive_is_due_an_interval_after_the_last_audio() -> None:
    liveness = make(keepalive_interval=5.0)
    liveness.opened(0.0)
    liveness.wrote(3.0)
    assert liveness.deadline() == 8.0
    assert not liveness.due(7.999)
    assert liveness.due(8.0)
    # What comes in from the server does not move it.
    liveness.heard(7.5)
    assert liveness.deadline() == 8.0


def test_a_keepalive_puts_the_next_one_a_whole_interval_away() -> None:
    liveness = make(keepalive_interval=5.0)
    liveness.opened(0.0)
    assert liveness.keepalive(12.0) is not None  # late: sent when it is handled
    assert liveness.count == 1
    assert liveness.deadline() == 17.0
    assert not liveness.due(16.9)
    liveness.keepalive(17.0)
    assert (liveness.count, liveness.deadline()) == (2, 22.0)


@pytest.mark.parametrize(
    ("encoding", "rate", "seconds", "ticks", "width"),
    [
        ("mulaw", 8000, 0.25, 2000, 1),
        ("alaw", 8000, 0.1, 800, 1),
        ("linear16", 16000, 0.1, 1600, 2),
        ("linear16", 44100, 0.1, 4410, 2),
        ("linear32", 24000, 0.02, 480, 4),
    ],
)
def test_a_keepalive_is_keepalive_silence_long(
    encoding: str, rate: int, seconds: float, ticks: int, width: int
) -> None:
    liveness = make(encoding=encoding, sample_rate=rate, keepalive_silence=seconds)
    silence = liveness.keepalive(1.0)
    assert silence is not None
    assert len(silence) == ticks * width
    assert liveness.silence_ticks == ticks


@pytest.mark.parametrize("encoding", ["opus", "ogg_opus"])
def test_opus_keepalives_are_pings(encoding: str) -> None:
    liveness = make(encoding=encoding, sample_rate=48000)
    assert liveness.silence is None
    assert liveness.silence_ticks == 0
    assert liveness.keepalive(1.0) is None
    assert liveness.count == 1


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(0.01, 30),
    writes=st.lists(st.floats(0, 5), max_size=20),
)
def test_the_timer_never_spins(interval: float, writes: list[float]) -> None:
    """Handling every due keepalive leaves the next deadline in the future."""
    liveness = make(keepalive_interval=interval)
    now = 0.0
    liveness.opened(now)
    for gap in writes:
        now += gap
        if liveness.due(now):
            liveness.keepalive(now)
            assert not liveness.due(now)
            assert liveness.deadline() > now
        else:
            liveness.wrote(now)
        assert liveness.last_wire == now


# -- liveness ----------------------------------------------------------------------


def test_a_silent_server_is_probed_once_then_given_up() -> None:
    liveness = make(ping_interval=5.0, ping_timeout=3.0)
    liveness.opened(10.0)
    assert liveness.check_deadline() == 15.0
    assert liveness.check(14.9) is Check.NOTHING
    assert liveness.check(15.2) is Check.PING  # late: the probe goes when handled
    assert liveness.probe_sent == 15.2
    assert liveness.check_deadline() == 18.2  # ping_timeout after the probe
    assert liveness.check(18.1) is Check.NOTHING
    assert liveness.check(18.2) is Check.DEAD


def test_anything_heard_starts_over() -> None:
    liveness = make(ping_interval=5.0, ping_timeout=3.0)
    liveness.opened(0.0)
    assert liveness.check(5.0) is Check.PING
    liveness.heard(6.0)  # the pong
    assert liveness.probe_sent is None
    assert liveness.check_deadline() == 11.0
    assert liveness.check(8.9) is Check.NOTHING
    assert liveness.check(11.0) is Check.PING
    liveness.received(12.0)  # a message counts as much as a pong
    assert (liveness.probe_sent, liveness.check_deadline()) == (None, 17.0)


def test_a_pong_is_not_a_message() -> None:
    # The stalled-finalize rule looks at messages only: a server whose WebSocket
    # layer answers pings but whose recogniser says nothing is still stalled.
    liveness = make()
    liveness.opened(0.0)
    liveness.heard(3.0)
    assert (liveness.messages, liveness.last_heard) == (0, 3.0)


def test_a_new_connection_forgets_an_unanswered_probe() -> None:
    liveness = make(ping_interval=5.0, ping_timeout=3.0)
    liveness.opened(0.0)
    assert liveness.check(5.0) is Check.PING
    liveness.opened(6.0)
    assert liveness.probe_sent is None
    assert liveness.check(8.5) is Check.NOTHING  # not DEAD: the old probe is gone
    assert liveness.check_deadline() == 11.0


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(0.01, 30),
    timeout=st.floats(0.01, 30),
    events=st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=30),
)
def test_each_check_moves_its_deadline_past_now(
    interval: float, timeout: float, events: list[tuple[float, bool]]
) -> None:
    """Whatever the rule answers, the next decision is in the future (or the
    connection is dead and goes), so a timer driven by it never spins."""
    liveness = make(ping_interval=interval, ping_timeout=timeout)
    now = 0.0
    liveness.opened(now)
    for gap, heard in events:
        now += gap
        if heard:
            liveness.heard(now)
        answer = liveness.check(now)
        if answer is Check.DEAD:
            return
        assert liveness.check_deadline() > now
