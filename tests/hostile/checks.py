"""What the hostile suites check of a session, whatever the server did.

A session's :class:`Outcome` is every event pulse emitted and what left
``open_session`` (if anything). The checks read it as the application would:

* :func:`assert_every_sample_once`: each instant of the audio given is in
  exactly one final's words or reported in exactly one ``AudioDropped``;
* :func:`assert_words_where_given`: each word starts where its audio was given;
* :func:`key_pieces` over :func:`everything_said`: no 8-character piece of the
  key in the exception, any event (fields, repr, raw) or a log record.

``test_hostile_today.py`` (one scripted server per test) and
``test_schedules.py`` (generated schedules) share them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import attrs

from pulse_core import AudioDropped, Closed, Event, Transcript
from tests.hostile import KEY
from tests.hostile.server import ConnectionRecord

__all__ = [
    "TOLERANCE",
    "Outcome",
    "assert_every_sample_once",
    "assert_words_where_given",
    "everything_said",
    "key_pieces",
    "spans",
]

#: Seconds two times may differ by and still be the same instant (the
#: server's word times are ticks divided by the sample rate, as floats).
TOLERANCE = 1e-3


@attrs.define
class Outcome:
    events: list[Event]
    error: BaseException | None

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def finals(self) -> list[Transcript]:
        return [e for e in self.of(Transcript) if e.is_final]

    @property
    def closed(self) -> Closed | None:
        closed = self.of(Closed)
        return closed[-1] if closed else None


def spans(outcome: Outcome) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(word spans of every final, ranges reported dropped), in session seconds."""
    words = [
        (w.start, w.end)
        for t in outcome.finals
        for w in t.words
        if w.start is not None and w.end is not None
    ]
    dropped = [(d.start, d.end) for d in outcome.of(AudioDropped)]
    return words, dropped


def assert_every_sample_once(outcome: Outcome, seconds: float) -> None:
    """Each instant of the session's audio is in exactly one final's words, or
    reported in exactly one AudioDropped (the server's words tile the audio it
    got).

    A dropped range may lie inside one word: a word that straddles a jump in
    session time (PROTOCOL §5) spans the gap between the audio before it and
    the audio after it, though it transcribed neither side of the gap twice.
    """
    words, dropped = spans(outcome)
    covered = sorted(words + dropped)
    edge = 0.0
    for start, end in covered:
        assert start <= edge + TOLERANCE, (
            f"audio {edge:.3f}-{start:.3f} s was never transcribed nor reported dropped"
        )
        edge = max(edge, end)
    assert edge >= seconds - TOLERANCE, (
        f"audio {edge:.3f}-{seconds:.3f} s was never transcribed nor reported dropped"
    )
    reach = 0.0
    for start, end in sorted(words):
        assert start >= reach - TOLERANCE, f"audio at {start:.3f}-{reach:.3f} s transcribed twice"
        reach = max(reach, end)
    reach = 0.0
    for start, end in sorted(dropped):
        assert start >= reach - TOLERANCE, (
            f"audio at {start:.3f}-{reach:.3f} s reported dropped twice"
        )
        reach = max(reach, end)
    for low, high in dropped:
        for start, end in words:
            overlap = min(high, end) - max(low, start)
            inside = start < low and high < end
            assert overlap <= TOLERANCE or inside, (
                f"audio at {max(low, start):.3f}-{min(high, end):.3f} s was transcribed "
                f"(a word at {start:.3f}-{end:.3f} s) and reported dropped ({low:.3f}-{high:.3f} s)"
            )


def assert_words_where_given(outcome: Outcome, records: Iterable[ConnectionRecord]) -> None:
    """Each word of a final starts, in session time, where the application gave
    its audio. The server names a word ``w<tick>`` after the connection sample
    it starts at and keeps what it received (``ConnectionRecord.audio``); the
    value of ``speech()``'s sample there says where it was given (PROTOCOL §5:
    session time runs on across reconnects, replays and dropped audio)."""
    heard = {f"hostile-{record.number}": record for record in records}
    for final in outcome.finals:
        record = heard.get(final.raw.get("session_id"))  # type: ignore[arg-type]
        if record is None:
            continue
        tps = int(record.query.get("sample_rate", "16000"))
        for word in final.words:
            if not word.word.startswith("w") or word.start is None:
                continue
            tick = int(word.word[1:])
            sample = bytes(record.audio[2 * tick : 2 * tick + 2])
            if len(sample) < 2 or sample == b"\x00\x00":
                continue  # beyond what the server kept, or silence (a keepalive)
            given = (int.from_bytes(sample, "little", signed=True) + 32768) % 65536
            assert abs(word.start - given / tps) <= TOLERANCE, (
                f"{word.word} of connection {record.number} was given at "
                f"{given / tps:.4f} s, pulse says it starts at {word.start:.4f} s"
            )


def key_pieces(text: str) -> list[str]:
    """Every 8-character piece of the key found in ``text``."""
    return sorted({KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in text})


def everything_said(outcome: Outcome, records: Iterable[logging.LogRecord]) -> str:
    """All text pulse showed: exception (its whole chain), events (fields,
    repr, raw), log records."""
    parts: list[str] = []
    # The exception, and all a traceback of it shows: its cause and context,
    # and every exception in a group, each with its own chain.
    todo = [outcome.error] if outcome.error is not None else []
    seen: set[int] = set()
    while todo:
        error = todo.pop()
        if id(error) in seen:  # a chain may loop
            continue
        seen.add(id(error))
        parts += [str(error), repr(error), repr(getattr(error, "failure", None))]
        if isinstance(error, BaseExceptionGroup):
            todo += error.exceptions
        todo += [e for e in (error.__cause__, error.__context__) if e is not None]
    for event in outcome.events:
        parts.append(repr(event))
        parts += [repr(value) for value in attrs.asdict(event, recurse=False).values()]
        parts.append(repr(getattr(event, "raw", None)))
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
    return "\n".join(parts)
