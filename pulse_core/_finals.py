"""What a server transcription means for the session (spec/PROTOCOL.md §5; §6 rules 3 and 6).

A transcription message becomes one :class:`Transcript` event: its times mapped
from the connection's clock to session time, and, for a final, the turn it
answers. A final also *confirms* audio: everything before the position returned
by :func:`confirmed_upto` is transcribed and need never be replayed. Getting that
position wrong either loses audio (too far) or transcribes it twice after a
reconnect (not far enough), so the rule lives here, in one place:

* a final that answers a finalize covers the audio before that finalize;
* word timestamps say exactly how far any final reaches (the last word's end);
* ``is_last`` covers everything, but only as the answer to ``close_stream``
  (mid-session it is taken as an ordinary final);
* nothing beyond what the live socket was sent is ever confirmed;
* the audio an automatic final steps over before its first word is silence,
  as finals come in audio order; a final that proves otherwise makes the
  ledger report what was stepped over if the socket ends first (:func:`spoken`).

Server times are checked first (:func:`within_connection`): a time a little
outside the audio the connection carried is clamped; one far outside makes
the message malformed, so a bogus time can neither crash the engine nor
confirm the wrong audio.

Each message is one segment, never cumulative, so a final whose words all lie
in audio that earlier finals of the same connection already transcribed
repeats them (:class:`Transcribed`): it is reported, not delivered, or its
text would be transcribed twice.
"""

from __future__ import annotations

import bisect
from typing import Final, TypeVar

import attrs

from ._events import Transcript
from ._ledger import AudioLedger
from ._messages import TranscriptionMessage, Utterance, Word
from ._timeline import Timeline
from ._turns import Answer

__all__ = [
    "MAX_SPANS",
    "ROUNDING",
    "Transcribed",
    "confirmed_upto",
    "repeat",
    "spoken",
    "transcript",
    "within_connection",
]

#: Spans of finals remembered per connection. Past it the earliest is
#: forgotten: a repeat of a final that old would be delivered again, but no
#: out-of-order final is ever taken for a repeat on account of the bound.
MAX_SPANS: Final = 256
#: The service rounds its times to 10 ms: a repeat's span may poke out of the
#: audio already transcribed by this much, and spans this close are one.
ROUNDING: Final = 0.01


def within_connection(message: TranscriptionMessage, timeline: Timeline) -> TranscriptionMessage:
    """``message`` with every time fitted to the audio the connection carried.

    Raises ``RemoteProtocolError`` when a time is far outside it.
    """
    words = _fitted(message.words, timeline, "word")
    utterances = _fitted(message.utterances, timeline, "utterance")
    if words is message.words and utterances is message.utterances:
        return message
    return attrs.evolve(message, words=words, utterances=utterances)


_Timed = TypeVar("_Timed", Word, Utterance)


def _fitted(items: tuple[_Timed, ...], timeline: Timeline, kind: str) -> tuple[_Timed, ...]:
    """``items`` with fitted times (the same tuple when nothing changed)."""
    fitted: list[_Timed] = []
    changed = False
    for item in items:
        start = None if item.start is None else timeline.fit(item.start, f"{kind} start")
        end = None if item.end is None else timeline.fit(item.end, f"{kind} end")
        if start != item.start or end != item.end:
            item = attrs.evolve(item, start=start, end=end)  # noqa: PLW2901
            changed = True
        fitted.append(item)
    return tuple(fitted) if changed else items


def confirmed_upto(
    message: TranscriptionMessage,
    answer: Answer | None,
    timeline: Timeline,
    ledger: AudioLedger,
    *,
    closing: bool,
) -> int | None:
    """The session tick a final confirms the audio up to (``None``: nothing).

    ``closing``: ``close_stream`` was sent on this connection, so ``is_last``
    is the end of the session.
    """
    coverage = answer.position if answer is not None else None
    if message.words and message.words[-1].end is not None:
        # Word timestamps say exactly how far the final reaches.
        reach = round(timeline.session_ticks(message.words[-1].end, end=True))
        coverage = reach if coverage is None else max(coverage, reach)
    if message.is_last and closing:
        coverage = ledger.received
    if coverage is None:
        return None
    return min(coverage, ledger.sent_upto)


