"""``read`` on its own: what a server frame says, made safe to act on.

Invariants checked (pulse_core/_inbound.py):

* a binary frame, text that is not a valid message, a frame over
  ``max_size`` and a time far outside the audio the connection carried are
  each a ``MalformedMessage``; a time a little outside it is clamped;
* voice activity comes back as its event in session time, an unknown type as
  ``UnhandledMessage``; transcriptions and errors come back as messages;
* no piece of the key survives, in a message or in a malformed frame shown,
  also when the key straddles the cut; no frame is shown beyond
  ``SHOWN_CHARS``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import pulse_core._inbound
from pulse_core import (
    ErrorMessage,
    MalformedMessage,
    Redactor,
    RemoteProtocolError,
    SpeechEnded,
    SpeechStarted,
    TranscriptionMessage,
    UnhandledMessage,
)
from pulse_core._inbound import SHOWN_BYTES, SHOWN_CHARS, malformed, read, shown
from pulse_core._secrets import MARK
from pulse_core._timeline import Timeline

KEY = "sk_live_3f9a2c7e1b8d4a6f0e5c"
TPS = 1000
HIDE = Redactor(KEY)


def carried(seconds: float, *, origin: int = 0) -> Timeline:
    """A connection that began at session tick ``origin`` and carried ``seconds``."""
    timeline = Timeline(TPS)
    timeline.restart(origin, round(seconds * TPS))
    return timeline


def of(data: str | bytes, *, timeline: Timeline | None = None, max_size: int = 1 << 16) -> Any:
    return read(data, max_size=max_size, redactor=HIDE, timeline=timeline or carried(10.0))


def frame(**fields: object) -> str:
    return json.dumps(fields)


# -- what steers, and what only reports ----------------------------------------------------


def test_a_transcription_and_an_error_steer_the_engine() -> None:
    message = of(frame(type="transcription", transcript="hi", is_final=True))
    assert isinstance(message, TranscriptionMessage) and message.text == "hi"
    error = of(frame(type="error", error_code="X", message="bad"))
    assert isinstance(error, ErrorMessage) and (error.code, error.message) == ("X", "bad")


def test_voice_activity_is_its_event_in_session_time() -> None:
    timeline = carried(2.0, origin=5000)  # the connection began 5 s into the session
    started = of(frame(type="speech_started", session_id="s", timestamp=0.5), timeline=timeline)
    assert started == SpeechStarted(timestamp=5.5, session_id="s")
    ended = of(frame(type="speech_ended", session_id="s", timestamp=1.25), timeline=timeline)
    assert ended == SpeechEnded(timestamp=6.25, session_id="s")


def test_an_unknown_type_is_reported_whole() -> None:
    event = of(frame(type="novel", x=1))
    assert isinstance(event, UnhandledMessage)
    assert (event.message_type, dict(event.raw)) == ("novel", {"type": "novel", "x": 1})


# -- malformed frames ---------------------------------------------------------------------


def test_a_binary_frame_is_malformed() -> None:
    event = of(b"\x00\x01")
    assert event == MalformedMessage(error="unexpected binary frame", data=repr(b"\x00\x01"))


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"type": "transcription", "is_final": 3}'])
def test_text_that_is_not_a_message_is_malformed_and_shown(data: str) -> None:
    event = of(data)
    assert isinstance(event, MalformedMessage) and event.data == data


def test_a_frame_over_the_size_limit_is_malformed_and_shown_cut() -> None:
    data = frame(type="transcription", transcript="x" * 500)
    event = of(data, max_size=100)
    assert isinstance(event, MalformedMessage)
    assert event.data == data[:SHOWN_CHARS]


def test_times_are_clamped_a_little_outside_and_refused_far_outside() -> None:
    timeline = carried(2.0)
    word = {"word": "a", "start": 1.5, "end": 2.3}  # 0.3 s past the audio: rounding
    message = of(frame(type="transcription", is_final=True, words=[word]), timeline=timeline)
    assert isinstance(message, TranscriptionMessage) and message.words[0].end == 2.0
    far = {"word": "a", "start": 1.5, "end": 9.0}
    event = of(frame(type="transcription", is_final=True, words=[far]), timeline=timeline)
    assert isinstance(event, MalformedMessage) and "word end 9" in event.error
    late = of(frame(type="speech_started", timestamp=-1.0), timeline=timeline)
    assert isinstance(late, MalformedMessage) and "timestamp -1" in late.error


# -- the key ------------------------------------------------------------------------------


def test_the_key_in_a_message_is_redacted() -> None:
    error = of(frame(type="error", message=f"bad key {KEY}"))
    assert isinstance(error, ErrorMessage) and error.message == f"bad key {MARK}"


def test_the_key_in_a_malformed_frame_is_redacted_before_the_cut() -> None:
    # The key straddles the cut: cutting first would leave its first pieces.
    data = "x" * (SHOWN_CHARS - 12) + KEY + " not json"
    event = of(data)
    assert isinstance(event, MalformedMessage)
    assert event.data == ("x" * (SHOWN_CHARS - 12) + MARK + " not json")[:SHOWN_CHARS]


def test_the_key_in_a_binary_frame_is_redacted() -> None:
    event = of(b"\xff" + KEY.encode())
    assert isinstance(event, MalformedMessage) and KEY[:8] not in event.data
    assert MARK in event.data


def test_the_key_in_a_parse_error_is_redacted() -> None:
    event = of(frame(type="transcription", is_final=KEY))  # the error names the bad value
    assert isinstance(event, MalformedMessage)
    assert KEY[:8] not in event.error and KEY[:8] not in event.data


def test_the_key_in_any_parse_error_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever the parser's words, an error quoting the frame hides the key.
    def echo(data: str, *, max_size: int) -> Any:
        raise RemoteProtocolError(f"cannot read {data}")

    monkeypatch.setattr(pulse_core._inbound, "parse_server_message", echo)
    event = of(f'{{"token": "{KEY}"}}')
    assert isinstance(event, MalformedMessage)
    assert event.error == f'cannot read {{"token": "{MARK}"}}'


def test_shown_reads_a_bounded_window() -> None:
    huge = "y" * (SHOWN_BYTES * 4)
    assert shown(HIDE, huge) == "y" * SHOWN_CHARS
    assert malformed(HIDE, "why", KEY) == MalformedMessage(error="why", data=MARK)
