"""``confirmed_upto`` and ``transcript`` on their own: what a final means.

Invariants checked (pulse_core/_finals.py):

* a final that answers a finalize confirms the audio before that finalize's
  position (late answers too); word timestamps confirm up to the last word's
  end in session time (whichever reaches further), and only when the last
  word has an end; ``is_last`` confirms everything received, but only as the
  answer to ``close_stream``; a final with none of these confirms nothing;
* times are fitted to the audio the connection carried before anything
  else: clamped within the tolerance, refused beyond it, and a message whose
  times fit is passed on as it is;
* nothing beyond what the live socket was sent is ever confirmed;
* the ``Transcript`` event carries the message's fields, its words and
  utterances in session time, its span (from the words, else the
  utterances), and the answer's turn, latency and lateness (``finalized``
  only for an answer in time);
* a final whose span lies wholly in audio that earlier finals of the same
  connection transcribed is a repeat (within the service's 10 ms rounding);
  pieces of one stretch in any order, finals that only overlap it, finals
  without times, and finals of a new connection are not; at most
  ``MAX_SPANS`` spans are kept, the earliest forgotten first; a repeat is
  worded with its span in session time.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from pulse_core import RemoteProtocolError
from pulse_core._finals import (
    MAX_SPANS,
    Transcribed,
    confirmed_upto,
    repeat,
    transcript,
    within_connection,
)
from pulse_core._ledger import AudioLedger
from pulse_core._messages import TranscriptionMessage, Utterance, Word
from pulse_core._timeline import Timeline
from pulse_core._turns import Answer
from tests.core.engine import config

TPS = 8000


def ledger(received: int = 800, sent: int | None = None) -> AudioLedger:
    """Mu-law at 8 kHz: ``received`` ticks framed, ``sent`` of them on the socket."""
    book = AudioLedger(config(encoding="mulaw", sample_rate=8000), lambda drop: None)
    book.append(bytes(received), received)
    book.sent(received if sent is None else sent)
    return book


def final(*ends: float | None, is_last: bool = False) -> TranscriptionMessage:
    words = tuple(
        Word(word=f"w{n}", start=None if end is None else end - 0.01, end=end)
        for n, end in enumerate(ends)
    )
    return TranscriptionMessage(text="x", is_final=True, is_last=is_last, words=words)


def answer(position: int, *, late: bool = False) -> Answer:
    return Answer(turn=1, position=position, late=late, latency=None if late else 0.2)


# -- how far a final confirms ------------------------------------------------------------


def test_an_answer_confirms_up_to_its_finalize() -> None:
    assert confirmed_upto(final(), answer(300), Timeline(TPS), ledger(), closing=True) == 300


def test_a_late_answer_confirms_too() -> None:
    assert (
        confirmed_upto(final(), answer(300, late=True), Timeline(TPS), ledger(), closing=True)
        == 300
    )


def test_word_timestamps_confirm_up_to_the_last_word_in_session_time() -> None:
    timeline = Timeline(TPS)
    timeline.restart(200, 0)
    timeline.advance(100)
    timeline.silence(80)  # keepalive: 10 ms of connection time only
    timeline.advance(500)
    # The last word ends at connection 0.05 s (400 ticks): session 200 + 400 - 80.
    assert confirmed_upto(final(0.02, 0.05), None, timeline, ledger(), closing=True) == 520


def test_whichever_reaches_further() -> None:
    timeline = Timeline(TPS)
    assert confirmed_upto(final(0.05), answer(300), timeline, ledger(), closing=True) == 400
    assert confirmed_upto(final(0.02), answer(300), timeline, ledger(), closing=True) == 300


def test_only_the_last_word_end_counts() -> None:
    timeline = Timeline(TPS)
    assert confirmed_upto(final(0.05, None), None, timeline, ledger(), closing=True) is None
    assert confirmed_upto(final(0.05, None), answer(100), timeline, ledger(), closing=True) == 100
    assert confirmed_upto(final(0.09, 0.05), None, timeline, ledger(), closing=True) == 400


def test_a_word_end_just_after_a_jump_confirms_only_up_to_the_jump() -> None:
    timeline = Timeline(TPS)
    timeline.advance(400)
    timeline.jump(160)  # held audio dropped
    timeline.advance(240)
    # 0.0504 s is 3 ticks after the jump, within the 80-tick snap: the audio before it.
    assert confirmed_upto(final(0.0504), None, timeline, ledger(), closing=True) == 400
    assert confirmed_upto(final(0.07), None, timeline, ledger(), closing=True) == 560 + 160


def test_nothing_to_go_by_confirms_nothing() -> None:
    timeline = Timeline(TPS)
    assert confirmed_upto(final(), None, timeline, ledger(), closing=True) is None
    assert confirmed_upto(final(None), None, timeline, ledger(), closing=True) is None


def test_is_last_confirms_everything_received() -> None:
    timeline = Timeline(TPS)
    assert confirmed_upto(final(is_last=True), None, timeline, ledger(800), closing=True) == 800
    assert (
        confirmed_upto(final(0.01, is_last=True), answer(50), timeline, ledger(800), closing=True)
        == 800
    )


@pytest.mark.parametrize(
    ("message", "given"),
    [
        (final(), answer(700)),  # an answer past what this socket has
        (final(0.09), None),  # a word past it
        (final(is_last=True), None),
    ],
)
def test_never_beyond_what_the_socket_was_sent(
    message: TranscriptionMessage, given: Answer | None
) -> None:
    assert confirmed_upto(message, given, Timeline(TPS), ledger(800, sent=600), closing=True) == 600


# -- the event ----------------------------------------------------------------------------


def _message(**fields: object) -> TranscriptionMessage:
    base: dict[str, object] = {
        "text": "hello there",
        "is_final": True,
        "from_finalize": True,
        "session_id": "s1",
        "language": "en",
        "languages": ("en", "hi"),
        "redacted_entities": ("NAME",),
        "speaker": 2,
        "speaker_confidence": 0.7,
        "full_transcript": "so far: hello there",
        "raw": MappingProxyType({"transcript": "hello there"}),
    }
    base.update(fields)
    return TranscriptionMessage(**base)  # type: ignore[arg-type]


def test_transcript_carries_the_message_in_session_time() -> None:
    timeline = Timeline(TPS)
    timeline.restart(8000, 0)  # this connection began one second into the session
    words = (
        Word(word="hello", start=0.1, end=0.4, confidence=0.9, speaker=2),
        Word(word="there", start=0.5, end=0.9, confidence=0.8, speaker=2),
    )
    utterances = (Utterance(text="hello there", start=0.1, end=0.9, speaker=2),)
    message = _message(words=words, utterances=utterances)
    event = transcript(message, Answer(3, 7200, late=False, latency=0.25), timeline, 4)
    assert (event.text, event.is_final, event.is_last) == ("hello there", True, False)
    assert (event.finalized, event.late, event.turn, event.latency) == (True, False, 3, 0.25)
    assert (event.from_finalize, event.session_id, event.connection) == (True, "s1", 4)
    assert (event.language, event.languages) == ("en", ("en", "hi"))
    assert (event.redacted_entities, event.speaker, event.speaker_confidence) == (
        ("NAME",),
        2,
        0.7,
    )
    assert event.full_transcript == "so far: hello there"
    assert event.raw is message.raw
    assert [(w.word, w.start, w.end, w.confidence) for w in event.words] == [
        ("hello", pytest.approx(1.1), pytest.approx(1.4), 0.9),
        ("there", pytest.approx(1.5), pytest.approx(1.9), 0.8),
    ]
    assert [(u.start, u.end) for u in event.utterances] == [
        (pytest.approx(1.1), pytest.approx(1.9))
    ]
    assert (event.start, event.end) == (pytest.approx(1.1), pytest.approx(1.9))


def test_a_late_answer_is_not_finalized() -> None:
    event = transcript(_message(), Answer(2, 10, late=True, latency=None), Timeline(TPS), 1)
    assert (event.finalized, event.late, event.turn, event.latency) == (False, True, 2, None)


def test_an_unanswered_final_or_interim_has_no_turn() -> None:
    for message in (_message(from_finalize=False), _message(is_final=False, from_finalize=None)):
        event = transcript(message, None, Timeline(TPS), 1)
        assert (event.finalized, event.late, event.turn, event.latency) == (
            False,
            False,
            None,
            None,
        )
        assert event.from_finalize is message.from_finalize
        assert event.is_final is message.is_final


def test_the_span_comes_from_the_words_else_the_utterances() -> None:
    timeline = Timeline(TPS)
    words = (
        Word(word="a", start=None, end=0.2),
        Word(word="b", start=0.3, end=None),
        Word(word="c", start=0.4, end=0.5),
    )
    utterances = (Utterance(text="a b c", start=0.0, end=1.0),)
    event = transcript(_message(words=words, utterances=utterances), None, timeline, 1)
    assert (event.start, event.end) == (pytest.approx(0.3), pytest.approx(0.5))
    event = transcript(_message(utterances=utterances), None, timeline, 1)
    assert (event.start, event.end) == (0.0, 1.0)
    untimed = (Word(word="a"), Word(word="b"))
    event = transcript(_message(words=untimed, utterances=utterances), None, timeline, 1)
    assert (event.start, event.end) == (None, None)
    event = transcript(_message(), None, timeline, 1)
    assert (event.start, event.end, event.words, event.utterances) == (None, None, (), ())


def test_is_last_mid_session_confirms_only_what_its_words_cover() -> None:
    """``is_last`` ends the session only as the answer to ``close_stream``."""
    timeline = Timeline(TPS)
    timeline.restart(0, 800)
    books = ledger()
    message = TranscriptionMessage(
        text="hi", is_final=True, is_last=True, words=(Word(word="hi", start=0.0, end=0.02),)
    )
    assert confirmed_upto(message, None, timeline, books, closing=False) == round(0.02 * TPS)


# -- times are checked first -------------------------------------------------------------


def carried(ticks: int) -> Timeline:
    timeline = Timeline(TPS)
    timeline.restart(0, ticks)
    return timeline


def test_times_that_fit_leave_the_message_as_it_is() -> None:
    message = TranscriptionMessage(
        text="a", words=(Word(word="a", start=0.0, end=0.1),), utterances=(Utterance(text="a"),)
    )
    assert within_connection(message, carried(800)) is message


def test_times_a_little_outside_are_clamped() -> None:
    message = TranscriptionMessage(
        text="a b",
        words=(Word(word="a", start=-0.2, end=0.05), Word(word="b", start=0.05, end=0.3)),
        utterances=(Utterance(text="a b", start=-0.2, end=0.3),),
    )
    fitted = within_connection(message, carried(800))  # 0.1 s carried
    assert [(w.start, w.end) for w in fitted.words] == [(0.0, 0.05), (0.05, 0.1)]
    assert [(u.start, u.end) for u in fitted.utterances] == [(0.0, 0.1)]
    assert fitted.text == "a b"


@pytest.mark.parametrize(
    ("start", "end", "what"),
    [(0.0, 1e305, "word end"), (-0.6, 0.0, "word start"), (0.0, 0.61, "word end")],
)
def test_times_far_outside_make_the_message_malformed(start: float, end: float, what: str) -> None:
    message = TranscriptionMessage(text="a", words=(Word(word="a", start=start, end=end),))
    with pytest.raises(RemoteProtocolError, match=what):
        within_connection(message, carried(800))


def test_utterance_times_are_checked_too() -> None:
    message = TranscriptionMessage(text="a", utterances=(Utterance(text="a", start=0.0, end=9.0),))
    with pytest.raises(RemoteProtocolError, match="utterance end"):
        within_connection(message, carried(800))


# -- repeats ------------------------------------------------------------------------------


def spoken(start: float, end: float, *, words: int = 2) -> TranscriptionMessage:
    """A final whose ``words`` words tile ``start``-``end`` (connection seconds)."""
    step = (end - start) / words
    return TranscriptionMessage(
        text=" ".join(f"w{n}" for n in range(words)),
        is_final=True,
        words=tuple(
            Word(word=f"w{n}", start=start + n * step, end=start + (n + 1) * step)
            for n in range(words)
        ),
    )


def test_a_final_seen_again_is_a_repeat() -> None:
    said = Transcribed()
    assert said.repeats(spoken(0.0, 1.0), 1) is None
    assert said.repeats(spoken(0.0, 1.0), 1) == (0.0, 1.0)
    assert said.repeats(spoken(0.2, 0.6, words=1), 1) == (0.2, 0.6)  # a piece of it
    assert said.spans == 1


def test_a_repeat_is_worded_in_session_time() -> None:
    said = Transcribed()
    timeline = Timeline(TPS)
    timeline.restart(16000, 8000)  # the connection began 2 s into the session
    assert repeat(said, spoken(0.25, 0.75), 1, timeline) is None
    assert repeat(said, spoken(0.25, 0.75), 1, timeline) == (
        "a final repeating words already transcribed (2.25-2.75 s)"
    )
    assert repeat(said, spoken(0.25, 0.75), 2, timeline) is None  # a new connection


def test_pieces_of_one_stretch_in_any_order_are_not_repeats() -> None:
    said = Transcribed()
    assert said.repeats(spoken(0.5, 1.0), 1) is None
    assert said.repeats(spoken(0.0, 0.5), 1) is None
    assert said.spans == 1  # they touch: one stretch
    assert said.repeats(spoken(0.0, 1.0), 1) == (0.0, 1.0)


def test_a_final_in_a_gap_between_finals_is_not_a_repeat() -> None:
    said = Transcribed()
    for start in (0.0, 2.0, 4.0):
        assert said.repeats(spoken(start, start + 1.0), 1) is None
    assert said.spans == 3
    assert said.repeats(spoken(1.2, 1.8), 1) is None
    assert said.spans == 4
    assert said.repeats(spoken(1.0, 2.0), 1) is None  # fills the last of the gap
    assert said.spans == 2
    assert said.repeats(spoken(0.0, 3.0), 1) == (0.0, 3.0)


def test_a_final_that_only_overlaps_transcribed_audio_is_delivered() -> None:
    said = Transcribed()
    assert said.repeats(spoken(0.0, 1.0), 1) is None
    assert said.repeats(spoken(0.8, 1.5), 1) is None
    assert said.repeats(spoken(0.0, 1.5), 1) == (0.0, 1.5)


def test_rounding_is_not_new_audio() -> None:
    said = Transcribed()
    assert said.repeats(spoken(0.10, 1.0), 1) is None
    assert said.repeats(spoken(0.095, 1.008), 1) == (0.095, 1.008)
    assert said.repeats(spoken(0.10, 1.02), 1) is None  # 20 ms beyond: new speech
    assert said.repeats(spoken(1.025, 1.5), 1) is None  # 5 ms gap: one stretch now
    assert said.spans == 1


def test_a_short_final_right_after_the_transcribed_words_is_new_audio() -> None:
    """Within rounding of the last span's end, but outside it: 5 ms of new
    speech, not a repeat; the same 5 ms again is one."""
    said = Transcribed()
    assert said.repeats(spoken(0.0, 0.5), 1) is None
    assert said.repeats(spoken(0.5, 0.505, words=1), 1) is None
    assert said.repeats(spoken(0.5, 0.505, words=1), 1) == (0.5, 0.505)
    assert said.repeats(spoken(0.2, 0.2, words=1), 1) == (0.2, 0.2)  # an instant, inside
    assert said.repeats(spoken(0.0, 0.0, words=1), 1) is None  # at its edge: not inside


def test_finals_without_times_are_never_repeats() -> None:
    said = Transcribed()
    empty = TranscriptionMessage(text="", is_final=True, from_finalize=True)
    untimed = TranscriptionMessage(text="a b", is_final=True, words=(Word(word="a"),))
    for _ in range(3):
        assert said.repeats(empty, 1) is None
        assert said.repeats(untimed, 1) is None
    assert said.spans == 0


def test_utterances_place_a_final_without_word_times() -> None:
    said = Transcribed()
    sentence = TranscriptionMessage(
        text="a b", is_final=True, utterances=(Utterance(text="a b", start=0.0, end=1.0),)
    )
    assert said.repeats(sentence, 1) is None
    assert said.repeats(sentence, 1) == (0.0, 1.0)


def test_a_new_connection_starts_afresh() -> None:
    said = Transcribed()
    assert said.repeats(spoken(0.0, 1.0), 1) is None
    # The next connection's clock starts again at zero: the same times are new audio.
    assert said.repeats(spoken(0.0, 1.0), 2) is None
    assert said.repeats(spoken(0.0, 1.0), 2) == (0.0, 1.0)


def test_spans_are_bounded_and_the_earliest_is_forgotten() -> None:
    said = Transcribed()
    for n in range(MAX_SPANS + 1):
        assert said.repeats(spoken(2.0 * n, 2.0 * n + 1.0), 1) is None
    assert said.spans == MAX_SPANS
    assert said.repeats(spoken(0.0, 1.0), 1) is None  # forgotten: delivered again
    assert said.repeats(spoken(2.0 * MAX_SPANS, 2.0 * MAX_SPANS + 1.0), 1) is not None
