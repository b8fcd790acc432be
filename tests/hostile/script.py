"""What the hostile server does, as plain data.

A :class:`Script` describes one connection: how the upgrade is answered
(:class:`Handshake`), how close_stream is answered, and a list of
:class:`Fault` steps, each an action (or a sequence of them) run when a trigger
condition is met (one may replace the answer to a finalize or close_stream). The server picks a script per connection number, so
connection 1, 2, ... may each misbehave differently.

Strings and bytes in actions may carry placeholders filled from the request:
``{authorization}`` (the whole header value), ``{key}`` (the token after
``Bearer``), ``{key_head}`` and ``{key_tail}`` (its first and second half),
``{key_escaped}`` (the key with every character a JSON ``\\u`` escape).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import attrs

from .framing import CONTINUATION, TEXT, encode_frame

__all__ = [
    "Action",
    "AfterAudio",
    "AfterSeconds",
    "Close",
    "Delay",
    "Error",
    "Fault",
    "Final",
    "HalfOpen",
    "Handshake",
    "Hangup",
    "OnClientClose",
    "OnCloseStream",
    "OnFinalize",
    "OnOpen",
    "OnPing",
    "Ping",
    "Pong",
    "Raw",
    "RepeatFinal",
    "Script",
    "SlowRead",
    "SplitFinals",
    "Text",
    "Together",
    "Trigger",
    "fragmented_text",
    "invalid_utf8_text",
    "oversized_text",
    "redirect",
    "refuse",
]


# -- the opening handshake ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Handshake:
    """How the upgrade request is answered. The default is a correct 101."""

    status: int = 101
    #: Replaces the whole status line (e.g. ``b"HTTP/1.0 garbage"``).
    status_line: bytes | None = None
    #: Replaces the correct ``Sec-WebSocket-Accept`` value ("" leaves it out).
    accept: str | None = None
    #: Send ``Upgrade: websocket`` (101 only).
    upgrade: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    #: One filler header line of this many bytes.
    padding: int = 0
    body: bytes = b""
    #: Filler bytes streamed after ``body`` (a huge body costs no memory here).
    body_size: int = 0
    #: Close TCP after writing this many bytes of the response (0: before any).
    cut_after: int | None = None
    #: Close TCP without reading the request at all.
    hang_up_at_once: bool = False
    #: Written as soon as TCP is accepted, before the request is read (a
    #: server that speaks first, or plain HTTP answering a TLS hello).
    greeting: bytes = b""
    #: Never answer (the TCP connection stays open).
    stall: bool = False


def refuse(
    status: int = 503,
    *,
    retry_after: str | None = None,
    body: bytes = b"",
    body_size: int = 0,
) -> Handshake:
    """An HTTP refusal instead of 101, with ``Retry-After`` as given (any text)."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Handshake(status=status, headers=headers, body=body, body_size=body_size)


def redirect(location: str, status: int = 301) -> Handshake:
    return Handshake(status=status, headers=(("Location", location),))


# -- triggers -------------------------------------------------------------------------


@attrs.frozen
class OnOpen:
    """Right after the 101 is written."""


@attrs.frozen
class AfterAudio:
    """Once this connection has received at least ``bytes`` of audio."""

    bytes: int


@attrs.frozen
class OnFinalize:
    """On the ``nth`` finalize of this connection (1-based; 0: every one)."""

    nth: int = 1


@attrs.frozen
class OnCloseStream:
    """When ``close_stream`` arrives."""


@attrs.frozen
class OnClientClose:
    """When the client's close frame arrives, before the server replies to it."""


@attrs.frozen
class OnPing:
    """When a ping from the client arrives, before the server answers it
    (``replace=True``: no pong)."""


@attrs.frozen
class AfterSeconds:
    """``seconds`` after the 101, whatever else is going on."""

    seconds: float


Trigger: TypeAlias = (
    OnOpen | AfterAudio | OnFinalize | OnCloseStream | OnClientClose | OnPing | AfterSeconds
)


# -- actions --------------------------------------------------------------------------


@attrs.frozen
class Ping:
    payload: bytes = b""


@attrs.frozen
class Pong:
    """An unsolicited pong."""

    payload: bytes = b""


@attrs.frozen
class Text:
    """A text frame (placeholders filled in)."""

    text: str


@attrs.frozen
class Raw:
    """Bytes written to the socket as they are (hand-made frames)."""

    data: bytes


