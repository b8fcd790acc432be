"""A model of the Pulse service and a simulated transport, for property tests of the engine.

``Drive`` runs one ``PulseConnection`` against a simulated network:

* every engine input goes through ``Drive.call``, which drains ``commands()``
  and ``events()`` afterwards and carries the commands out in order, as
  spec/PROTOCOL.md section 8 asks of a transport;
* ``Connect`` becomes a pending handshake that the test later opens or fails;
  an opened socket is served by an ``emulator.ServerSession`` with the token
  engine, whose replies wait in the socket's inbox until the test delivers them;
* ``CloseConnection`` forgets the socket (or the handshake) at once, inbox and all;
* the clock is manual: it moves only when the test says so, and ``pump`` calls
  ``handle_timer`` whenever ``now >= next_deadline()``.

The transport checks the parts of the contract only it can see (nothing sent
without an open socket, nothing after ``close_stream`` on a connection,
keepalive timing, one connection at a time) and raises ``AssertionError``
naming the invariant. Every input's outcome is handed to an observer as a
``Step`` so the test can check the event stream.

Token audio here is linear16 at 8 kHz. Gaps between words are *quiet*: samples
of value 3, silence to the token decoder but never all-zero bytes, so that an
all-zero binary frame on the wire can only be the engine's keepalive silence.

It lives with the engine's tests, the only ones that use it, although it is
built on the emulator (``pulse_trio.emulator``'s public ``ServerSession``,
``TokenEngine`` and ``check_request``): the engine is what it drives.
"""

from __future__ import annotations

import collections
import json
import math
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from pulse_core import (
    CloseConnection,
    Closed,
    Command,
    Connect,
    ConnectionConfig,
    Encoding,
    Event,
    PulseConnection,
    SendBinary,
    SendPing,
    SendText,
)
from pulse_core._liveness import KEEPALIVE_PING, LIVENESS_PING
from pulse_trio.emulator import Accept, Close, ServerSession, TokenEngine, check_request
from pulse_trio.emulator.token_audio import encode

__all__ = [
    "API_KEY",
    "CLOSE_STREAM",
    "FINALIZE",
    "RATE",
    "WIDTH",
    "Drive",
    "Injected",
    "Socket",
    "Step",
    "quiet",
    "word_audio",
]

RATE = 8000
WIDTH = 2
API_KEY = "sk_model_server_key"
FINALIZE = '{"type":"finalize"}'
CLOSE_STREAM = '{"type":"close_stream"}'
_QUIET_SAMPLE = struct.pack("<h", 3)  # below the decoder's silence threshold, never b"\0\0"
_EPS = 1e-9


def word_audio(word: str) -> bytes:
    """Token audio of one word (no silence before or after)."""
    return encode([word], encoding=Encoding.LINEAR16, sample_rate=RATE, gap=0.0)


def quiet(samples: int) -> bytes:
    """``samples`` samples of quiet (silence to the decoder, not byte-zero)."""
    return _QUIET_SAMPLE * samples


@attrs.frozen
class Injected:
    """A frame the test slips into a socket's inbox (an error, a malformed frame,
    an unknown message type); ``kind`` names the event it must become."""

    data: str | bytes
    kind: str
    permanent: bool = False


@attrs.frozen
class Pong:
    """The server's answer to a ping, queued with its other frames."""

    payload: bytes


@attrs.define
class Socket:
    """One open WebSocket of the simulation and its model server."""

    number: int
    url: str
    server: ServerSession
    opened_at: float
    last_wire: float
    inbox: collections.deque[str | Close | Injected | Pong] = attrs.field(factory=collections.deque)
    close_stream_sent: bool = False
    finalizes_sent: int = 0
    keepalives: int = 0


@attrs.define
class Step:
    """One engine input and everything it produced."""

    kind: str
    now: float
    events: list[Event]
    commands: list[Command]
    pending_before: int
    pending_after: int
    #: Sockets the engine closed in this step: (number, code, opened_at).
    closed_sockets: list[tuple[int, int, float]] = attrs.field(factory=list)
    #: Whether the engine abandoned a pending handshake in this step.
    abandoned_connect: bool = False
    #: Connect commands issued in this step.
    connects: list[Connect] = attrs.field(factory=list)
    #: What the input was about (status, code, retry_after, ...).
    detail: dict[str, Any] = attrs.field(factory=dict)


