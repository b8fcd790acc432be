"""Commands: what the engine asks the transport to do, in order."""

from __future__ import annotations

from typing import Final, TypeAlias

import attrs

__all__ = [
    "CLOSE_STREAM",
    "FINALIZE",
    "CloseConnection",
    "Command",
    "Connect",
    "SendBinary",
    "SendPing",
    "SendText",
]

#: The control message that asks for the current turn's final (spec/PROTOCOL.md §3, §6 rule 3).
FINALIZE: Final = '{"type":"finalize"}'
#: The control message that ends the stream: the server answers ``is_last``.
CLOSE_STREAM: Final = '{"type":"close_stream"}'


def _redact_headers(headers: tuple[tuple[str, str], ...]) -> str:
    shown = [
        (name, "<redacted>" if name.lower() == "authorization" else value)
        for name, value in headers
    ]
    return repr(tuple(shown))


@attrs.frozen(kw_only=True)
class Connect:
    """Open a WebSocket to ``url`` with these upgrade headers.

    Report the outcome with ``connection_opened`` or ``connection_failed``.
    ``timeout`` is how long the engine will wait before it gives up on the
    attempt itself (it then sends ``CloseConnection``).
    """

    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=_redact_headers)
    attempt: int
    timeout: float


@attrs.frozen
class SendBinary:
    """Send one binary frame of audio."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class SendText:
    """Send one text frame (a JSON control message)."""

    text: str


@attrs.frozen
class SendPing:
    """Send a WebSocket ping (keepalive for encodings without byte silence)."""

    payload: bytes = b""


@attrs.frozen(kw_only=True)
class CloseConnection:
    """Close the current connection, or abandon the attempt in progress.

    After this command the transport reports nothing more about that
    connection: the engine has already accounted for it.
    """

    code: int = 1000
    reason: str = ""


Command: TypeAlias = Connect | SendBinary | SendText | SendPing | CloseConnection