@attrs.frozen(kw_only=True)
class Final:
    """A final covering the audio since the previous final (the server's
    trivial recognition), with optional lies: ``words`` replaces the word times
    (connection seconds; ``None`` keeps the true ones). With ``covers=False``
    the final covers nothing: the audio stays for the next final, so a lie in
    ``words`` loses none of it."""

    is_last: bool = False
    from_finalize: bool | None = None
    words: tuple[tuple[float, float], ...] | None = None
    covers: bool = True


@attrs.frozen
class RepeatFinal:
    """Send the previous final again, byte for byte."""


@attrs.frozen(kw_only=True)
class SplitFinals:
    """Cover the pending audio with ``pieces`` finals, sent in reverse order
    (the latest audio first). With ``sent``, only that many of them (the
    latest) go out: the rest are never sent."""

    pieces: int = 2
    from_finalize: bool | None = None
    sent: int | None = None


@attrs.frozen(kw_only=True)
class Error:
    """A server error message in one of the documented shapes (spec/messages):
    1 ``{type, status, message}``, 2 ``{type, error_code, message}``,
    3 ``{status, error: {message, code}}``."""

    shape: int = 1
    message: str = "something went wrong"
    code: str | None = None


@attrs.frozen(kw_only=True)
class Close:
    """A close frame (``code=None``: empty payload), then the close handshake."""

    code: int | None = 1000
    reason: str = ""


@attrs.frozen(kw_only=True)
class Hangup:
    """Close TCP now: EOF, or with ``reset`` a TCP RST."""

    reset: bool = False


@attrs.frozen
class HalfOpen:
    """Stop reading and writing for good; the TCP connection stays up."""


@attrs.frozen
class SlowRead:
    """From now on read at most ``rate`` bytes per second."""

    rate: float


@attrs.frozen
class Delay:
    """Wait ``seconds`` before the next action. A fault on what the server
    read (audio, finalize, close_stream, the client's close) holds the reading
    up meanwhile: a slow answer from a busy server."""

    seconds: float


def _actions(value: Action | Sequence[Action]) -> tuple[Action, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value,)


@attrs.frozen
class Together:
    """Run ``do`` holding every write back, then write it all in one send, so
    the peer reads it at once (e.g. a final and a burst of pings)."""

    do: tuple[Action, ...] = attrs.field(converter=_actions)


Action: TypeAlias = (
    Ping
    | Pong
    | Text
    | Raw
    | Final
    | RepeatFinal
    | SplitFinals
    | Error
    | Close
    | Hangup
    | HalfOpen
    | SlowRead
    | Delay
    | Together
)


@attrs.frozen
class Fault:
    """Run ``do`` when ``when`` holds. ``replace=True`` on a finalize,
    close_stream or ping trigger suppresses the server's normal answer to it."""

    when: Trigger
    do: tuple[Action, ...] = attrs.field(converter=_actions)
    replace: bool = attrs.field(default=False, kw_only=True)


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Script:
    """One connection's behaviour. The default is a well-behaved Pulse server."""

    handshake: Handshake = Handshake()
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)
    answer_close_stream: bool = True
    #: The final answering close_stream says ``is_last: true``.
    send_is_last: bool = True
    #: After the ``is_last`` final the server closes with 1000.
    close_after_is_last: bool = True
    #: Largest client frame accepted (1009 beyond it).
    max_frame: int = 1 << 22
    #: Close 1002 on an unmasked client frame (RFC 6455 5.1).
    require_mask: bool = True


# -- hand-made frames for Raw -----------------------------------------------------------


def fragmented_text(text: str, pieces: int = 3) -> bytes:
    """``text`` as one message in ``pieces`` frames (split on bytes, so a
    character may straddle two frames)."""
    data = text.encode("utf-8")
    size = max(1, -(-len(data) // pieces))
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    frames = [
        encode_frame(TEXT if i == 0 else CONTINUATION, chunk, fin=i == len(chunks) - 1)
        for i, chunk in enumerate(chunks)
    ]
    return b"".join(frames)


def invalid_utf8_text() -> bytes:
    """A text frame whose payload is not UTF-8 (a lone continuation byte)."""
    return encode_frame(TEXT, b'{"type":"transcription","transcript":"\x80\xff"}')


def oversized_text(size: int) -> bytes:
    """One valid JSON text frame of ``size`` bytes."""
    head = b'{"type":"transcription","is_final":false,"transcript":"'
    tail = b'"}'
    filler = max(0, size - len(head) - len(tail))
    return encode_frame(TEXT, head + b"x" * filler + tail)