class Drive:
    """A ``PulseConnection`` on a simulated network with a manual clock."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        jitter: Any,
        observer: Callable[[Step], None],
        chatter: Callable[[], Injected | None] | None = None,
    ) -> None:
        self.config = config
        self.engine = PulseConnection(config, jitter=jitter)
        self.observer = observer
        self.chatter = chatter  # asked after each server reply: a frame to slip in?
        self.now = 0.0
        self.last_input = 0.0  # the time of the engine's latest input
        self.pending: Connect | None = None
        self.socket: Socket | None = None
        self.sockets_opened = 0
        self.finalizes_sent = 0
        self.keepalives = 0
        self.finished = False  # Closed was seen
        self.silence = bytes(round(config.keepalive_silence * RATE) * WIDTH)
        self._step: Step | None = None

    # -- engine inputs ------------------------------------------------------------------

    def call(self, kind: str, *args: Any, detail: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Feed one input to the engine at ``now`` and carry out what it asks."""
        assert not self.finished, f"driver bug: {kind} after Closed"
        engine = self.engine
        before = engine.pending_finalizes
        method = getattr(engine, kind)
        self.last_input = self.now
        try:
            result = method(self.now, *args, **kw)
        except Exception as exc:
            raise AssertionError(
                f"invariant 8: {kind}() at t={self.now:g} raised {type(exc).__name__}: {exc}"
            ) from exc
        after = engine.pending_finalizes
        commands = engine.commands()
        events = engine.events()
        step = Step(
            kind=kind,
            now=self.now,
            events=events,
            commands=commands,
            pending_before=before,
            pending_after=after,
            detail=dict(detail or {}),
        )
        self._step = step
        self._execute(commands)
        self._step = None
        if any(isinstance(event, Closed) for event in events):
            self.finished = True
        self.observer(step)
        return result

    def pump(self) -> None:
        """Call ``handle_timer`` for as long as a deadline is due."""
        for _ in range(64):
            if self.finished:
                return
            deadline = self.engine.next_deadline()
            if deadline is None or deadline > self.now:
                return
            self.call("handle_timer")
            after = self.engine.next_deadline()
            assert after is None or after > self.now or self.finished, (
                f"invariant 8: handle_timer({self.now:g}) left next_deadline()={after} due: "
                "a transport following section 8 would spin"
            )
        raise AssertionError("invariant 8: handle_timer never settles")

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, waking at every deadline on the way."""
        target = self.now + seconds
        for _ in range(10_000):
            if self.finished:
                break
            deadline = self.engine.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.pump()
        else:  # pragma: no cover - a livelock
            raise AssertionError("invariant 8: deadlines keep coming without time passing")
        self.now = max(self.now, target)
        self.pump()

    # -- the network, as the test resolves it ---------------------------------------------

    def open_pending(self) -> None:
        """The pending handshake succeeds: a model server takes the socket."""
        connect = self.pending
        assert connect is not None
        decision = check_request(connect.url, connect.headers, api_keys=frozenset({API_KEY}))
        assert isinstance(decision, Accept), f"the model server refused {connect.url}: {decision}"
        params = decision.params
        self.sockets_opened += 1
        server = ServerSession(
            params,
            TokenEngine().stream(params.encoding, params.sample_rate),
            session_id=f"model-{self.sockets_opened}",
        )
        self.socket = Socket(
            number=self.sockets_opened,
            url=connect.url,
            server=server,
            opened_at=self.now,
            last_wire=self.now,
        )
        self.pending = None
        self.call("connection_opened", detail={"url": connect.url, "socket": self.socket})

    def fail_pending(self, status: int | None, retry_after: float | None) -> None:
        assert self.pending is not None
        self.pending = None
        self.call(
            "connection_failed",
            status=status,
            reason="" if status is None else f"HTTP {status}",
            retry_after=retry_after,
            detail={"status": status, "retry_after": retry_after},
        )

    def close_during_handshake(self) -> None:
        assert self.pending is not None
        self.pending = None
        self.call("connection_closed", code=None, reason="reset", detail={"handshake": True})

    def drop_socket(self, code: int | None) -> None:
        """The open socket closes without the engine asking."""
        socket = self.socket
        assert socket is not None
        self.socket = None
        self.call(
            "connection_closed",
            code=code,
            reason="" if code is None else "dropped by the test",
            detail={"code": code, "opened_at": socket.opened_at, "socket": socket.number},
        )

    def deliver(self, count: int) -> None:
        """Deliver up to ``count`` queued server frames on the open socket."""
        for _ in range(count):
            socket = self.socket
            if socket is None or not socket.inbox or self.finished:
                return
            item = socket.inbox.popleft()
            if isinstance(item, Close):
                self.drop_socket(item.code)
                return
            if isinstance(item, Pong):
                self.call("pong_received", detail={"socket": socket.number, "pong": item.payload})
            elif isinstance(item, Injected):
                detail = {"socket": socket.number, "injected": item}
                self.call("receive_message", item.data, detail=detail)
            else:
                self.call("receive_message", item, detail={"socket": socket.number})
            self.pump()

    # -- carrying out commands --------------------------------------------------------------

    def _execute(self, commands: list[Command]) -> None:
        step = self._step
        assert step is not None
        for command in commands:
            if isinstance(command, Connect):
                assert self.socket is None and self.pending is None, (
                    "transport contract: Connect while another connection is "
                    f"{'open' if self.socket else 'pending'}"
                )
                assert API_KEY not in command.url, "the API key is in the URL"
                self.pending = command
                step.connects.append(command)
            elif isinstance(command, SendBinary):
                self._send_binary(command.data)
            elif isinstance(command, SendText):
                self._send_text(command.text)
            elif isinstance(command, SendPing):
                assert command.payload != KEEPALIVE_PING, (
                    "invariant 4: a keepalive ping for linear16, which has byte silence"
                )
                assert command.payload == LIVENESS_PING, f"an unknown ping {command!r}"
                # Liveness probe: the server's WebSocket layer answers it, in
                # order with the frames it sends.
                if self.socket is not None:
                    self.socket.inbox.append(Pong(command.payload))
            elif isinstance(command, CloseConnection):
                if self.socket is not None:
                    step.closed_sockets.append(
                        (self.socket.number, command.code, self.socket.opened_at)
                    )
                    self.socket = None
                elif self.pending is not None:
                    self.pending = None
                    step.abandoned_connect = True
                else:
                    raise AssertionError(f"transport contract: {command} with no connection")
            else:  # pragma: no cover
                raise AssertionError(f"unknown command {command!r}")

    def _open_socket(self, what: str) -> Socket:
        socket = self.socket
        assert socket is not None, f"invariant 4: {what} with no open socket"
        assert not socket.close_stream_sent, f"invariant 4: {what} after close_stream"
        return socket

    def _send_binary(self, data: bytes) -> None:
        socket = self._open_socket("audio")
        assert data, "invariant 4: an empty audio frame"
        assert len(data) % WIDTH == 0, "invariant 4: a frame that is not whole samples"
        if not any(data):
            # Keepalive silence: never while audio flows, at most once per interval.
            assert data == self.silence, f"invariant 4: {len(data)} zero bytes are not keepalive"
            idle = self.now - socket.last_wire
            assert idle >= self.config.keepalive_interval - _EPS, (
                f"invariant 4: keepalive after only {idle:g} s without audio "
                f"(interval {self.config.keepalive_interval:g} s) on connection {socket.number}"
            )
            socket.keepalives += 1
            self.keepalives += 1
        else:
            assert len(data) <= self.config.chunk_bytes, "invariant 4: frame over chunk_bytes"
        socket.last_wire = self.now
        self._serve(socket, socket.server.audio(data))

    def _send_text(self, text: str) -> None:
        socket = self._open_socket(f"text {text}")
        if text == FINALIZE:
            socket.finalizes_sent += 1
            self.finalizes_sent += 1
        elif text == CLOSE_STREAM:
            socket.close_stream_sent = True
        else:
            raise AssertionError(f"invariant 4: unexpected control message {text}")
        self._serve(socket, socket.server.control(text))

    def _serve(self, socket: Socket, replies: list[dict[str, Any] | Close]) -> None:
        for reply in replies:
            if isinstance(reply, Close):
                socket.inbox.append(reply)
                continue
            socket.inbox.append(json.dumps(reply))
            extra = self.chatter() if self.chatter is not None else None
            if extra is not None:
                socket.inbox.append(extra)


def query_of(url: str) -> dict[str, str]:
    """The upgrade URL's query parameters (last value of each)."""
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def raw_delay(config: ConnectionConfig, attempt: int) -> float:
    """``min(max_delay, base_delay * multiplier^(attempt-1))``, from spec rule 5."""
    policy = config.reconnect
    try:
        value = policy.base_delay * policy.multiplier ** (attempt - 1)
    except OverflowError:  # pragma: no cover
        value = math.inf
    return min(policy.max_delay, value)
