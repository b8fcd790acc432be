"""Where the WebSocket stack's exceptions become engine inputs, in one place.

Whatever trio (its sockets and ``trio.SSLStream``), ``ssl``, h11, wsproto or
trio-websocket raise while a connection is dialled, upgraded, read, written,
pinged or closed ends at the edge of that connection's task (``Session._edge``)
and is turned here, by :func:`engine_input`, into ``connection_failed`` (the
WebSocket never opened) or ``connection_closed`` / ``protocol_violation`` (it
had): the engine answers with events, a retry, or a ``SessionFailedError``
subclass. No exception of the stack reaches the application, and no
ExceptionGroup either.

What each stage raises, as audited for trio 0.35, trio-websocket 0.12, wsproto
1.3 and h11 0.16:

* **Dialling** (``trio.open_tcp_stream``): ``OSError`` (``socket.gaierror``
  when the name does not resolve; ``OSError("all attempts to connect ...
  failed")`` whose cause holds each address's error). A host name that IDNA
  cannot encode (an empty label, one over 63 characters) raises
  ``UnicodeError`` before any lookup: no retry can help, so it is permanent.
* **TLS** (``trio.SSLStream.do_handshake``): ``trio.BrokenResourceError``
  whose cause is the ``ssl.SSLError`` (a plain-TCP server on a wss:// URL, a
  reset, an EOF) or the ``ssl.SSLCertVerificationError``, which is permanent.
* **The upgrade** (``_websocket.open_client``): trio-websocket's
  ``ConnectionRejected`` for an HTTP status, from its reader task, so inside an
  ExceptionGroup (trio-websocket issue #187: with strict exception groups its
  reader task's errors reach the caller wrapped); ``HandshakeFailed`` for an
  EOF or an answer that is not a WebSocket handshake (``_websocket``).
* **Reading**: trio-websocket turns the stream's ``BrokenResourceError`` and
  ``ClosedResourceError`` into ``ConnectionClosed`` (code 1006); a peer that
  breaks the protocol is failed by ``_websocket`` and ends in
  ``ConnectionClosed`` too, with ``_websocket.violation`` set.
* **Writing and pinging**: ``ConnectionClosed`` (again from the stream's
  errors), and wsproto's ``LocalProtocolError`` should a frame be sent once the
  connection is closing (trio-websocket issue #175): both mean that the
  connection is ending, which its reader reports (:data:`WRITE_ENDED`). A ping
  whose payload is already in flight raises ``ValueError`` (``Session._ping``).
* **Closing**: trio-websocket's ``aclose`` swallows ``ConnectionClosed`` and
  the stream's ``BrokenResourceError``; ``trio.aclose_forcefully`` raises
  nothing. Errors there concern a connection the engine already forgot.

Anything else that is an ``Exception`` (from a custom connector, or an upstream
error this audit missed) fails that connection too, and is logged as
unexpected: the session goes on under its retry policy instead of ending in an
exception nobody documented. ``Cancelled``, ``KeyboardInterrupt`` and the
engine's own ``PulseError`` (a fault of the adapter itself) are not the
network's doing and go on up.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Final

import h11
import trio
import wsproto.utilities
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
)

from pulse_core import PulseError

from ._websocket import violation

__all__ = ["EXPECTED", "WRITE_ENDED", "engine_input", "first", "is_transport_error"]

#: What the audit above found the stack raising. Anything else is unexpected.
EXPECTED: Final = (
    OSError,  # ssl.SSLError and socket.gaierror among them
    UnicodeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    HandshakeError,  # ConnectionRejected and _websocket.HandshakeFailed among them
    ConnectionClosed,
    h11.ProtocolError,
    wsproto.utilities.ProtocolError,
)
#: Raised by a write or a ping when the connection is already ending: the
#: reader reports how it ended, after every message that came before
#: (wsproto's LocalProtocolError: trio-websocket issue #175).
WRITE_ENDED: Final = (ConnectionClosed, wsproto.utilities.LocalProtocolError)


def is_transport_error(exc: BaseException) -> bool:
    """``exc`` ends a connection, and is reported to the engine rather than
    raised (not a cancellation, an interrupt, or the engine's own error)."""
    return isinstance(exc, Exception) and not isinstance(exc, PulseError)


def first(error: BaseException) -> BaseException:
    """The first exception inside ``error``, however deeply grouped: the
    stack's tasks fail together, and the first one is what happened."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def engine_input(
    exc: BaseException, ws: WebSocketConnection | None, redact: Callable[[str], str]
) -> tuple[str, dict[str, Any]]:
    """The engine input (its name and keyword arguments) for ``exc``, which
    ended a connection whose WebSocket is ``ws`` (``None``: it never opened).

    Every ``reason`` is text the server may control: it is passed through
    ``redact`` (PROTOCOL §6 rule 12); a refusal's body goes to the engine whole
    (``connection_refused``), which redacts it before it cuts it.
    """
    name, arguments = _engine_input(exc, ws)
    if "reason" in arguments:
        arguments["reason"] = redact(arguments["reason"])
    return name, arguments


def _engine_input(exc: BaseException, ws: WebSocketConnection | None) -> tuple[str, dict[str, Any]]:
    failed = violation(ws)
    if failed is not None:
        # This side failed the connection: the server broke the protocol.
        return "protocol_violation", {"code": failed.code, "reason": failed.reason or ""}
    if isinstance(exc, ConnectionRejected):
        # The engine words it: the body redacted, then cut (PROTOCOL §6 rule 12).
        retry_after = next(
            (value for name, value in exc.headers or () if name.lower() == b"retry-after"), None
        )
        return "connection_refused", {
            "status": exc.status_code,
            "body": exc.body or b"",
            "retry_after": retry_after,
        }
    text = _describe(exc)
    if ws is not None:
        # The socket was open: it is gone without a close frame.
        return "connection_closed", {"code": None, "reason": text}
    certificate = _certificate_error(exc)
    if certificate is not None:
        return "connection_failed", {
            "status": None,
            "reason": f"the server's TLS certificate failed verification: {certificate}",
            "permanent": True,
        }
    if isinstance(exc, UnicodeError):
        # The host name cannot be encoded (IDNA): every attempt would fail alike.
        return "connection_failed", {
            "status": None,
            "reason": f"the server's address cannot be used: {text}",
            "permanent": True,
        }
    return "connection_failed", {"status": None, "reason": text}


def _describe(exc: BaseException) -> str:
    """``Type: message``, with the first underlying error when ``exc`` only
    wraps it (trio's "all attempts to connect failed", a broken TLS stream)."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = first(cause)
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _certificate_error(exc: BaseException) -> str | None:
    """The verification error behind a failed TLS handshake, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