def spoken(message: TranscriptionMessage, timeline: Timeline) -> tuple[int, int] | None:
    """The session ticks from a final's first word to its last (``None``: its
    words carry no times). What lies before the first word and after what was
    confirmed is *passed over* (``AudioLedger.confirm``); a final whose words
    lie in audio passed over arrived out of order (PROTOCOL §9)."""
    start, end = _span(message.words)
    if start is None or end is None:
        return None
    return round(timeline.session_ticks(start)), round(timeline.session_ticks(end, end=True))


class Transcribed:
    """The audio that the live connection's finals transcribed: the span of
    each final's words (else its utterances), in that connection's seconds,
    merged where they overlap or touch.

    A final with no times cannot be placed and is never a repeat: an empty
    final answering a finalize, or finals without word timestamps.
    """

    __slots__ = ("_connection", "_ends", "_starts")

    def __init__(self) -> None:
        self._connection = 0
        self._starts: list[float] = []
        self._ends: list[float] = []

    @property
    def spans(self) -> int:
        """Spans remembered for the live connection (at most :data:`MAX_SPANS`)."""
        return len(self._starts)

    def repeats(self, message: TranscriptionMessage, connection: int) -> tuple[float, float] | None:
        """Take final ``message`` of connection number ``connection`` (times fitted).

        Returns its span when it lies wholly in audio this connection's finals
        already transcribed: a repeat, and nothing is recorded. Otherwise its
        span, if it has one, is recorded and ``None`` returned (a final that
        only overlaps that audio carries new speech, and is delivered whole).
        """
        if connection != self._connection:
            self._connection = connection
            self._starts.clear()
            self._ends.clear()
        span = _connection_span(message.words) or _connection_span(message.utterances)
        if span is None:
            return None
        start, end = span
        starts, ends = self._starts, self._ends
        # Spans are kept more than ROUNDING apart, so only the last one that
        # begins by ``start`` can hold it.
        index = bisect.bisect_right(starts, start + ROUNDING) - 1
        if index >= 0 and end <= ends[index] + ROUNDING:
            # Within rounding of that span, and in it, not just touching it: a
            # short final of new audio right after the words already
            # transcribed lies within the rounding too, and is no repeat.
            inside = min(end, ends[index]) - max(start, starts[index])
            if inside > 0 or (start == end and starts[index] < start < ends[index]):
                return span
        # Record it: merge every span it overlaps or touches.
        first = bisect.bisect_left(ends, start - ROUNDING)
        last = bisect.bisect_right(starts, end + ROUNDING)
        if first < last:
            start = min(start, starts[first])
            end = max(end, ends[last - 1])
        starts[first:last] = [start]
        ends[first:last] = [end]
        if len(starts) > MAX_SPANS:
            del starts[0], ends[0]
        return None


def repeat(
    transcribed: Transcribed, message: TranscriptionMessage, connection: int, timeline: Timeline
) -> str | None:
    """Take final ``message`` of connection ``connection`` (see
    :meth:`Transcribed.repeats`): why it is reported rather than delivered
    when it repeats transcribed words, in session time (``None``: it does not)."""
    span = transcribed.repeats(message, connection)
    if span is None:
        return None
    start, end = timeline.session_span(*span)
    return f"a final repeating words already transcribed ({start:.2f}-{end:.2f} s)"


def _connection_span(items: tuple[Word, ...] | tuple[Utterance, ...]) -> tuple[float, float] | None:
    start, end = _span(items)
    return None if start is None or end is None else (start, end)


def transcript(
    message: TranscriptionMessage, answer: Answer | None, timeline: Timeline, connection: int
) -> Transcript:
    """The event for ``message``, in session time."""
    words = timeline.words(message.words)
    utterances = timeline.utterances(message.utterances)
    start, end = _span(words) if words else _span(utterances)
    return Transcript(
        text=message.text,
        is_final=message.is_final,
        finalized=answer is not None and not answer.late,
        is_last=message.is_last,
        turn=answer.turn if answer is not None else None,
        latency=answer.latency if answer is not None else None,
        late=answer is not None and answer.late,
        from_finalize=message.from_finalize,
        language=message.language,
        languages=message.languages,
        words=words,
        utterances=utterances,
        redacted_entities=message.redacted_entities,
        speaker=message.speaker,
        speaker_confidence=message.speaker_confidence,
        start=start,
        end=end,
        full_transcript=message.full_transcript,
        session_id=message.session_id,
        connection=connection,
        raw=message.raw,
    )


def _span(items: tuple[Word, ...] | tuple[Utterance, ...]) -> tuple[float | None, float | None]:
    starts = [item.start for item in items if item.start is not None]
    ends = [item.end for item in items if item.end is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)
