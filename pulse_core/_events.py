"""Events: what the engine tells the application, in order.

Every event is a frozen, slotted, keyword-only value; ``Event`` is their closed
union, so ``match`` statements and type checkers see every case. Times named
``start``/``end``/``timestamp`` are *session time*: seconds of audio given to
the engine since the session began, continuous across reconnects.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

from ._messages import Utterance, Word
from ._settings import Settings

__all__ = [
    "AudioDropped",
    "Closed",
    "Connected",
    "ConnectionFailed",
    "Disconnected",
    "DropReason",
    "Event",
    "FinalizeTimedOut",
    "LatencySummary",
    "MalformedMessage",
    "Reconnecting",
    "ServerError",
    "SessionSummary",
    "SettingsApplied",
    "SpeechEnded",
    "SpeechStarted",
    "Transcript",
    "UnhandledMessage",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class Connected:
    """A WebSocket opened. One per socket."""

    #: 1 for the first connection of the session, then counting up.
    connection: int
    url: str
    #: True when this connection replaces one that was lost or refused.
    reconnect: bool
    settings: Settings


@attrs.frozen(kw_only=True)
class Disconnected:
    """A WebSocket that was open is gone. One per ``Connected``."""

    connection: int
    code: int | None
    reason: str
    #: True when the engine closed it (graceful end, settings switch, stall).
    local: bool
    #: True when the engine is going to connect again.
    will_reconnect: bool


@attrs.frozen(kw_only=True)
class Reconnecting:
    """The engine will try to connect again after ``delay`` seconds."""

    attempt: int
    delay: float
    reason: str


@attrs.frozen(kw_only=True)
class ConnectionFailed:
    """An attempt to connect failed, or the service refused the session.

    ``permanent`` failures (bad key, bad parameters, plan, region, retries
    exhausted) end the session; others are followed by ``Reconnecting``.
    """

    reason: str
    status: int | None
    permanent: bool
    retry_after: float | None
    attempt: int
    #: The reconnect policy ran out of attempts (``max_attempts``): this is the
    #: last straw, not a refusal that retrying could not change.
    gave_up: bool = False


@attrs.frozen(kw_only=True)
class Transcript:
    """A transcription of one segment of speech.

    ``is_final=False`` is an interim that later interims and the final replace.
    ``finalized=True`` marks the one final that answers a finalize request
    (``turn`` says which; ``latency`` is seconds from the request to this
    event's arrival, for finalizes the application asked for).
    """

    text: str
    is_final: bool
    finalized: bool = False
    is_last: bool = False
    turn: int | None = None
    latency: float | None = None
    #: This final answered a finalize that had already timed out.
    late: bool = False
    from_finalize: bool | None = None
    language: str | None = None
    languages: tuple[str, ...] = ()
    words: tuple[Word, ...] = ()
    utterances: tuple[Utterance, ...] = ()
    redacted_entities: tuple[str, ...] = ()
    speaker: int | str | None = None
    speaker_confidence: float | None = None
    #: Session time of the first and last word, when the server sent word or
    #: sentence timestamps.
    start: float | None = None
    end: float | None = None
    full_transcript: str | None = None
    session_id: str | None = None
    connection: int = 0
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SpeechStarted:
    """The server heard speech begin (``vad_events``)."""

    timestamp: float
    session_id: str | None = None


@attrs.frozen(kw_only=True)
class SpeechEnded:
    """The server heard speech end (``vad_events``)."""

    timestamp: float
    session_id: str | None = None


@attrs.frozen(kw_only=True)
class ServerError:
    """The server reported an error. ``permanent`` errors end the session."""

    message: str
    code: str | None
    permanent: bool
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class MalformedMessage:
    """The server sent a frame that is not a valid message; it was skipped."""

    error: str
    #: The start of the offending frame, for logs (at most 200 characters).
    data: str


@attrs.frozen(kw_only=True)
class UnhandledMessage:
    """A valid JSON message of a type this version does not know."""

    #: The message's ``type`` field, if it had one.
    message_type: str | None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False)


class DropReason(enum.StrEnum):
    """Why audio could not be delivered."""

    #: More audio waited for replay than ``replay_seconds`` allows.
    REPLAY_OVERFLOW = "replay_overflow"
    #: The last bytes did not make a whole sample when the session closed.
    PARTIAL_SAMPLE = "partial_sample"
    #: The server had not confirmed this audio when ``close_timeout`` ran out.
    CLOSE_TIMEOUT = "close_timeout"
    #: The session failed for good before this audio was confirmed.
    SESSION_FAILED = "session_failed"
    #: ``close()`` came before ``start()``: the audio was never sent.
    NOT_STARTED = "not_started"
    #: The server sent finals out of order and the connection ended before a
    #: final covered this audio: a final for it may never have been sent.
    OUT_OF_ORDER = "out_of_order"


@attrs.frozen(kw_only=True)
class AudioDropped:
    """Audio that will never be transcribed: how much, and which time range."""

    bytes: int
    start: float
    end: float
    reason: DropReason


@attrs.frozen(kw_only=True)
class FinalizeTimedOut:
    """No final answered finalize ``turn`` in time.

    The audio of that turn is not lost: it is still replayed and transcribed,
    and its text arrives in a later final.
    """

    turn: int
    waited: float
    reason: str


@attrs.frozen(kw_only=True)
class SettingsApplied:
    """New settings are in effect (``changed`` names the fields that changed)."""

    settings: Settings
    changed: tuple[str, ...]


@attrs.frozen(kw_only=True)
class LatencySummary:
    """Time from a finalize request to its final (TTFS), in seconds."""

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    max: float | None = None
    budget: float = 1.59
    #: How many turns took longer than ``budget``.
    over_budget: int = 0


@attrs.frozen(kw_only=True)
class SessionSummary:
    """What happened during the session."""

    audio_seconds_received: float
    audio_seconds_sent: float
    finals: int
    finalized_turns: int
    timed_out_turns: int
    connections: int
    reconnects: int
    dropped_bytes: int
    dropped_seconds: float
    keepalives: int
    latency: LatencySummary


@attrs.frozen(kw_only=True)
class Closed:
    """The session is over; nothing follows. ``error`` is ``None`` after a
    graceful close (audio lost along the way, if any, was reported in
    ``AudioDropped`` when it was lost); otherwise it says why the session
    failed or what the close could not deliver."""

    summary: SessionSummary
    error: str | None = None
    #: ``close_stream`` was sent but the server's ``is_last`` never came:
    #: ``close_timeout`` ran out, or the server closed the socket, first. With
    #: no ``error``, the server's finals had confirmed every tick, so nothing
    #: is lost: the server only never said it was done.
    is_last_missing: bool = False


Event: TypeAlias = (
    Connected
    | Disconnected
    | Reconnecting
    | ConnectionFailed
    | Transcript
    | SpeechStarted
    | SpeechEnded
    | ServerError
    | MalformedMessage
    | UnhandledMessage
    | AudioDropped
    | FinalizeTimedOut
    | SettingsApplied
    | Closed
)
