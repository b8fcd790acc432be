"""What a server frame says, made safe to act on (spec/PROTOCOL.md §4, §5; §6 rules 9 and 12).

Every frame the live socket brings passes :func:`read` before anything acts
on it. In order:

* the service sends JSON text only: a binary frame is malformed;
* the text is parsed (``_messages``) within ``max_message_size``; anything
  that is not a valid message is malformed;
* every string the server sent is redacted (``Redactor``): the key never
  reaches an event, whole or in part;
* its times are checked against the audio the connection carried: a little
  outside is clamped, far outside makes the frame malformed (``Timeline.fit``,
  ``_finals.within_connection``), so a bogus time steers nothing.

What passes either only reports something, and :func:`read` returns its event
(voice activity in session time, an unknown type, a malformed frame), or
steers the engine, and is returned as the message for the conductor
(transcriptions and errors).

Invariants: nothing here keeps state or emits anything; a malformed frame is
shown redacted first and cut after (:func:`shown`), so a cut never leaves a
prefix of the key, and no event shows more than :data:`SHOWN_CHARS` of a frame.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._errors import RemoteProtocolError
from ._events import MalformedMessage, SpeechEnded, SpeechStarted, UnhandledMessage
from ._finals import within_connection
from ._messages import (
    ErrorMessage,
    SpeechEndedMessage,
    SpeechStartedMessage,
    TranscriptionMessage,
    UnknownMessage,
    parse_server_message,
)
from ._secrets import Redactor, hide_in_message
from ._timeline import Timeline

__all__ = ["SHOWN_BYTES", "SHOWN_CHARS", "Reported", "malformed", "read", "shown"]

#: How much of a malformed frame an event shows: the first SHOWN_CHARS, taken
#: after redacting a longer window of SHOWN_BYTES, so a piece of the key
#: across the cut is hidden (PROTOCOL §6 rule 12).
SHOWN_CHARS: Final = 200
SHOWN_BYTES: Final = 4096

#: The events a frame that steers nothing becomes.
Reported = MalformedMessage | SpeechStarted | SpeechEnded | UnhandledMessage


def read(
    data: str | bytes | bytearray | memoryview,
    *,
    max_size: int,
    redactor: Redactor,
    timeline: Timeline,
) -> TranscriptionMessage | ErrorMessage | Reported:
    """A frame from the live socket: the message that steers the engine, or
    the event that reports it."""
    if not isinstance(data, str):
        # The service only sends JSON text; a binary frame is a protocol error.
        text = redactor.text(repr(bytes(data[:SHOWN_BYTES])))[:SHOWN_CHARS]
        return MalformedMessage(error="unexpected binary frame", data=text)
    try:
        message = parse_server_message(data, max_size=max_size)
        # Every string redacted before anything sees it (PROTOCOL §6 rule 12).
        message = hide_in_message(redactor, message, data)
        # Times are checked before they steer anything (PROTOCOL §5).
        if isinstance(message, TranscriptionMessage):
            message = within_connection(message, timeline)
        elif isinstance(message, SpeechStartedMessage | SpeechEndedMessage):
            message = attrs.evolve(message, timestamp=timeline.fit(message.timestamp, "timestamp"))
    except RemoteProtocolError as exc:
        return malformed(redactor, redactor.text(str(exc)), data)
    if isinstance(message, SpeechStartedMessage):
        return SpeechStarted(
            timestamp=timeline.session_time(message.timestamp), session_id=message.session_id
        )
    if isinstance(message, SpeechEndedMessage):
        return SpeechEnded(
            timestamp=timeline.session_time(message.timestamp, end=True),
            session_id=message.session_id,
        )
    if isinstance(message, UnknownMessage):
        return UnhandledMessage(message_type=message.message_type, raw=message.raw)
    return message


def shown(redactor: Redactor, data: str) -> str:
    """A text frame as an event shows it: redacted, then cut (PROTOCOL §6 rule 12)."""
    return redactor.text(data[:SHOWN_BYTES])[:SHOWN_CHARS]


def malformed(redactor: Redactor, error: str, data: str) -> MalformedMessage:
    """The report of text frame ``data``, which is wrong because of ``error``
    (already free of the key)."""
    return MalformedMessage(error=error, data=shown(redactor, data))
