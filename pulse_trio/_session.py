"""``open_session()``: a Pulse session over trio-websocket.

The adapter is thin. ``PulseConnection`` makes every protocol decision; this
module moves bytes, owns the clock (``trio.current_time()``, so trio's virtual
clock works in tests) and the background tasks, and tells the engine what the
network did. After every engine input, ``_pump`` routes the engine's commands
to the live connection's outbox and its events to the forwarder; nothing
waits there. The tasks under the session:

* one *link* task per connection dials (through its connector, ``_connector``),
  then hands what the connection reads to the engine (``_websocket.deliver``:
  the connection's reader task does so itself, as each message is read);
* that connection's *writer* carries out its outbox in order (it alone writes);
  each ping gets a task of its own that reports the pong (``pong_received``);
* the *timer* calls ``handle_timer`` whenever the engine's deadline passes;
* the *forwarder* hands events to handlers and to ``events()``, and awaits
  what handlers return. While it is idle, the task that read a message calls
  the handlers of the events made of it at once (``_receive``), so a final
  reaches a plain function's handler with no trip through the scheduler; a
  handler that returns an awaitable hands it, and what follows, to the
  forwarder. One of the two dispatches at a time, in order.

Buffers and their bounds: audio waiting to be written (``outgoing_buffer``
bytes; ``send_audio`` waits when full), events on their way to handlers and
``events()`` (``event_buffer`` events and ``event_buffer_bytes`` bytes in all,
the forwarder's queue and those kept for ``events()`` together, and no more
than ``unread_event_bytes`` kept for an iterator not yet opened; see
``Session.events``; while reading waits, the WebSocket below holds what
arrived unread too, up to 16 messages with the default connector), and
everything inside the engine (bounded by its configuration, and drained by
``_pump`` after every input, so its own queues hold one input's output at
most).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import inspect
import json
import logging
import math
import os
import random
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from pulse_core import (
    HANDLER_EVENTS,
    AudioDropped,
    CloseConnection,
    Closed,
    Command,
    ConfigurationError,
    Connect,
    Connected,
    ConnectionConfig,
    ConnectionFailed,
    Disconnected,
    Encoding,
    Event,
    LocalProtocolError,
    MalformedMessage,
    OggPageSplitter,
    PulseConnection,
    Reconnecting,
    SendBinary,
    SendPing,
    SendText,
    ServerError,
    Settings,
    State,
    check_handler_name,
    handler_names,
    opus_packet_ticks,
)

from ._connector import Connector, close_transport, default_connector
from ._errors import SessionFailedError, error_for
from ._log_redaction import hide_key_in_logs, stop_hiding
from ._transport_errors import EXPECTED, WRITE_ENDED, engine_input, first, is_transport_error
from ._websocket import deliver, hung_up, send_messages, violation

__all__ = ["HANDLER_EVENTS", "Session", "open_session"]

logger = logging.getLogger("pulse_trio")

Handler: TypeAlias = Callable[[Any], Any]

_DISCONNECT_TIMEOUT = 2.0
#: What an event counts for at least: the object and its small fields (a short
#: transcript with its ``raw`` mapping takes about 0.9 KiB).
_EVENT_BYTES = 1024
#: Bytes of audio the writer puts in one write at most (a few seconds of it).
_WRITE_BATCH = 64 * 1024


#: Reconnect delays' jitter, shared by every session that is not given its own
#: (a generator's state is 2.5 KiB; nothing needs a stream of its own).
_JITTER = random.Random()


def _message_bytes(message: str | bytes) -> int:
    """What the events made of one server message hold in memory, estimated
    cheaply from the message, and from above.

    Parsing keeps the message's text once (``raw`` and the typed fields share
    the strings) and makes a Python object for each JSON value: up to about 64
    bytes for a number, a string or a list, 256 for an object (its dict, and
    the ``Word`` or ``Utterance`` made of it). Every value but the first of its
    container follows a ``,``, so counting ``,`` and ``[`` at 64 and ``{`` at
    256 never falls short; one inside a string errs high. A transcript with
    word timestamps takes six or seven times its text, junk such as
    ``[{}, {}, ...]`` up to thirty times; plain text about once.
    """
    if isinstance(message, str):
        values = message.count(",") + message.count("[")
        objects = message.count("{")
    else:
        values = message.count(b",") + message.count(b"[")
        objects = message.count(b"{")
    return sys.getsizeof(message) + 64 * values + 256 * objects


class _Link:
    """One connection attempt and, once open, its WebSocket and writer."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.ws: WebSocketConnection | None = None
        self.scope = trio.CancelScope()
        #: The engine is done with it: report nothing more, write nothing more.
        self.abandoned = False
        #: The engine closed it: ``_close_link`` runs the close handshake and ends it.
        self.closing = False
        self.outbox: collections.deque[SendBinary | SendText | SendPing] = collections.deque()
        self.wake = trio.Event()


class _Inbox:
    """The forwarder's queue: the engine's events in order, each with its size
    (``_EVENT_BYTES``, plus ``_message_bytes`` of the server message it was
    made of)."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[Event, int]] = collections.deque()
        self.bytes = 0
        #: The size of the server message the reader is handing to the engine
        #: (0 at any other time), so that the events made of it carry it.
        self.arriving = 0

    def __len__(self) -> int:
        return len(self._items)

    def extend(self, events: Iterable[Event]) -> None:
        size = _EVENT_BYTES + self.arriving
        for event in events:
            self._items.append((event, size))
            self.bytes += size

    def first(self) -> tuple[Event, int]:
        return self._items[0]

    def popleft(self) -> None:
        _, size = self._items.popleft()
        self.bytes -= size


class _Keeping(enum.Enum):
    """Whether events are kept for ``events()``; the values tell an iterator
    opened too late why it gets none."""

    UNTIL_READ = "kept from the start of the session until an iterator reads them"
    READING = "events() is already being iterated (events are kept for one iterator)"
    OVERFLOWED = (
        "events() was opened after more events went unread than the session keeps "
        "for an iterator not yet opened (unread_event_bytes={unread}, event_buffer={events}, "
        "event_buffer_bytes={bytes}): it stopped keeping them for one (handlers got every "
        "one); open events() sooner, or raise the bounds"
    )
    ENDED = "events() was already iterated (events are kept for one iterator)"


class _Signal:
    """Wakes every task waiting at the time it is raised (a condition without a lock)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    def raise_(self) -> None:
        event, self._event = self._event, trio.Event()
        event.set()


class Session:
    """A live transcription session. Create it with :func:`open_session`."""

    def __init__(
        self,
        conn: PulseConnection,
        *,
        connector: Connector,
        ssl_context: ssl.SSLContext | None,
        outgoing_buffer: int,
        event_buffer: int,
        event_buffer_bytes: int,
        unread_event_bytes: int,
    ) -> None:
        self._conn = conn
        self._connector = connector
        self._ssl_context = ssl_context
        self.id = uuid.uuid4().hex[:12]
        self._log = logging.LoggerAdapter(logger, {"session_id": self.id})
        self._nursery: trio.Nursery | None = None
        self._outgoing_bytes = 0
        self._outgoing_limit = outgoing_buffer
        self._space = _Signal()
        # Events on their way: the forwarder's queue, then (for events()) the
        # channel, whose events' sizes are in _kept. Both count against the
        # bounds; the channel takes any number, the counting keeps it bounded.
        self._events = _Inbox()
        self._events_in, self._events_out = trio.open_memory_channel[Event](math.inf)
        self._kept: collections.deque[int] = collections.deque()
        self._kept_bytes = 0
        self._event_buffer = event_buffer
        self._event_buffer_bytes = event_buffer_bytes
        self._unread_event_bytes = unread_event_bytes
        self._keeping = _Keeping.UNTIL_READ
        self._taken = _Signal()  # an event left the session: there may be room
        self._handlers: dict[str, list[Handler]] = collections.defaultdict(list)
        self._wake_forwarder = trio.Event()
        #: The forwarder waits with nothing of its own to finish: the reader may
        #: call handlers itself (``_receive``).
        self._forwarder_idle = False
        #: The reader is handing a message to the engine and will call the
        #: handlers itself: ``_pump`` need not wake the forwarder.
        self._reader_dispatches = False
        #: The handler calls still to make for the first queued event, once
        #: started (``_dispatch_ready``).
        self._head_calls: Iterator[tuple[str, Handler]] | None = None
        #: What a handler (named) returned for the forwarder to await, from the reader.
        self._handed_over: tuple[str, Awaitable[Any]] | None = None
        #: The scope the timer sleeps in, its deadline the engine's (``_timer``).
        self._timer_scope: trio.CancelScope | None = None
        self._events_done = trio.Event()  # the forwarder delivered Closed
        self._closing_links = 0
        self._links_closed = trio.Event()
        self._link: _Link | None = None
        self._links = 0
        self._failure: SessionFailedError | None = None
        self._last_failure: ConnectionFailed | None = None
        self._close_started = False
        self._closed_seen = False
        self._forwarder_task: trio.lowlevel.Task | None = None
        #: Cancelled when the session fails for good, so a waiting block ends.
        self.body_scope = trio.CancelScope()

    # -- public API -----------------------------------------------------------

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
        """Queue audio; waits while ``outgoing_buffer`` bytes are still being written.

        Audio is never half-taken: if this raises (``Cancelled`` included),
        none of ``data`` was taken, and once it returns all of it was. It is a
        cancel point (a cancelled caller gets ``Cancelled`` before anything is
        taken, also while it waits for room) but, unlike most of trio's
        functions, not always a schedule point: when the session is connected
        and the audio sent before has been written, it takes ``data`` and
        returns without letting other tasks run first, so a live source sending
        a chunk every 20 ms costs no trip through the scheduler per chunk.
        While connecting, or while earlier audio is still waiting to be written
        (a source sending faster than real time), it lets other tasks run
        before returning, as it does whenever it waits for room.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"audio must be bytes-like, not {type(data).__name__}")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_failed()
        while self._outgoing_bytes >= self._outgoing_limit and not self._closed_seen:
            await self._space.wait()
            # A failure wakes the waiters and cancels the block in one step: let the
            # cancellation win, so the failure is raised once every event is delivered.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._raise_if_failed()
        link = self._link
        # Connected, with what came before written: nothing for other tasks to catch up on.
        caught_up = not self._outgoing_bytes and link is not None and link.ws is not None
        self._input(self._conn.send_audio, data)
        if not caught_up:
            # Taken: a cancellation now must not make the caller think otherwise.
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def speech_started(self) -> None:
        """Local VAD heard speech begin."""
        await self._call(self._conn.speech_started)

    async def speech_stopped(self) -> None:
        """Local VAD heard speech end: the turn is finalized (TTFS is measured from now)."""
        await self._call(self._conn.speech_stopped)

    async def finalize(self) -> bool:
        """Ask for the current turn's final now; ``False`` if there was no new audio."""
        sent: bool = await self._call(self._conn.finalize)
        return sent

    async def update_settings(self, **changes: Any) -> None:
        """Change settings mid-session (``pulse_core.Settings`` field names).

        Invalid changes raise ``ConfigurationError`` before anything is sent.
        The engine finishes the current turn first; nothing is lost.
        """
        await self._call(self._conn.update_settings, **changes)

    def event_handler(self, name: str) -> Callable[[Handler], Handler]:
        """Register a handler (sync or async) by event name, as a decorator.

        ``on_final_transcript`` gets finals only and ``on_interim_transcript``
        interims only. A handler that raises is logged; the session goes on.
        """
        check_handler_name(name)

        def register(handler: Handler) -> Handler:
            self._handlers[name].append(handler)
            return handler

        return register

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events, in order, ending after ``Closed``.

        Events are kept for one iterator from the start of the session, so one
        opened soon after entering the ``async with`` block still gets
        ``Connected`` and the first transcripts: until an iterator is opened,
        the session keeps at most ``unread_event_bytes`` (16 KiB) of them for
        it, counted as below; past that it stops keeping them (see the second
        case below), so that an application of handlers only pays no memory
        for an iterator it never opens. The session holds at most
        ``event_buffer`` events and ``event_buffer_bytes`` bytes of them, on
        their way to handlers and to this iterator together (each event counts
        1 KiB, plus an estimate of what the server message it came from takes
        in memory). It may go past them by the events of one server message,
        and by the few that timers and the application's own calls cause
        meanwhile (those are never held back). At the bound:

        * while an iterator is open, the session stops reading from the server
          (back-pressure) until the iterator catches up: read slowly, it still
          gets every event, in order;
        * while none has been opened (handlers only), the session does not
          wait: at these bounds, or past ``unread_event_bytes`` of kept events,
          it stops keeping events for an iterator and frees those it kept, and
          handlers still get every event. An iterator opened after that raises
          ``LocalProtocolError`` at once, as does one opened while another is
          open or after one has ended (from then on events are not kept).

        If the session fails for good, the ``async with`` block is cancelled;
        an iterator read inside the block ends there, while one read by a task
        outside it (or a handler) still gets every event up to ``Closed``
        before ``open_session`` raises.
        """
        if self._keeping is not _Keeping.UNTIL_READ:
            raise LocalProtocolError(
                self._keeping.value.format(
                    events=self._event_buffer,
                    bytes=self._event_buffer_bytes,
                    unread=self._unread_event_bytes,
                )
            )
        self._keeping = _Keeping.READING
        try:
            async for event in self._events_out:
                self._kept_bytes -= self._kept.popleft()
                self._taken.raise_()
                yield event
        finally:
            self._stop_keeping(_Keeping.ENDED)

    async def aclose(self) -> None:
        """Close gracefully: every final is delivered first. Idempotent.

        From an event handler it only starts the close (the handler's own task
        delivers the events the close waits for).
        """
        if not self._close_started:
            self._close_started = True
            if self._conn.state not in (State.CLOSED, State.FAILED):
                self._input(self._conn.close)
        if trio.lowlevel.current_task() is self._forwarder_task:
            return
        config = self._conn.config
        with trio.move_on_after(config.close_timeout + config.connect_timeout + 1.0):
            await self._events_done.wait()
        if not self._events_done.is_set():
            # Only when a handler has not returned (an unread events() holds up reading, not this).
            self._log.error("session did not finish closing in time; abandoning it")
        with trio.move_on_after(_DISCONNECT_TIMEOUT):
            while self._closing_links:
                await self._links_closed.wait()

    # -- plumbing ---------------------------------------------------------------

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._raise_if_failed()
        result = self._input(method, *args, **kwargs)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _input(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(trio.current_time(), *args, **kwargs)
        except LocalProtocolError:
            self._raise_if_failed()
            raise
        self._pump()
        return result

    def _pump(self) -> None:
        """Route the engine's outputs, at once: commands to their connection,
        events to the forwarder. Nothing waits here."""
        for command in self._conn.commands():
            self._route(command)
        events = self._conn.events()
        if events:
            for event in events:
                if isinstance(event, Connected):
                    self._last_failure = None
                elif isinstance(event, ConnectionFailed):
                    self._last_failure = event
                elif isinstance(event, Closed):
                    self._closed_seen = True
                    self._space.raise_()
                    if event.error is not None:
                        self._failure = error_for(
                            event.error,
                            self._last_failure,
                            reached=event.summary.connections > 0,
                        )
                        # Cancelled from the run loop, not from here: a cancel
                        # made while a task handles an exception (the reader's
                        # ConnectionClosed, say) delivers a Cancelled chained to
                        # it, and with it the server's close reason or refusal
                        # (PROTOCOL §6 rule 12) into the application's traceback.
                        trio.lowlevel.current_trio_token().run_sync_soon(self.body_scope.cancel)
            self._events.extend(events)
            if not self._reader_dispatches:
                self._wake_forwarder.set()
        timer = self._timer_scope
        if timer is not None:
            deadline = self._conn.next_deadline()
            if deadline is None:
                deadline = math.inf
            if deadline != timer.deadline:
                timer.deadline = deadline  # the timer wakes then, not now

    def _route(self, command: Command) -> None:
        assert self._nursery is not None
        if isinstance(command, Connect):
            self._links += 1
            link = _Link(self._links)
            self._link = link
            self._log.info("connecting (attempt %d) to %s", command.attempt, command.url)
            self._nursery.start_soon(self._run_link, link, command)
        elif isinstance(command, CloseConnection):
            # The engine has already accounted for this connection: from now
            # on nothing about it is reported, and nothing more is written.
            closing, self._link = self._link, None
            if closing is not None:
                self._log.debug(
                    "closing connection %d: %d %s", closing.number, command.code, command.reason
                )
                closing.abandoned = True
                closing.closing = True
                self._release(closing)
                self._closing_links += 1
                self._nursery.start_soon(self._close_link, closing, command.code, command.reason)
        else:
            current = self._link
            if current is None or current.abandoned:
                return  # nothing to write on; the engine replays what matters
            current.outbox.append(command)
            if isinstance(command, SendBinary):
                self._outgoing_bytes += len(command.data)
            current.wake.set()

    def _release(self, link: _Link) -> None:
        """Forget what ``link`` still had to write (the engine replays it)."""
        for command in link.outbox:
            if isinstance(command, SendBinary):
                self._outgoing_bytes -= len(command.data)
        link.outbox.clear()
        link.wake.set()
        self._space.raise_()

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._timer)
        nursery.start_soon(self._forwarder)
        self._input(self._conn.start)

    def _abort(self) -> None:
        """Stop at once (cancellation or an error in the caller's block)."""
        if self._link is not None:
            self._link.abandoned = True
            self._link.scope.cancel()

    async def _close_link(self, link: _Link, code: int, reason: str) -> None:
        """Run the close handshake on ``link`` (bounded), then end it: its
        reader must keep reading until the server's close frame is in."""
        try:
            if link.ws is not None:
                with trio.move_on_after(_DISCONNECT_TIMEOUT), self._edge(link):
                    await link.ws.aclose(code, reason)
        finally:
            link.scope.cancel()
            self._closing_links -= 1
            self._links_closed.set()
            self._links_closed = trio.Event()

    async def _writer(self, link: _Link, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        """Write ``link``'s outbox in order. Runs inside the link's cancel scope,
        so closing the link cancels a write that the network is holding up.

        Whatever messages are waiting go out in one write (``send_messages``,
        up to ``_WRITE_BATCH`` bytes of audio), so a writer that falls behind
        catches up with fewer trips through the scheduler, not more."""
        outbox = link.outbox
        while not link.abandoned:
            while outbox and not link.abandoned:
                command = outbox[0]
                if isinstance(command, SendPing):
                    outbox.popleft()
                    # A ping waits for its pong: never hold the audio up for it.
                    nursery.start_soon(self._ping, link, ws, command.payload)
                    continue
                batch: list[str | bytes] = []
                texts: list[str] = []
                audio = 0
                while outbox and audio < _WRITE_BATCH:
                    command = outbox[0]
                    if isinstance(command, SendBinary):
                        audio += len(command.data)
                        batch.append(command.data)
                    elif isinstance(command, SendText):
                        batch.append(command.text)
                        texts.append(command.text)
                    else:
                        break
                    outbox.popleft()
                try:
                    await send_messages(ws, batch)
                except WRITE_ENDED:
                    # The reader reports the close, once it has handed the engine
                    # every message that arrived before it.
                    return
                finally:
                    if audio:
                        self._outgoing_bytes -= audio
                        self._space.raise_()
                for text in texts:
                    self._log.debug("sent %s", text)  # our own control messages
            link.wake = trio.Event()
            if not outbox:
                await link.wake.wait()

    async def _ping(self, link: _Link, ws: WebSocketConnection, payload: bytes) -> None:
        with contextlib.suppress(*WRITE_ENDED, ValueError):  # ValueError: same ping in flight
            await ws.ping(payload or None)
            # The engine's liveness rule counts a pong as hearing from the server.
            self._report(link, "pong_received")

    async def _run_link(self, link: _Link, command: Connect) -> None:
        if link.abandoned:
            return  # replaced before this task began: never dial it
        with link.scope, self._edge(link):
            async with trio.open_nursery() as nursery:
                try:
                    await self._link_body(nursery, link, command)
                finally:
                    await close_transport(link.ws)
                nursery.cancel_scope.cancel()

    @contextlib.contextmanager
    def _edge(self, link: _Link) -> Iterator[None]:
        """The one place where the WebSocket stack's exceptions end: each
        becomes an engine input about ``link`` (``_transport_errors``).

        trio-websocket raises from its reader task too, so errors come grouped:
        the first in the group is what happened. Anything else goes on up (one
        exception, never a group): this link's own cancellation (it was
        replaced at that very moment) ends in its scope.
        """
        try:
            yield
        except BaseExceptionGroup as group:
            matched, rest = group.split(is_transport_error)
            if matched is not None:
                self._link_failed(link, first(matched))
            if rest is not None:
                raise _sole(rest) from None
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            self._link_failed(link, exc)

    async def _link_body(self, nursery: trio.Nursery, link: _Link, command: Connect) -> None:
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in command.headers
        ]
        ws = await self._connector(nursery, command.url, headers, self._ssl_context)
        link.ws = ws
        if link.abandoned:
            return
        nursery.start_soon(self._writer, link, ws, nursery)
        self._report(link, "connection_opened")
        self._log_replay(link)
        try:
            await deliver(ws, functools.partial(self._receive, link))
        except ConnectionClosed as exc:
            if link.closing:
                # Closing the transport now would cut the close frame being
                # written (RFC 6455 §5.5.1): _close_link ends this link.
                await trio.sleep_forever()
            self._link_closed(link, exc)
            if violation(link.ws) is not None and link.ws is not None:
                # This side failed it: the server reads the close frame, then
                # hangs up; closing first could reset the close frame away.
                with trio.move_on_after(_DISCONNECT_TIMEOUT):
                    await hung_up(link.ws)

    async def _receive(self, link: _Link, message: str | bytes) -> None:
        """Hand a message from ``link`` to the engine, as soon as it is read
        (``deliver`` calls this from the task reading the socket).

        If the forwarder is idle, the events made of it go to their handlers
        here and now, with no trip through the scheduler to the forwarder: a
        final reaches its handler as soon as it is read. A handler that
        returns an awaitable hands it, and the rest of the events, over to the
        forwarder, which awaits it (reading never waits for a handler).
        """
        self._events.arriving = _message_bytes(message)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("received %s", _describe_frame(message, self._redact))
        self._reader_dispatches = self._forwarder_idle
        try:
            self._report(link, "receive_message", message)
        finally:
            dispatch, self._reader_dispatches = self._reader_dispatches, False
        if dispatch and self._events:
            pending = self._dispatch_ready()
            if pending is not None:
                self._handed_over = pending
                self._forwarder_idle = False  # from now on it is the forwarder's turn
                self._wake_forwarder.set()
        await self._backpressure()

    def _link_failed(self, link: _Link, exc: BaseException) -> None:
        """``exc`` ended ``link``: tell the engine (if it still cares)."""
        if not isinstance(exc, EXPECTED):
            self._log.error(
                "unexpected error on connection %d: %s",
                link.number,
                self._redact(f"{type(exc).__name__}: {exc}"),
            )
        name, arguments = engine_input(exc, link.ws, self._redact)
        self._report(link, name, **arguments)
        link.abandoned = True
        self._release(link)

    def _log_replay(self, link: _Link) -> None:
        """What a new connection is sent first: held audio, or a replay (PROTOCOL §6 rule 6)."""
        if not self._log.isEnabledFor(logging.DEBUG) or link.abandoned:
            return
        audio = [c.data for c in link.outbox if isinstance(c, SendBinary)]
        finalizes = sum(1 for c in link.outbox if isinstance(c, SendText) and "finalize" in c.text)
        if not audio and not finalizes:
            return
        config = self._conn.config
        seconds = _audio_seconds(audio, config.encoding, config.sample_rate)
        end = self._conn.summary().audio_seconds_sent
        self._log.debug(
            "%s %d bytes of audio (%.2f s from session time %.2f s) and %d finalize(s)",
            "replaying" if link.number > 1 else "sending what was held while connecting:",
            sum(map(len, audio)),
            seconds,
            max(0.0, end - seconds),
            finalizes,
        )

    def _redact(self, text: str) -> str:
        """Server-controlled text may echo the request: never pass the key on,
        whole or in part (PROTOCOL §6 rule 12)."""
        return self._conn.redactor.text(text)

    def _link_closed(self, link: _Link, exc: ConnectionClosed) -> None:
        if violation(link.ws) is not None:
            # This side closed it, because the server broke the protocol.
            self._link_failed(link, exc)
            return
        reason = exc.reason
        code = reason.code if reason is not None else None
        text = (reason.reason or "") if reason is not None else ""
        self._report(link, "connection_closed", code=code, reason=self._redact(text))
        link.abandoned = True
        self._release(link)  # what it had left to write is replayed, not written here

    def _report(self, link: _Link, name: str, *args: Any, **kwargs: Any) -> None:
        """Tell the engine what the network did, if it still cares about ``link``."""
        if link is not self._link or link.abandoned:
            return
        getattr(self._conn, name)(trio.current_time(), *args, **kwargs)
        self._pump()

    async def _backpressure(self) -> None:
        """Stop reading the server while the session holds more events than its
        bounds allow, until handlers or a reading ``events()`` take them.

        Only the reading waits: the engine is still drained after every input
        (PROTOCOL.md §8), so its own queues never fill.
        """
        self._events.arriving = 0  # the message is in: what follows is not made of it
        while self._over_bounds():
            await self._taken.wait()

    def _over_bounds(self) -> bool:
        count = len(self._events) + len(self._kept)
        size = self._events.bytes + self._kept_bytes
        return count > self._event_buffer or size > self._event_buffer_bytes

    async def _timer(self) -> None:
        """Call ``handle_timer`` once the engine's deadline has passed, never before.

        The timer sleeps in one cancel scope whose deadline is the engine's;
        ``_pump`` moves that deadline when an input moves the engine's, earlier
        or later (a frame cut by size drops the coalescing deadline, a frame
        sent pushes the keepalive back), which wakes no task: the timer wakes
        only when a deadline of the engine's has passed. Should it wake at one
        the engine has since moved later, it only sleeps again.
        """
        while True:
            deadline = self._conn.next_deadline()
            if deadline is not None and deadline <= trio.current_time():
                self._input(self._conn.handle_timer)
                continue
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None

    async def _forwarder(self) -> None:
        """Hand queued events to handlers and ``events()``, awaiting what the
        handlers return; the reader does the same for what it reads while
        this task is idle (``_receive``), so one of the two at a time does."""
        self._forwarder_task = trio.lowlevel.current_task()
        while True:
            pending, self._handed_over = self._handed_over, None
            while True:
                if pending is not None:
                    name, awaitable = pending
                    try:
                        await awaitable
                    except Exception:  # a handler's bug must not end the session
                        self._log.exception("event handler %s raised", name)
                pending = self._dispatch_ready()
                if pending is None:
                    break
            self._wake_forwarder = trio.Event()
            if not self._events and self._handed_over is None:
                self._forwarder_idle = True
                try:
                    await self._wake_forwarder.wait()
                finally:
                    self._forwarder_idle = False

    def _dispatch_ready(self) -> tuple[str, Awaitable[Any]] | None:
        """Call the handlers of the queued events in order, and keep each event
        for ``events()`` once its handlers are done; stop at a handler that
        returns an awaitable and return it with the handler's name (the
        forwarder awaits it, then calls this again to go on from the next
        handler)."""
        while self._events:
            event, size = self._events.first()  # counted until handlers are done
            calls = self._head_calls
            if calls is None:
                self._log_event(event)
                calls = self._head_calls = self._calls(event)
            for name, handler in calls:
                try:
                    result = handler(event)
                except Exception:  # a handler's bug must not end the session
                    self._log.exception("event handler %s raised", name)
                    continue
                if inspect.isawaitable(result):
                    return name, result
            self._head_calls = None
            self._events.popleft()
            self._feed(event, size)
            if isinstance(event, Closed):
                self._events_in.close()
                self._events_done.set()
        return None

    def _calls(self, event: Event) -> Iterator[tuple[str, Handler]]:
        for name in handler_names(event):  # the rule is pulse_core's (_handlers.py)
            for handler in self._handlers.get(name, ()):
                yield name, handler

    def _feed(self, event: Event, size: int) -> None:
        """Keep ``event`` for ``events()`` if the session still keeps events;
        with no iterator opened yet, stop keeping them once past
        ``unread_event_bytes`` or the bounds (an application of handlers only
        then holds no events once its handlers are done with them)."""
        if self._keeping in (_Keeping.UNTIL_READ, _Keeping.READING):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._events_in.send_nowait(event)  # takes any number: bounded by counting
                self._kept.append(size)
                self._kept_bytes += size
            if self._keeping is _Keeping.UNTIL_READ and (
                self._kept_bytes > self._unread_event_bytes or self._over_bounds()
            ):
                self._log.debug(
                    "more than %d bytes of events (or more than the event_buffer bounds) "
                    "went unread from events() before one was opened; "
                    "no longer keeping events for it",
                    self._unread_event_bytes,
                )
                self._stop_keeping(_Keeping.OVERFLOWED)
        else:
            self._taken.raise_()  # it has left the session: there may be room now

    def _stop_keeping(self, why: _Keeping) -> None:
        """Keep no more events for ``events()``, and free those kept."""
        self._keeping = why
        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
            while True:
                self._events_out.receive_nowait()
        self._kept.clear()
        self._kept_bytes = 0
        self._taken.raise_()

    def _log_event(self, event: Event) -> None:
        log = self._log
        if isinstance(event, Connected):
            log.info("connected (connection %d)", event.connection)
        elif isinstance(event, Disconnected):
            log.info(
                "disconnected (code %s, %s)%s",
                event.code,
                event.reason,
                "; connecting again" if event.will_reconnect else "",
            )
        elif isinstance(event, Reconnecting):
            log.info(
                "reconnecting in %.2f s (attempt %d): %s", event.delay, event.attempt, event.reason
            )
        elif isinstance(event, ConnectionFailed):
            log.warning(
                "connection failed%s: %s", " for good" if event.permanent else "", event.reason
            )
        elif isinstance(event, ServerError | MalformedMessage):
            log.warning("server problem: %s", self._redact(str(event)))
        elif isinstance(event, AudioDropped):
            log.warning(
                "dropped %d bytes of audio (%.2f-%.2f s): %s",
                event.bytes,
                event.start,
                event.end,
                event.reason,
            )
        elif isinstance(event, Closed):
            log.info(
                "closed%s%s",
                " without the server's is_last" if event.is_last_missing else "",
                f" with error: {event.error}" if event.error else "",
            )


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception ``group`` holds, if it holds one (at any depth), else ``group``."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _bare(failure: SessionFailedError) -> SessionFailedError:
    """``failure`` without the exceptions it was raised over. Its own text and
    ``failure`` event are redacted (PROTOCOL §6 rule 12), but where it is raised
    it may be chained to what the WebSocket stack raised (a close with its
    reason, a refusal with its headers and body): a logged traceback would show
    those, the key with them."""
    failure.__context__ = None
    failure.__cause__ = None
    failure.__suppress_context__ = True
    return failure


def _describe_frame(message: str | bytes, redact: Callable[[str], str]) -> str:
    """A server frame for the debug log: its type and flags, never its text."""
    if isinstance(message, bytes):
        return f"a binary frame of {len(message)} bytes"
    try:
        parsed = json.loads(message)
    except ValueError:
        return f"a text frame that is not JSON ({len(message)} characters)"
    if not isinstance(parsed, dict):
        return f"a JSON {type(parsed).__name__}, not an object"
    kind = parsed.get("type")
    # Server-controlled: it could echo anything, the key too.
    name = redact(kind)[:40] if isinstance(kind, str) else "a message without a type"
    flags = [flag for flag in ("is_final", "from_finalize", "is_last") if parsed.get(flag) is True]
    return name + (f" ({', '.join(flags)})" if flags else "")


def _audio_seconds(frames: list[bytes], encoding: Encoding, sample_rate: int) -> float:
    """How much audio ``frames`` hold, in seconds."""
    width = encoding.sample_width
    if width is not None:
        return sum(map(len, frames)) / (width * sample_rate)
    if encoding is Encoding.OPUS:
        return sum(opus_packet_ticks(frame) for frame in frames) / 48000
    pages = OggPageSplitter()
    ticks = sum(t for frame in frames for _, t in pages.feed(frame) if t > 0)
    return ticks / 48000


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Take off the one group level the session's own nursery added."""
    return group.exceptions[0] if len(group.exceptions) == 1 else group


@asynccontextmanager
async def open_session(
    api_key: str | None = None,
    *,
    settings: Settings | Mapping[str, Any] | None = None,
    base_url: str | None = None,
    encoding: str = "linear16",
    sample_rate: int = 16000,
    ssl_context: ssl.SSLContext | None = None,
    connector: Connector | None = None,
    jitter: Any = None,
    outgoing_buffer: int = 1 << 20,
    event_buffer: int = 1024,
    event_buffer_bytes: int = 8 << 20,
    unread_event_bytes: int = 16 << 10,
    **options: Any,
) -> AsyncIterator[Session]:
    """Open a Pulse transcription session.

    ``api_key=None`` reads ``SMALLEST_API_KEY``. Other ``options`` are
    ``pulse_core.ConnectionConfig`` fields (``region``, ``path``, timeouts,
    ``reconnect``, ``replay_seconds``, ...). Everything is validated before
    any connection. Leaving the block closes gracefully; a permanent failure
    raises a ``SessionFailedError`` subclass (e.g. ``AuthenticationError``)
    once every event up to ``Closed`` has been delivered.

    ``outgoing_buffer``: bytes of audio waiting to be written before
    ``send_audio`` waits. ``event_buffer`` (1024) and ``event_buffer_bytes``
    (8 MiB): the most events, and bytes of them, the session holds on their
    way to handlers and ``events()``. Past them, with an ``events()`` iterator
    open, it stops reading from the server until the iterator catches up;
    with none open, it stops keeping events for one (handlers still get every
    event, a later ``events()`` raises ``LocalProtocolError``).
    ``unread_event_bytes`` (16 KiB): the most, in the same count, kept for an
    ``events()`` iterator not yet opened; past it the session stops keeping
    them, as at the bounds. See ``Session.events``. Each must be an integer of
    at least 1, or ``ConfigurationError`` is raised before any connection.
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
    for name, value in (
        ("outgoing_buffer", outgoing_buffer),
        ("event_buffer", event_buffer),
        ("event_buffer_bytes", event_buffer_bytes),
        ("unread_event_bytes", unread_event_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(name, value, "an integer of at least 1")
    if ssl_context is not None and config.resolved_base_url.startswith("ws://"):
        raise ConfigurationError(
            "ssl_context", "<SSLContext>", "a wss:// base_url (ws:// is never encrypted)"
        )
    conn = PulseConnection(config, jitter=jitter if jitter is not None else _JITTER)
    session = Session(
        conn,
        connector=connector
        or functools.partial(default_connector, max_message_size=config.max_message_size),
        ssl_context=ssl_context,
        outgoing_buffer=outgoing_buffer,
        event_buffer=event_buffer,
        event_buffer_bytes=event_buffer_bytes,
        unread_event_bytes=unread_event_bytes,
    )
    hiding = hide_key_in_logs(conn.redactor)  # the stack's own DEBUG lines (§6 rule 12)
    try:
        async with trio.open_nursery() as nursery:
            session._start(nursery)
            try:
                with session.body_scope:  # cancelled if the session fails for good
                    yield session
            except BaseException as exc:
                if exc is not session._failure:
                    session._abort()
                    nursery.cancel_scope.cancel()
                    raise
                # The session's own failure, raised by a call in the block (from a
                # task outside it, say): deliver the events first, as below.
            # A graceful close; after a failure, the events up to Closed are
            # still delivered (handlers and events()) before the error is raised.
            await session.aclose()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _unwrap(group)
        raise (_bare(error) if error is session._failure else error) from None
    finally:
        session._events_in.close()  # any events() iterator ends, whatever happened
        stop_hiding(hiding)
    if session._failure is not None:
        raise _bare(session._failure) from None
