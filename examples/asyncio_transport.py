"""A complete asyncio transport for pulse_core, over the ``websockets`` library.

``pulse_core.PulseConnection`` makes every protocol decision (keepalive,
liveness, finalize bookkeeping, reconnects, backoff, replay); this module only
moves bytes over ``websockets.asyncio.client`` (websockets >= 13), owns the
clock (``loop.time()``) and the background tasks, and tells the engine what
the network did. docs/transports.md walks through it. Use it like
``pulse_trio.open_session``::

    async with open_session(api_key, settings={"language": "en"}) as session:
        @session.event_handler("on_final_transcript")
        def show(event): print(event.text)

        await session.send_audio(chunk)
        await session.speech_stopped()
    # leaving the block: close_stream, the last final, then Closed

Tasks under a session: one *link* task per connection dials and then reads
frames into the engine; that connection's *writer* carries out its outbox in
order (each ping gets a task that reports the pong); the *timer* calls
``handle_timer`` at ``next_deadline()``; the *forwarder* hands events to
handlers and to ``events()``. No TaskGroup: nothing here can raise an
ExceptionGroup.

Buffers and what happens when full: audio waiting to be written
(``outgoing_buffer`` bytes; ``send_audio`` waits); events on their way to
handlers and ``events()`` (``event_buffer`` events in all: with an
``events()`` iterator open, reading from the server waits until it catches
up; with none open, the session stops keeping events for one, handlers still
get every event, and a later ``events()`` raises ``LocalProtocolError``);
frames read but not yet handed over (websockets' ``max_queue``, 16; past it
websockets stops reading the socket).

A session that fails for good raises :class:`SessionFailedError` (or its
:class:`AuthenticationError`, for HTTP 401/403) from the ``async with``
block, after every event up to ``Closed`` was delivered. Network errors never
leave the block: each becomes an engine input at one edge
(:func:`engine_input`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConcurrencyError, ConnectionClosed, InvalidStatus, InvalidURI

from pulse_core import (
    HANDLER_EVENTS,
    CloseConnection,
    Closed,
    Command,
    ConfigurationError,
    Connect,
    Connected,
    ConnectionConfig,
    ConnectionFailed,
    Event,
    LocalProtocolError,
    PulseConnection,
    PulseError,
    SendBinary,
    SendPing,
    SendText,
    Settings,
    State,
    check_handler_name,
    handler_names,
)

__all__ = [
    "HANDLER_EVENTS",
    "AsyncioSession",
    "AuthenticationError",
    "SessionFailedError",
    "engine_input",
    "open_session",
]

logger = logging.getLogger("pulse_asyncio")

#: Seconds the close handshake of a connection the engine closed may take.
_CLOSE_WAIT = 2.0
#: Frames websockets holds read but not yet taken (it stops reading past them).
_READ_QUEUE = 16


class SessionFailedError(PulseError):
    """The session ended for good: refused, unreachable, or the close timed out.

    ``failure`` is the last ``ConnectionFailed`` event since a connection last
    opened, if any. Its text comes from ``Closed.error``, already redacted.
    """

    def __init__(self, message: str, failure: ConnectionFailed | None = None) -> None:
        super().__init__(message)
        self.failure = failure


class AuthenticationError(SessionFailedError):
    """HTTP 401 or 403: the API key was refused, or may not do this."""


def _error_for(reason: str, failure: ConnectionFailed | None) -> SessionFailedError:
    status = failure.status if failure is not None and failure.permanent else None
    if status in (401, 403):
        return AuthenticationError(f"the API key was refused: {reason}", failure)
    return SessionFailedError(reason, failure)


# -- the one edge: the stack's exceptions become engine inputs -------------------


def engine_input(
    exc: BaseException, opened: bool, redact: Callable[[str], str]
) -> tuple[str, dict[str, Any]]:
    """The engine input (method name, keyword arguments) for ``exc``, which
    ended a connection that had ``opened`` (its handshake succeeded) or not.

    What websockets 13-17 raise, by stage: dialling raises ``OSError``
    (``socket.gaierror``, refused, reset), ``TimeoutError``, ``UnicodeError``
    for a host name IDNA cannot encode, ``InvalidURI``; TLS raises
    ``ssl.SSLError`` (``SSLCertVerificationError`` is permanent); the upgrade
    raises ``InvalidStatus`` (an HTTP status instead of 101) or another
    ``InvalidHandshake`` / ``EOFError`` for an answer that is not a handshake;
    reading and writing raise ``ConnectionClosed``, whose ``rcvd`` is the
    server's close frame and ``sent`` ours: ours first means websockets failed
    the connection because the server broke the protocol (1002, 1007 for bad
    UTF-8, 1009 for a frame over ``max_size``; PROTOCOL §4). Every reason is
    text the server may control, so it is passed through ``redact`` (PROTOCOL
    §6 rule 12).
    """
    name, arguments = _engine_input(exc, opened)
    if "reason" in arguments:
        arguments["reason"] = redact(arguments["reason"])
    return name, arguments


def _engine_input(exc: BaseException, opened: bool) -> tuple[str, dict[str, Any]]:
    if isinstance(exc, InvalidStatus):
        # The engine words it (the body redacted, then cut) and reads Retry-After.
        response = exc.response
        return "connection_refused", {
            "status": response.status_code,
            "body": bytes(response.body or b""),
            "retry_after": response.headers.get("Retry-After"),
        }
    if isinstance(exc, ConnectionClosed) and opened:
        if exc.sent is not None and (exc.rcvd is None or exc.rcvd_then_sent is False):
            # This side failed the connection: the server broke the protocol.
            return "protocol_violation", {"code": exc.sent.code, "reason": exc.sent.reason}
        if exc.rcvd is not None:
            return "connection_closed", {"code": exc.rcvd.code, "reason": exc.rcvd.reason}
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if opened:
        return "connection_closed", {"code": None, "reason": text}  # gone without a close frame
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            shown = getattr(seen, "verify_message", None) or str(seen)
            reason = f"the server's TLS certificate failed verification: {shown}"
            return "connection_failed", {"status": None, "reason": reason, "permanent": True}
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, UnicodeError | InvalidURI):
        # The address cannot be used: every attempt would fail alike.
        reason = f"the server's address cannot be used: {text}"
        return "connection_failed", {"status": None, "reason": reason, "permanent": True}
    return "connection_failed", {"status": None, "reason": text}


class _RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger for one session: it logs close reasons and frames the
    server sent at DEBUG, which may echo the key (PROTOCOL §6 rule 12)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__(logging.getLogger("websockets.client"), {})
        self._redact = redact

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            kwargs.pop("exc_info", None)  # a traceback could hold the server's text
            self.logger.log(level, self._redact(text), **kwargs)


class _connect(connect):  # noqa: N801 (websockets' own class is lower case)
    """websockets' ``connect`` without following redirects: a redirect is the
    engine's to judge (a final refusal, PROTOCOL §6 rule 5), and following one
    would carry the ``Authorization`` header to a host nobody chose."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


