"""``Timeline`` on its own: the live connection's clock against session time.

Invariants checked (pulse_core/_timeline.py):

* a connection's time maps to session time from its origin (``restart``), and
  audio it carries (``advance``) moves both clocks alike;
* keepalive silence moves only the connection's clock: a time inside it maps
  to where it began, a time after it comes back by its length;
* a jump (audio dropped while held back) moves only the session's clock: a
  start within ``JUMP_SNAP`` before it is put after it, an end within
  ``JUMP_SNAP`` after it is put before it;
* past ``MAX_MARKS`` the oldest marks are folded into the base and every
  later time still maps exactly;
* mapping is monotonic for starts and for ends, and an end never maps after
  the start at the same time;
* ``session_span`` keeps a short item across a jump on one side (the one
  holding more of it), so its start never follows its end; ``words`` and
  ``utterances`` map times and keep every other field.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import RemoteProtocolError
from pulse_core._messages import Utterance, Word
from pulse_core._timeline import JUMP_SNAP, MAX_MARKS, TIME_TOLERANCE, Timeline

# One tick per millisecond: times in seconds read as ticks / 1000.
TPS = 1000


def at(timeline: Timeline, ticks: float, *, end: bool = False) -> float:
    """Session ticks of the connection time ``ticks`` (in connection ticks),
    rounded to a millionth: the round trip through seconds is not exact."""
    return round(timeline.session_ticks(ticks / TPS, end=end), 6)


def test_snap_is_ten_milliseconds() -> None:
    # The service rounds its times to 10 ms; the tests below rely on it.
    assert pytest.approx(10) == JUMP_SNAP * TPS


def test_without_marks_connection_time_is_offset_by_the_origin() -> None:
    timeline = Timeline(TPS)
    assert at(timeline, 250) == 250
    timeline.restart(1000, 40)
    assert timeline.ticks == 40
    assert at(timeline, 0) == 1000
    assert at(timeline, 250, end=True) == 1250
    assert timeline.session_time(0.25) == pytest.approx(1.25)
    timeline.advance(60)
    assert timeline.ticks == 100
    assert timeline.marks == 0


def test_keepalive_silence_maps_to_where_it_began() -> None:
    timeline = Timeline(TPS)
    timeline.restart(500, 0)
    timeline.advance(100)
    timeline.silence(50)  # connection ticks 100-150 are not session audio
    timeline.advance(100)
    assert (timeline.ticks, timeline.marks) == (250, 1)
    for end in (False, True):
        assert at(timeline, 99, end=end) == 599
        assert at(timeline, 100, end=end) == 600
        assert at(timeline, 120, end=end) == 600
        assert at(timeline, 149.5, end=end) == 600
        assert at(timeline, 150, end=end) == 600
        assert at(timeline, 200, end=end) == 650


def test_silences_add_up() -> None:
    timeline = Timeline(TPS)
    for _ in range(3):
        timeline.advance(10)
        timeline.silence(100)
    timeline.advance(10)
    assert at(timeline, 335) == 35
    assert at(timeline, 250) == 30  # inside the third silence


def _with_jump() -> Timeline:
    """Audio 0-100, then 30 ticks dropped, then audio: connection 100 is
    session 100 (an end) and 130 (a start)."""
    timeline = Timeline(TPS)
    timeline.advance(100)
    timeline.jump(30)
    timeline.advance(100)
    return timeline


def test_a_jump_moves_session_time_only() -> None:
    timeline = _with_jump()
    assert timeline.ticks == 200
    assert at(timeline, 50) == at(timeline, 50, end=True) == 50
    assert at(timeline, 150) == at(timeline, 150, end=True) == 180
    # At the jump itself one connection instant is two session instants.
    assert at(timeline, 100) == 130
    assert at(timeline, 100, end=True) == 100


def test_a_start_just_before_a_jump_snaps_after_it() -> None:
    timeline = _with_jump()
    assert at(timeline, 95) == 130
    assert at(timeline, 91) == 130
    assert at(timeline, 89) == 89  # beyond the snap
    assert at(timeline, 95, end=True) == 95  # an end before the jump stays


def test_an_end_just_after_a_jump_snaps_before_it() -> None:
    timeline = _with_jump()
    assert at(timeline, 105, end=True) == 100
    assert at(timeline, 109, end=True) == 100
    assert at(timeline, 111, end=True) == 141  # beyond the snap
    assert at(timeline, 105) == 135  # a start after the jump stays


def test_silence_after_a_jump() -> None:
    timeline = _with_jump()
    timeline.silence(50)  # connection 200-250
    timeline.advance(10)
    assert at(timeline, 220) == at(timeline, 220, end=True) == 230
    assert at(timeline, 255) == 235


def test_restart_forgets_the_marks() -> None:
    timeline = _with_jump()
    timeline.silence(5)
    timeline.restart(7, 3)
    assert (timeline.marks, timeline.ticks) == (0, 3)
    assert at(timeline, 100) == 107


def test_past_max_marks_the_oldest_fold_and_later_times_stay_exact() -> None:
    timeline = Timeline(TPS)
    timeline.restart(1000, 0)
    extra = 5
    for _ in range(MAX_MARKS + extra):
        timeline.advance(10)
        timeline.silence(2)
    timeline.advance(10)
    assert timeline.marks == MAX_MARKS
    total = MAX_MARKS + extra
    # Audio between marks: connection tick 12n + k is session tick 10n + k.
    for n in (extra, extra + 1, total // 2, total):
        assert at(timeline, 12 * n + 4) == 1000 + 10 * n + 4
        assert at(timeline, 12 * n + 4, end=True) == 1000 + 10 * n + 4
    # Inside a remembered silence: where it began.
    assert at(timeline, 12 * total - 1) == 1000 + 10 * total


def test_folding_a_jump_keeps_later_times_exact() -> None:
    timeline = Timeline(TPS)
    timeline.advance(10)
    timeline.jump(1000)
    for _ in range(MAX_MARKS):
        timeline.advance(10)
        timeline.silence(2)
    timeline.advance(10)
    assert timeline.marks == MAX_MARKS  # the jump is folded
    n = MAX_MARKS
    assert at(timeline, 10 + 12 * n + 5) == 1010 + 10 * n + 5


def test_a_short_word_across_a_jump_goes_to_the_side_holding_more_of_it() -> None:
    timeline = _with_jump()
    # 98-103: 2 ticks before the jump, 3 after; mapped naively it would start
    # at 130 and end at 100.
    start, end = timeline.session_span(0.098, 0.103)
    assert (start, end) == (pytest.approx(0.130), pytest.approx(0.133))
    # 96-101: 4 before, 1 after.
    start, end = timeline.session_span(0.096, 0.101)
    assert (start, end) == (pytest.approx(0.096), pytest.approx(0.100))
    # 98-102: a tie stays before.
    start, end = timeline.session_span(0.098, 0.102)
    assert (start, end) == (pytest.approx(0.098), pytest.approx(0.100))


def test_a_long_word_across_a_jump_spans_it() -> None:
    timeline = _with_jump()
    start, end = timeline.session_span(0.080, 0.120)
    assert (start, end) == (pytest.approx(0.080), pytest.approx(0.150))


def test_a_span_with_a_missing_end_maps_the_other() -> None:
    timeline = _with_jump()
    assert timeline.session_span(None, None) == (None, None)
    start, end = timeline.session_span(0.095, None)
    assert start == pytest.approx(0.130) and end is None
    start, end = timeline.session_span(None, 0.105)
    assert start is None and end == pytest.approx(0.100)


def test_words_and_utterances_keep_their_other_fields() -> None:
    timeline = Timeline(TPS)
    timeline.restart(2000, 0)
    words = (
        Word(word="hi", start=0.1, end=0.2, confidence=0.9, speaker=1, speaker_confidence=0.8),
        Word(word="there", start=None, end=None, speaker="S2"),
    )
    assert timeline.words(words) == (
        Word(word="hi", start=2.1, end=2.2, confidence=0.9, speaker=1, speaker_confidence=0.8),
        Word(word="there", start=None, end=None, speaker="S2"),
    )
    utterances = (Utterance(text="hi there", start=0.1, end=0.5, speaker=3),)
    assert timeline.utterances(utterances) == (
        Utterance(text="hi there", start=2.1, end=2.5, speaker=3),
    )
    assert timeline.words(()) == ()


# -- monotonic, whatever the marks -------------------------------------------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 40)),
        st.tuples(st.just("silence"), st.integers(1, 40)),
        st.tuples(st.just("jump"), st.integers(1, 40)),
    ),
    max_size=25,
)


def _build(origin: int, steps: list[tuple[str, int]]) -> Timeline:
    timeline = Timeline(TPS)
    timeline.restart(origin, 0)
    previous = None
    for kind, ticks in steps:
        if kind == "jump" and previous == "jump":
            # The engine adds at most one jump where held audio resumes, and
            # never two at one connection instant.
            timeline.advance(1)
        getattr(timeline, kind)(ticks)
        previous = kind if ticks or kind != "advance" else previous
    return timeline


@settings(max_examples=300, deadline=None)
@given(
    origin=st.integers(0, 10_000),
    steps=_STEPS,
    times=st.lists(st.floats(0, 1.2, allow_nan=False), min_size=2, max_size=30),
)
def test_mapping_is_monotonic_for_starts_and_for_ends(
    origin: int, steps: list[tuple[str, int]], times: list[float]
) -> None:
    timeline = _build(origin, steps)
    times.sort()
    starts = [timeline.session_ticks(t) for t in times]
    ends = [timeline.session_ticks(t, end=True) for t in times]
    assert starts == sorted(starts)
    assert ends == sorted(ends)
    for first, last in zip(starts, ends, strict=True):
        assert last <= first
        assert first >= origin


@settings(max_examples=300, deadline=None)
@given(
    steps=_STEPS,
    start=st.floats(0, 1.2, allow_nan=False),
    length=st.floats(0, 0.05, allow_nan=False),
)
def test_a_span_never_ends_before_it_starts(
    steps: list[tuple[str, int]], start: float, length: float
) -> None:
    timeline = _build(0, steps)
    first, last = timeline.session_span(start, start + length)
    assert first is not None and last is not None
    assert first <= last


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(0, 30), min_size=1, max_size=30))
def test_silence_only_maps_audio_exactly(steps: list[int]) -> None:
    """With keepalive silence only, every tick of audio maps to its session tick."""
    timeline = Timeline(TPS)
    audio: list[tuple[int, int]] = []  # (connection tick, session tick) of each audio tick
    session = 0
    for index, ticks in enumerate(steps):
        if index % 2:
            timeline.silence(ticks + 1)
        else:
            audio.extend((timeline.ticks + k, session + k) for k in range(ticks))
            timeline.advance(ticks)
            session += ticks
    for connection, expected in audio:
        assert at(timeline, connection + 0.5) == expected + 0.5


def test_fit_clamps_within_the_tolerance_and_refuses_beyond() -> None:
    timeline = Timeline(TPS)
    timeline.restart(500, 0)
    timeline.advance(1000)  # one second carried
    timeline.silence(100)  # keepalive silence is carried too
    assert timeline.fit(0.7, "t") == 0.7
    assert timeline.fit(-TIME_TOLERANCE, "t") == 0.0
    assert timeline.fit(1.1 + TIME_TOLERANCE, "t") == 1.1
    with pytest.raises(RemoteProtocolError, match=r"t -0\.51 s is outside the 1\.1 s"):
        timeline.fit(-TIME_TOLERANCE - 0.01, "t")
    with pytest.raises(RemoteProtocolError):
        timeline.fit(1.1 + TIME_TOLERANCE + 0.01, "t")
