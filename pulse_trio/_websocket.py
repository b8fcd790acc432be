"""The WebSocket layer under the adapter and the emulator: trio-websocket, with
its faults against peers this project did not write mended here, once, for
both sides.

* **A ping that lands after this side's close frame.** trio-websocket answers
  every ping with a pong; once its own close frame is out, wsproto refuses to
  send one and raises ``LocalProtocolError`` from the connection's reader task,
  which tears down every task beside it (trio-websocket issue #184, open). RFC
  6455 §5.5.2 asks for a pong only while the connection is open, so
  :class:`_Connection` does not answer a ping once closing has begun.
* **A server that hangs up during the opening handshake.** The reader task
  ends, but nothing wakes the caller waiting for the handshake, which then
  waits for its own timeout. :func:`open_client` waits for the handshake *or*
  the reader's end, and raises :class:`HandshakeFailed` at once.
* **A malformed answer to the upgrade** (a wrong ``Sec-WebSocket-Accept``, no
  ``Upgrade`` header, headers too large for h11): h11 or wsproto raise their
  own protocol errors from the reader task. During the handshake they become
  :class:`HandshakeFailed`, with the protocol error as its cause.
* **A refusal's body** is collected whole by trio-websocket; here it is cut at
  :data:`REFUSAL_BODY_LIMIT` bytes, and the refusal reported then.
* **A peer that breaks the protocol** (a text frame that is not UTF-8, a
  malformed frame, a message over ``max_message_size``) must be failed: a
  close frame with 1007, 1002 or 1009, then no more reading (RFC 6455 §7.1.7,
  §8.1). wsproto hands its complaint over as if it were the peer's close frame;
  trio-websocket then sends nothing and reports the peer's close, and for a
  message too big it sends 1009 but drops the messages still queued and reports
  that close as the peer's too (how the client fails a connection is among its
  Autobahn failures, trio-websocket issue #147; wsproto's own change to raise
  instead, wsproto pull request #100, is still open). :class:`_Connection`
  fails the connection itself, delivers what arrived before, and keeps the
  close this side sent in :func:`violation`, so that the caller can tell it
  from the peer's. A client then reads on, delivering nothing, until the
  server hangs up (:func:`hung_up`; RFC 6455 §7.1.1): closing the socket with
  unread data resets it, and the server could lose the close frame.
* **One write for many messages.** ``send_message`` takes the stream lock and
  writes the stream once per message, each a trip through the scheduler;
  :func:`send_messages` frames several messages through the same wsproto
  connection and writes them with one ``send_all`` under the same lock, taking
  the lock without a schedule point when nobody holds it.
* **Closing while the peer's close frame is being answered.** Once the peer's
  close frame is read, ``aclose()`` returns at once, before the reader task has
  written the answer; a caller that then closes the stream or cancels the
  reader loses that answer (RFC 6455 §5.5.1 asks for it; the close paths are
  trio-websocket issue #90, open). Here ``aclose()`` returns once the close
  handshake is over (its caller bounds the wait).

This leans on trio-websocket internals (the reader task, the handshake
events, the close reason, the message buffer, the wsproto connection, four
event handlers, the stream lock), the same ones its own
``wrap_client_stream`` and ``wrap_server_stream`` use;
``tests/adapter/test_websocket.py`` fails if an upgrade changes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn, cast

import h11
import trio
import wsproto.utilities
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, RejectData, TextMessage

__all__ = [
    "REFUSAL_BODY_LIMIT",
    "HandshakeFailed",
    "deliver",
    "hung_up",
    "open_client",
    "open_server",
    "send_messages",
    "violation",
]

#: Bytes of a refusal's body kept (enough for any error message a server sends).
REFUSAL_BODY_LIMIT: Final = 64 * 1024
_PROTOCOL_ERRORS: Final = (h11.ProtocolError, wsproto.utilities.ProtocolError)


class HandshakeFailed(HandshakeError):  # noqa: N818 - a kind of trio-websocket's HandshakeError
    """The opening handshake ended without a WebSocket and without a refusal:
    the peer hung up, or its answer was not a WebSocket handshake."""


class _Connection(WebSocketConnection):
    """A trio-websocket connection that survives the peers described above."""

    #: The close this side sent because the peer broke the protocol, if it did.
    _violation: CloseReason | None = None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await super().aclose(code, reason)
        # If the peer's close frame came first, the reader task may still be
        # writing its answer (RFC 6455 §5.5.1): let it finish.
        await self._close_handshake.wait()

    async def _handle_ping_event(self, event: Ping) -> None:
        if self._wsproto.state is not ConnectionState.OPEN:
            return  # closing: no pong (RFC 6455 §5.5.2), and wsproto would raise
        await super()._handle_ping_event(event)

    #: Where whole messages go as they are read (:func:`deliver`), if set.
    _sink: Callable[[str | bytes], Awaitable[None]] | None = None
    #: Messages put in the message buffer and not yet handed on by
    #: :func:`deliver`: while there are any, the next goes there too.
    _queued = 0

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if self._message_size + len(event.data) > self._max_message_size:
            await self._fail(
                CloseReason(1009, f"message over max_message_size ({self._max_message_size})")
            )
        sink = self._sink
        if sink is None or self._queued or not event.message_finished:
            if event.message_finished:
                self._queued += 1
            await super()._handle_message_event(event)
            return
        parts = self._message_parts
        message: str | bytes
        if isinstance(event, BytesMessage):
            message = b"".join([*cast("list[bytes]", parts), event.data])
        else:
            message = "".join([*cast("list[str]", parts), event.data])
        self._message_parts = []
        self._message_size = 0
        await sink(message)

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        # A close frame from the peer moves wsproto to REMOTE_CLOSING (or to
        # CLOSED, answering ours); in any other state the event is wsproto's
        # complaint about what the peer sent, in the form of a close.
        if self._wsproto.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            await self._fail(CloseReason(int(event.code), event.reason or ""))
        await super()._handle_close_connection_event(event)

    async def _fail(self, why: CloseReason) -> NoReturn:
        """Fail the WebSocket connection (RFC 6455 §7.1.7): send a close frame
        with ``why`` (unless one went out already), hand over the messages that
        arrived before, and deliver nothing more (a client reads on until the
        server hangs up)."""
        self._violation = why
        self._message_parts = []
        self._message_size = 0
        if self._close_reason is None:
            self._close_reason = why  # writers stop here: nothing after the close frame
        if self._wsproto.state is ConnectionState.OPEN:
            with contextlib.suppress(ConnectionClosed):  # the stream is gone: nothing to tell
                await self._send(CloseConnection(code=why.code, reason=why.reason))
        await self._close_web_socket(why.code, why.reason)
        if self.is_client:
            # Read on, delivering nothing, until the server hangs up (RFC 6455
            # §7.1.1: a client waits for the server to close TCP; see
            # ``hung_up``, whose caller bounds the wait). Closing the socket with
            # what the server sent meanwhile unread resets it, and the server
            # may then never read the close frame.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await self._stream.receive_some(self._receive_buffer_size):
                    pass
        self._close_handshake.set()
        # Raised to the reader task, which stops reading at once.
        raise ConnectionClosed(self._close_reason)

    async def _handle_reject_data_event(self, event: RejectData) -> None:
        room = REFUSAL_BODY_LIMIT - len(self._reject_body)
        if len(event.data) >= room:
            self._reject_body += event.data[:room]
            raise ConnectionRejected(
                self._reject_status, self._reject_headers, body=self._reject_body
            )
        await super()._handle_reject_data_event(event)


async def send_messages(ws: WebSocketConnection, messages: Sequence[str | bytes]) -> None:
    """Send ``messages`` in order, as ``send_message`` would one by one, but
    with one write to the stream.

    Safe beside the connection's reader and ``aclose()`` for the reasons
    ``send_message`` is: the close reason is checked and every message framed
    with no schedule point in between (a close sets the reason before its close
    frame is framed, so no message is framed after one), and the bytes are
    written under the stream lock that every write of the connection takes, in
    the order it was taken. A broken stream is handled as ``_send`` handles it.
    Raises ``ConnectionClosed`` as ``send_message`` does. A connection that is
    not one of ours gets ``send_message`` per message.
    """
    if not isinstance(ws, _Connection):
        for message in messages:
            await ws.send_message(message)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    framing = ws._wsproto
    data = b"".join(
        framing.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
        for m in messages
    )
    lock = ws._stream_lock
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        await ws._stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await ws._abort_web_socket()
        raise ConnectionClosed(ws._close_reason) from None
    finally:
        lock.release()


async def deliver(
    ws: WebSocketConnection, sink: Callable[[str | bytes], Awaitable[None]]
) -> NoReturn:
    """Hand every message ``ws`` receives to ``sink``, in order, until the
    connection ends; then raise ``ConnectionClosed`` as ``get_message`` does.

    For one of our connections the reader task calls ``sink`` itself as each
    message is read, with no memory channel and no task between them; the
    messages that were put in the buffer before (from the handshake on) are
    handed on first, and until they are, later ones queue behind them. So
    ``sink`` sees every message once, in the order it came. Reading waits
    while ``sink`` does. Another connection is read with ``get_message``.
    """
    if not isinstance(ws, _Connection):
        while True:
            await sink(await ws.get_message())
    ws._sink = sink
    while True:
        message = await ws.get_message()  # raises ConnectionClosed at the end
        try:
            await sink(message)
        finally:
            ws._queued -= 1


async def hung_up(ws: WebSocketConnection) -> None:
    """Wait until the close handshake is over: for a connection this side
    failed, until the server has hung up after reading its close frame."""
    if isinstance(ws, _Connection):
        await ws._close_handshake.wait()


def violation(ws: WebSocketConnection | None) -> CloseReason | None:
    """The close this side sent because the peer broke the protocol, or
    ``None`` (the connection ended otherwise, or is not one of ours)."""
    return ws._violation if isinstance(ws, _Connection) else None


async def open_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    extra_headers: list[tuple[bytes, bytes]],
    message_queue_size: int,
    max_message_size: int,
) -> WebSocketConnection:
    """Run the client's opening handshake over ``stream``; its reader task
    runs in ``nursery``.

    Raises :class:`HandshakeFailed` as soon as the handshake cannot succeed,
    and trio-websocket's ``ConnectionRejected`` (from the reader task, through
    ``nursery``) when the server answers with an HTTP status.
    """
    connection = _Connection(
        stream,
        WSConnection(ConnectionType.CLIENT),
        host=host,
        path=resource,
        client_extra_headers=extra_headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )
    opened: trio.Event = connection._open_handshake
    ended = trio.Event()
    cause: list[BaseException] = []

    async def read() -> None:
        try:
            await connection._reader_task()
        except _PROTOCOL_ERRORS as exc:
            if opened.is_set():
                raise
            cause.append(exc)  # open_client reports it
        finally:
            ended.set()

    nursery.start_soon(read)
    async with trio.open_nursery() as race:

        async def until(event: trio.Event) -> None:
            await event.wait()
            race.cancel_scope.cancel()

        race.start_soon(until, opened)
        race.start_soon(until, ended)
    if opened.is_set():
        return connection
    if cause:
        error = cause[0]
        raise HandshakeFailed(
            f"the answer to the upgrade was not a WebSocket handshake: {_first_complaint(error)}"
        ) from error
    raise HandshakeFailed("the server closed the connection during the handshake")


def _first_complaint(error: BaseException) -> BaseException:
    """The first protocol error in ``error``'s chain: trio-websocket answers
    wsproto's complaint about a response ("Bad accept token") with an event
    that h11 then refuses, so the complaint is found among the contexts."""
    first = error
    link = error.__context__
    while link is not None:
        if isinstance(link, _PROTOCOL_ERRORS):
            first = link
        link = link.__context__
    return first


async def open_server(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    message_queue_size: int = 1,
    max_message_size: int = 1 << 20,
) -> WebSocketRequest:
    """Read a client's upgrade request over ``stream``; the connection's reader
    task runs in ``nursery``."""
    connection = _Connection(
        stream,
        WSConnection(ConnectionType.SERVER),
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )
    nursery.start_soon(connection._reader_task)
    request: WebSocketRequest = await connection._get_request()
    return request
