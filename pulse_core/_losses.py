"""Why a socket was lost, in the words each event uses (spec/PROTOCOL.md §4;
§6 rules 3, 5, 9 and 11).

A socket that ends without the session asking is *lost*; ``Retry`` judges
whether another follows, and the conductor replaces it like any other. The
ways one is lost, each worded once here:

* the server closed it, with a close frame or without (the TCP connection
  dropped): :func:`closed_by_server`;
* the server broke the WebSocket protocol, and the transport failed the
  socket with its own close code: :func:`broke_protocol`;
* the server fell silent: nothing heard, not even a pong, ``ping_timeout``
  after a ping (:func:`silent`), or a finalize timed out with nothing at all
  heard since it went out (:data:`STALLED`). The engine closes such a socket
  itself, with 1011.

A :class:`Loss` carries what ``Disconnected`` reports (the close code, the
reason as given, whether this side closed it) and a line saying what
happened, for ``Reconnecting`` and for the session's error if it gives up.
The same faults while the handshake is under way fail the attempt instead:
:func:`handshake` words them.

Invariants: every code is a plain ``int`` (or ``None``: no close frame); a
loss this side closes says so (``local``), and one the engine must close
carries the command that does.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._commands import CloseConnection

__all__ = ["STALLED", "Loss", "broke_protocol", "closed_by_server", "handshake", "silent"]

_STOPPED: Final = "server stopped answering"


@attrs.frozen
class Loss:
    """How the live socket was lost."""

    #: ``Disconnected.code``: the close code (``None``: no close frame came).
    code: int | None
    #: ``Disconnected.reason``: the close reason, as given.
    reason: str
    #: What happened, in a line: ``Reconnecting.reason``, or why the session failed.
    summary: str
    #: This side closed the socket (``Disconnected.local``).
    local: bool = False
    #: What the engine sends to close the socket itself (``None``: it is closed).
    close: CloseConnection | None = None


def closed_by_server(code: int | None, reason: str) -> Loss:
    """The server closed the socket with ``code`` and ``reason`` (already
    free of the key), or without a close frame (``code=None``)."""
    text = "closed by the server" + (f" with code {code}" if code is not None else "")
    return Loss(code, reason or "closed by the server", f"{text}: {reason}" if reason else text)


def broke_protocol(code: int, reason: str) -> Loss:
    """The transport failed the socket with ``code``: what the server sent
    broke RFC 6455 (§7.1.7, §8.1), so the socket is not read on."""
    summary = f"closed with code {code}: the server broke the protocol ({reason})"
    return Loss(code, reason, summary, local=True)


def silent(seconds: float) -> Loss:
    """Nothing heard for ``seconds``, not even an answer to a ping (§6 rule 11)."""
    summary = f"no answer from the server for {seconds:.1f} s, not even to a ping"
    return Loss(
        1011, _STOPPED, summary, local=True, close=CloseConnection(code=1011, reason=_STOPPED)
    )


#: A finalize timed out with nothing at all heard since it went out (§6 rule 3).
STALLED: Final = Loss(
    1011, _STOPPED, _STOPPED, local=True, close=CloseConnection(code=1011, reason=_STOPPED)
)


def handshake(what: str, reason: str) -> str:
    """Why an attempt failed when the socket ended (``what``) during its
    handshake, for the reason given (if any)."""
    return f"{what} during handshake: {reason}".rstrip(": ")