# -- the session -------------------------------------------------------------------


class _Link:
    """One connection attempt and, once open, its WebSocket and writer."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # its writer and pings
        #: The engine is done with it: report nothing more, write nothing more.
        self.abandoned = False
        self.outbox: collections.deque[SendBinary | SendText | SendPing] = collections.deque()
        self.wake = asyncio.Event()


class _Signal:
    """Wakes every task waiting when it is raised."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    def raise_(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


class AsyncioSession:
    """A live transcription session. Create it with :func:`open_session`."""

    def __init__(
        self,
        conn: PulseConnection,
        *,
        ssl_context: ssl.SSLContext | None,
        outgoing_buffer: int,
        event_buffer: int,
    ) -> None:
        self._conn = conn
        self._ssl_context = ssl_context
        self._loop = asyncio.get_running_loop()
        self._ws_logger = _RedactingLogger(conn.redactor.text)
        self._outgoing = 0
        self._outgoing_limit = outgoing_buffer
        self._space = _Signal()  # written, or the session ended: send_audio may go on
        self._event_buffer = event_buffer
        self._inbox: collections.deque[Event] = collections.deque()  # for the forwarder
        self._kept: collections.deque[Event] = collections.deque()  # for events()
        self._keeping = "until read"  # "reading", "overflowed", "ended"
        self._arrived = _Signal()  # the forwarder has new events
        self._kept_signal = _Signal()  # events() has new events
        self._taken = _Signal()  # an event left the session: reading may go on
        self._handlers: dict[str, list[Callable[[Any], Any]]] = collections.defaultdict(list)
        self._link: _Link | None = None
        self._links = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_timer = asyncio.Event()
        self._events_done = asyncio.Event()  # the forwarder delivered Closed
        self._forwarder_task: asyncio.Task[None] | None = None
        self._last_failure: ConnectionFailed | None = None
        self._failure: SessionFailedError | None = None
        self._close_started = False
        self._closed_seen = False
        self._body: asyncio.Task[Any] | None = None  # the task in the async with block
        self._body_cancelled = False

    # -- public API, as pulse_trio.Session ------------------------------------------

    @property
    def state(self) -> State:
        return self._conn.state

    @property
    def settings(self) -> Settings:
        return self._conn.settings

    @property
    def engine(self) -> PulseConnection:
        """The engine, for inspection (its summary, buffers, state)."""
        return self._conn

    async def send_audio(self, data: bytes | bytearray | memoryview) -> None:
        """Queue audio; waits while ``outgoing_buffer`` bytes are still being written."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"audio must be bytes-like, not {type(data).__name__}")
        self._raise_if_failed()
        while self._outgoing >= self._outgoing_limit and not self._closed_seen:
            await self._space.wait()
            self._raise_if_failed()
        self._input(self._conn.send_audio, data)
        await asyncio.sleep(0)  # let the writer and reader run between chunks

    async def speech_started(self) -> None:
        """Local VAD heard speech begin."""
        self._call(self._conn.speech_started)

    async def speech_stopped(self) -> None:
        """Local VAD heard speech end: the turn is finalized (TTFS is measured from now)."""
        self._call(self._conn.speech_stopped)

    async def finalize(self) -> bool:
        """Ask for the current turn's final now; ``False`` if there was no new audio."""
        return bool(self._call(self._conn.finalize))

    async def update_settings(self, **changes: Any) -> None:
        """Change settings mid-session; the engine finishes the current turn first."""
        self._call(self._conn.update_settings, **changes)

    def event_handler(self, name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Register a handler (sync or async) by event name, as a decorator. A
        handler that raises is logged; the session goes on."""
        check_handler_name(name)

        def register(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
            self._handlers[name].append(handler)
            return handler

        return register

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events in order, from the start of the session, ending
        after ``Closed``. One iterator per session (see the module docstring
        for the bound); a second, or one opened after the session stopped
        keeping events, raises ``LocalProtocolError``."""
        if self._keeping != "until read":
            raise LocalProtocolError(f"events() cannot be iterated: events are {self._keeping}")
        self._keeping = "reading"
        try:
            while True:
                while not self._kept:
                    if self._events_done.is_set():
                        return
                    await self._kept_signal.wait()
                event = self._kept.popleft()
                self._taken.raise_()
                yield event
                if isinstance(event, Closed):
                    return
        finally:
            self._keeping = "ended"
            self._kept.clear()
            self._taken.raise_()

    async def aclose(self) -> None:
        """Close gracefully: every final is delivered first. Idempotent. From an
        event handler it only starts the close."""
        if not self._close_started:
            self._close_started = True
            if self._conn.state not in (State.CLOSED, State.FAILED):
                self._input(self._conn.close)
        if asyncio.current_task() is self._forwarder_task:
            return
        config = self._conn.config
        with contextlib.suppress(TimeoutError):
            limit = config.close_timeout + config.connect_timeout + 1.0
            await asyncio.wait_for(self._events_done.wait(), limit)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=_CLOSE_WAIT)

    # -- engine plumbing ----------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._raise_if_failed()
        return self._input(method, *args, **kwargs)

    def _input(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Feed the engine one input at the loop's time, then route its outputs."""
        try:
            result = method(self._loop.time(), *args, **kwargs)
        except LocalProtocolError:
            self._raise_if_failed()  # refused because the session failed: say why
            raise
        self._pump()
        return result

    def _pump(self) -> None:
        """Route the engine's outputs at once: commands to the connection,
        events to the forwarder. Nothing waits here."""
        for command in self._conn.commands():
            self._route(command)
        events = self._conn.events()
        for event in events:
            if isinstance(event, Connected):
                self._last_failure = None
            elif isinstance(event, ConnectionFailed):
                self._last_failure = event
            elif isinstance(event, Closed):
                self._closed_seen = True
                self._space.raise_()
                if event.error is not None:
                    self._failure = _error_for(event.error, self._last_failure)
                    self._loop.call_soon(self._cancel_body)  # a waiting block ends
        if events:
            self._inbox.extend(events)
            self._arrived.raise_()
        self._wake_timer.set()

    def _route(self, command: Command) -> None:
        if isinstance(command, Connect):
            self._links += 1
            link = self._link = _Link(self._links)
            link.task = asyncio.create_task(self._run_link(link, command))
        elif isinstance(command, CloseConnection):
            # The engine has accounted for this connection: report nothing more about it.
            closing, self._link = self._link, None
            if closing is not None:
                self._abandon(closing)
                task = asyncio.create_task(self._close_link(closing, command.code, command.reason))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        elif self._link is not None and not self._link.abandoned:
            self._link.outbox.append(command)
            if isinstance(command, SendBinary):
                self._outgoing += len(command.data)
            self._link.wake.set()
        # No live connection: nothing to write on; the engine replays what matters.

    def _abandon(self, link: _Link) -> None:
        """Forget what ``link`` still had to write (the engine replays it)."""
        link.abandoned = True
        self._outgoing -= sum(len(c.data) for c in link.outbox if isinstance(c, SendBinary))
        link.outbox.clear()
        link.wake.set()
        self._space.raise_()

    def _report(self, link: _Link, name: str, **arguments: Any) -> None:
        """Tell the engine what the network did, if it still cares about ``link``."""
        if link is self._link and not link.abandoned:
            getattr(self._conn, name)(self._loop.time(), **arguments)
            self._pump()

    def _edge(self, link: _Link, exc: BaseException) -> None:
        """The one place where the stack's exceptions end: ``exc`` ended ``link``."""
        name, arguments = engine_input(exc, link.ws is not None, self._conn.redactor.text)
        self._report(link, name, **arguments)
        self._abandon(link)
        if link.ws is not None:
            link.ws.transport.abort()  # gone already, or unusable: free the socket

    # -- the tasks --------------------------------------------------------------------

    async def _run_link(self, link: _Link, command: Connect) -> None:
        try:
            ws = await _connect(
                command.url,
                additional_headers=list(command.headers),
                open_timeout=None,  # the engine's connect_timeout: it sends CloseConnection
                ping_interval=None,  # keepalive and liveness are the engine's
                close_timeout=_CLOSE_WAIT,
                max_size=self._conn.config.max_message_size,
                max_queue=_READ_QUEUE,
                compression=None,
                proxy=None,
                logger=self._ws_logger,
                # wss:// verifies against the system's CAs unless a context is given.
                **({"ssl": self._ssl_context} if self._ssl_context is not None else {}),
            )
        except Exception as exc:
            self._edge(link, exc)
            return
        link.ws = ws
        if link.abandoned:
            await ws.close()
            return
        writer = asyncio.create_task(self._writer(link, ws))
        link.tasks.add(writer)
        self._report(link, "connection_opened")
        try:
            while True:
                message = await ws.recv()
                self._report(link, "receive_message", data=message)
                await self._backpressure()
        except Exception as exc:
            self._closed(link, exc)

    def _closed(self, link: _Link, exc: Exception) -> None:
        """The reader's end: the connection is gone (``exc`` says how)."""
        self._edge(link, exc)

    async def _writer(self, link: _Link, ws: ClientConnection) -> None:
        """Write ``link``'s outbox in order. A failed write ends it: the reader
        then reports how the connection ended, after every message before."""
        while not link.abandoned:
            while link.outbox and not link.abandoned:
                command = link.outbox.popleft()
                try:
                    if isinstance(command, SendBinary):
                        try:
                            await ws.send(command.data)
                        finally:
                            self._outgoing -= len(command.data)
                            self._space.raise_()
                    elif isinstance(command, SendText):
                        await ws.send(command.text)
                    else:
                        task = asyncio.create_task(self._ping(link, ws, command.payload))
                        link.tasks.add(task)
                        task.add_done_callback(link.tasks.discard)
                except Exception:
                    return
            link.wake.clear()
            if not link.outbox:
                await link.wake.wait()

    async def _ping(self, link: _Link, ws: ClientConnection, payload: bytes) -> None:
        """A ping waits for its pong, never holding the audio up; the liveness
        rule counts the pong as hearing from the server (PROTOCOL §6 rule 11)."""
        with contextlib.suppress(ConnectionClosed, ConcurrencyError):
            await (await ws.ping(payload or None))
            self._report(link, "pong_received")

    async def _close_link(self, link: _Link, code: int, reason: str) -> None:
        """Run the close handshake on ``link`` (bounded), then end its tasks."""
        try:
            if link.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.ws.close(code, reason), _CLOSE_WAIT)
        finally:
            if link.ws is not None:
                link.ws.transport.abort()  # a peer that never answered the close: cut it
            for task in (link.task, *link.tasks):
                if task is not None and task is not asyncio.current_task():
                    task.cancel()

    async def _backpressure(self) -> None:
        """Stop reading the server while more than ``event_buffer`` events wait."""
        while len(self._inbox) + len(self._kept) > self._event_buffer:
            await self._taken.wait()

    async def _timer(self) -> None:
        while True:
            self._wake_timer.clear()
            deadline = self._conn.next_deadline()
            if deadline is None:
                await self._wake_timer.wait()
                continue
            delay = deadline - self._loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_timer.wait(), delay)
                    continue  # woken: the deadline may have moved
            self._input(self._conn.handle_timer)

    async def _forwarder(self) -> None:
        self._forwarder_task = asyncio.current_task()
        while True:
            while self._inbox:
                event = self._inbox[0]  # counted until the handlers are done
                await self._dispatch(event)
                self._inbox.popleft()
                self._feed(event)
                if isinstance(event, Closed):
                    self._events_done.set()
                    self._kept_signal.raise_()
            if not self._inbox:
                await self._arrived.wait()

    def _feed(self, event: Event) -> None:
        if self._keeping in ("until read", "reading"):
            self._kept.append(event)
            self._kept_signal.raise_()
            if self._keeping == "until read" and len(self._kept) > self._event_buffer:
                # No iterator is reading: stop keeping events rather than stall.
                self._keeping = "overflowed (more went unread than event_buffer)"
                self._kept.clear()
        self._taken.raise_()

    async def _dispatch(self, event: Event) -> None:
        for name in handler_names(event):  # pulse_core says which handlers get it
            for handler in self._handlers.get(name, ()):
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # a handler's bug must not end the session
                    logger.exception("event handler %s raised", name)

    def _cancel_body(self) -> None:
        if self._body is not None and not self._body.done():
            self._body_cancelled = True
            self._body.cancel()

    def _start(self) -> None:
        self._body = asyncio.current_task()
        self._tasks = [asyncio.create_task(self._timer()), asyncio.create_task(self._forwarder())]
        self._input(self._conn.start)

    async def _stop(self) -> None:
        """End every task the session started, and wait for them."""
        link = self._link
        tasks = [*self._tasks, *self._closing]
        if link is not None:
            self._abandon(link)
            tasks += [t for t in (link.task, *link.tasks) if t is not None]
            if link.ws is not None:
                link.ws.transport.abort()  # cancellation or an error: leave at once
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def open_session(
    api_key: str | None = None,
    *,
    settings: Settings | Mapping[str, Any] | None = None,
    base_url: str | None = None,
    encoding: str = "linear16",
    sample_rate: int = 16000,
    ssl_context: ssl.SSLContext | None = None,
    outgoing_buffer: int = 1 << 20,
    event_buffer: int = 1024,
    **options: Any,
) -> AsyncIterator[AsyncioSession]:
    """Open a Pulse transcription session on the running asyncio loop.

    ``api_key=None`` reads ``SMALLEST_API_KEY``; ``options`` are
    ``pulse_core.ConnectionConfig`` fields (``region``, timeouts,
    ``reconnect``, ``replay_seconds``, ...). Everything is validated before any
    connection (``ConfigurationError``). Leaving the block closes gracefully;
    a permanent failure raises :class:`SessionFailedError` (or
    :class:`AuthenticationError`) once every event up to ``Closed`` was
    delivered. Cancellation leaves at once.
    """
    key = api_key if api_key is not None else os.environ.get("SMALLEST_API_KEY")
    if not key:
        raise ConfigurationError(
            "api_key", "<unset>", "an API key: pass api_key=... or set SMALLEST_API_KEY"
        )
    config = ConnectionConfig(
        api_key=key,
        settings=settings if settings is not None else Settings(),
        base_url=base_url,
        encoding=encoding,
        sample_rate=sample_rate,
        **options,
    )
    for name, value in (("outgoing_buffer", outgoing_buffer), ("event_buffer", event_buffer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(name, value, "an integer of at least 1")
    if ssl_context is not None and config.resolved_base_url.startswith("ws://"):
        raise ConfigurationError(
            "ssl_context", "<SSLContext>", "a wss:// base_url (ws:// is never encrypted)"
        )
    conn = PulseConnection(config, jitter=random.Random())
    session = AsyncioSession(
        conn, ssl_context=ssl_context, outgoing_buffer=outgoing_buffer, event_buffer=event_buffer
    )
    session._start()
    try:
        try:
            yield session
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not session._body_cancelled or task is None:
                raise
            task.uncancel()  # our own cancellation: the failure is raised below
        except BaseException as exc:
            if exc is not session._failure:
                raise
        session._body = None
        await session.aclose()
    finally:
        session._body = None
        await session._stop()
    if session._failure is not None:
        raise session._failure.with_traceback(None) from None
