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
* nothing beyond what the live socket was sent is ever confirmed.

Server times are checked first (:func:`within_connection`): a time a little
outside the audio the connection carried is clamped; one far outside makes
the message malformed, so a bogus time can neither crash the engine nor
confirm the wrong audio.
"""

from __future__ import annotations

from typing import TypeVar

import attrs

from ._events import Transcript
from ._ledger import AudioLedger
from ._messages import TranscriptionMessage, Utterance, Word
from ._timeline import Timeline
from ._turns import Answer

__all__ = ["confirmed_upto", "transcript", "within_connection"]


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
