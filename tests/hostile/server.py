"""A scriptable, hostile Pulse server on raw trio sockets.

It shares no code with the client: the HTTP/1.1 upgrade and RFC 6455 framing
are its own (``framing``). By default it is a good Pulse server: it accepts the
upgrade, reads binary audio, answers each ``{"type":"finalize"}`` with exactly
one final (``from_finalize: true``) and ``close_stream`` with a final marked
``is_last``, then closes 1000.

Its recognition is trivial and deterministic. A final covers the audio the
connection received since the previous final: one word per 0.5 s of it, named
``w<tick>`` after the connection tick (sample) it starts at, with start and end
in seconds of connection time (ticks / sample rate, linear16 at 16 kHz is 32000
bytes a second; ``encoding`` and ``sample_rate`` come from the query). So a test
can check that every sample landed in exactly one final.

Misbehaviour is data (``script``): connection ``k`` runs ``scripts[k-1]``, or
``then`` when there are fewer. Every connection is recorded (request, audio,
text frames, frames sent, close) in a :class:`ConnectionRecord`, with every
buffer bounded.

    async with serving(
        Script(faults=[Fault(AfterAudio(64000), Hangup(reset=True))]),
        then=Script(),
    ) as server:
        ... open_session(KEY, base_url=server.url) ...
    server.connections[0].audio_bytes
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from typing import Final as TypingFinal
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from .framing import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameParser,
    FramingError,
    HttpRequest,
    MessageAssembler,
    accept_key,
    close_payload,
    encode_frame,
    format_response,
    parse_close,
    parse_request,
)
from .script import (
    Action,
    AfterAudio,
    AfterSeconds,
    Close,
    Delay,
    Error,
    Fault,
    Final,
    HalfOpen,
    Handshake,
    Hangup,
    OnClientClose,
    OnCloseStream,
    OnFinalize,
    OnOpen,
    OnPing,
    Ping,
    Pong,
    Raw,
    RepeatFinal,
    Script,
    SlowRead,
    SplitFinals,
    Text,
    Together,
    Trigger,
)

__all__ = ["ConnectionRecord", "HostileServer", "SentFrame", "serving"]

_REQUEST_LIMIT: TypingFinal = 64 * 1024
_TEXT_KEEP: TypingFinal = 256  # text frames kept per connection
_TEXT_CHARS: TypingFinal = 4096  # characters kept of each
_SENT_KEEP: TypingFinal = 1024
_PREVIEW: TypingFinal = 512
_NOTES_KEEP: TypingFinal = 256
_RECORDS_KEEP: TypingFinal = 256
_CLOSE_WAIT: TypingFinal = 2.0  # seconds to wait for the client's close reply
_WORD_SECONDS: TypingFinal = 0.5
_BYTES_PER_TICK: TypingFinal = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
_PHRASES: TypingFinal = {
    101: "Switching Protocols",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@attrs.frozen
class SentFrame:
    """A frame the server wrote (``opcode`` -1: raw bytes from a script)."""

    opcode: int
    size: int
    preview: bytes


@attrs.frozen
class FinalSent:
    """A final the server sent: the connection ticks it covered, in truth."""

    first: int
    last: int
    is_last: bool
    from_finalize: bool | None
    text: str
    #: ``close_stream`` messages the connection had received when it was sent
    #: (an ``is_last`` with none answers no close_stream).
    close_streams: int = 0


@attrs.define(eq=False)
class ConnectionRecord:
    """What happened on one TCP connection. Every container is bounded."""

    number: int
    request: HttpRequest | None = None
    #: The request's query parameters (the last value of each).
    query: dict[str, str] = attrs.field(factory=dict)
    #: Status the server answered with (None: no answer written).
    status: int | None = None
    upgraded: bool = False
    #: Audio bytes received (all of them are counted, ``audio_limit`` kept).
    audio_bytes: int = 0
    audio: bytearray = attrs.field(factory=bytearray, repr=False)
    audio_frames: int = 0
    texts: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=_TEXT_KEEP)
    )
    sent: collections.deque[SentFrame] = attrs.field(
        factory=lambda: collections.deque(maxlen=_SENT_KEEP)
    )
    finals: collections.deque[FinalSent] = attrs.field(
        factory=lambda: collections.deque(maxlen=_SENT_KEEP)
    )
    notes: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=_NOTES_KEEP)
    )
    finalizes: int = 0
    close_streams: int = 0
    pings_received: int = 0
    pongs_received: int = 0
    #: The client's close frame: (code, reason), code None for an empty payload.
    client_close: tuple[int | None, str] | None = None
    #: The protocol error the server closed for, if any.
    violation: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    #: Writes to the socket (a Together is one).
    writes: int = 0
    #: How it ended: "eof", "closed", "hangup", "reset", "violation", "shutdown", ...
    ended: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @property
    def authorization(self) -> str | None:
        return self.request.header("Authorization") if self.request else None

    def note(self, text: str) -> None:
        self.notes.append(text)


class _EndedError(Exception):
    """The connection is over (raised inside the server to unwind)."""


_NETWORK_ERRORS: TypingFinal = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Connection:
    """The server side of one TCP connection, running its script."""

    def __init__(self, server: HostileServer, stream: trio.SocketStream, number: int) -> None:
        self.server = server
        self.stream = stream
        self.record = ConnectionRecord(number)
        self.script = server.script_for(number)
        self.lock = trio.StrictFIFOLock()
        self.scope = trio.CancelScope()
        self.read_scope: trio.CancelScope | None = None
        self.frozen = False
        #: Bytes a second the reader takes at most (None: no limit; SlowRead).
        self.read_rate: float | None = None
        self.close_sent = False
        #: Faults that ran (each runs once, but ``OnFinalize(0)`` on every finalize).
        self.fired: set[int] = set()
        self.final_mark = 0  # connection tick up to which finals covered the audio
        self.last_final: str | None = None
        self.tps = 16000
        self.bytes_per_tick = 2
        self.fillers: dict[str, str] = {}
        self.nursery: trio.Nursery | None = None
        #: Writes held back by a Together action.
        self.batch: bytearray | None = None

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        with self.scope:
            await self._guarded(self._serve)
        if self.record.ended is None:
            self.record.ended = "cancelled" if self.scope.cancelled_caught else "closed"

    async def _guarded(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a part of this connection: its end or a network error ends the
        connection (the others are cancelled), not the server."""
        try:
            await function(*args)
        except _EndedError:
            self.scope.cancel()
        except _NETWORK_ERRORS as exc:
            self.record.ended = self.record.ended or f"network: {type(exc).__name__}"
            self.scope.cancel()

    async def _serve(self) -> None:
        leftover = await self._handshake()
        if leftover is None:
            return
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for fault in self.script.faults:
                if isinstance(fault.when, AfterSeconds):
                    nursery.start_soon(self._guarded, self._timer, fault)
            await self._guarded(self._talk, leftover)
            nursery.cancel_scope.cancel()

    async def _talk(self, leftover: bytes) -> None:
        await self._fire(OnOpen)
        await self._read_loop(leftover)

    async def _timer(self, fault: Fault) -> None:
        assert isinstance(fault.when, AfterSeconds)
        await trio.sleep(fault.when.seconds)
        await self._run_actions(fault.do)

    # -- the opening handshake -----------------------------------------------------------

    async def _handshake(self) -> bytes | None:
        """Read the request and answer it. Returns the bytes after the request
        head (the first frames), or None when the connection ends here."""
        hs = self.script.handshake
        record = self.record
        if hs.greeting:
            await self._write_raw(hs.greeting)
        if hs.hang_up_at_once:
            await self._hangup(reset=False, why="hung up before reading the request")
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > _REQUEST_LIMIT:
                record.violation = "request head over 64 KiB"
                await self._write_raw(format_response(b"HTTP/1.1 431 Too Large", []))
                raise _EndedError
            data = await self.stream.receive_some(65536)
            if not data:
                record.ended = "eof before the request ended"
                return None
            record.bytes_received += len(data)
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        try:
            request = parse_request(head)
        except ValueError as exc:
            record.violation = f"bad request: {exc}"
            await self._write_raw(format_response(b"HTTP/1.1 400 Bad Request", []))
            raise _EndedError from None
        record.request = request
        record.query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
        self._learn()
        if hs.stall:
            record.ended = "stalled in the handshake"
            await trio.sleep_forever()
        problem = self._check_upgrade(request)
        if problem is not None and hs.status == 101:
            record.violation = f"not an upgrade: {problem}"
            await self._answer(Handshake(status=400, body=problem.encode()), request)
            raise _EndedError
        await self._answer(hs, request)
        if hs.status != 101:
            await self._hangup(reset=False, why="refused")
        record.upgraded = True
        return rest

    def _learn(self) -> None:
        """The audio format and the key placeholders, from the request."""
        query = self.record.query
        try:
            self.tps = int(query.get("sample_rate", "16000"))
        except ValueError:
            self.tps = 16000
        if self.tps <= 0:
            self.tps = 16000
        self.bytes_per_tick = _BYTES_PER_TICK.get(query.get("encoding", "linear16"), 2)
        authorization = self.record.authorization or ""
        key = authorization.removeprefix("Bearer ").strip()
        half = len(key) // 2
        self.fillers = {
            "{authorization}": authorization,
            "{key}": key,
            "{key_head}": key[:half],
            "{key_tail}": key[half:],
            "{key_escaped}": "".join(f"\\u{ord(c):04x}" for c in key),
        }

    @staticmethod
    def _check_upgrade(request: HttpRequest) -> str | None:
        if request.method != "GET":
            return f"method {request.method}"
        if "websocket" not in request.tokens("Upgrade"):
            return "no Upgrade: websocket"
        if "upgrade" not in request.tokens("Connection"):
            return "no Connection: Upgrade"
        if request.header("Sec-WebSocket-Version") != "13":
            return "Sec-WebSocket-Version is not 13"
        key = request.header("Sec-WebSocket-Key")
        if not key or len(key) != 24:
            return "no valid Sec-WebSocket-Key"
        return None

    async def _answer(self, hs: Handshake, request: HttpRequest) -> None:
        self.record.status = hs.status
        phrase = _PHRASES.get(hs.status, "Whatever")
        status_line = hs.status_line or f"HTTP/1.1 {hs.status} {phrase}".encode("latin-1")
        headers: list[tuple[str, str]] = []
        if hs.status == 101:
            if hs.upgrade:
                headers.append(("Upgrade", "websocket"))
            headers.append(("Connection", "Upgrade"))
            accept = accept_key(request.header("Sec-WebSocket-Key") or "")
            if hs.accept is not None:
                accept = hs.accept
            if accept:
                headers.append(("Sec-WebSocket-Accept", accept))
        else:
            length = len(self._fill_bytes(hs.body)) + hs.body_size
            headers.append(("Content-Length", str(length)))
            headers.append(("Content-Type", "text/plain"))
            headers.append(("Connection", "close"))
        headers.extend((name, self._fill(value)) for name, value in hs.headers)
        if hs.padding:
            headers.append(("X-Padding", "x" * hs.padding))
        response = format_response(status_line, headers) + self._fill_bytes(hs.body)
        if hs.cut_after is not None:
            await self._write_raw(response[: hs.cut_after])
            await self._hangup(reset=False, why=f"cut the response after {hs.cut_after} bytes")
        await self._write_raw(response)
        left = hs.body_size
        chunk = b"x" * 65536
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            await self._write_raw(piece)
            left -= len(piece)

    # -- reading -------------------------------------------------------------------------

    async def _read_loop(self, leftover: bytes) -> None:
        script = self.script
        record = self.record
        parser = FrameParser(
            require_mask=True if script.require_mask else None, max_frame=script.max_frame
        )
        assembler = MessageAssembler(max_message=script.max_frame)
        data = leftover
        while True:
            if data:
                parser.feed(data)
                try:
                    for frame in parser.frames():
                        message = assembler.add(frame)
                        if message is not None:
                            await self._on_message(message.opcode, message.payload)
                        if self.frozen:
                            break
                except FramingError as exc:
                    record.violation = str(exc)
                    record.ended = "violation"
                    if not self.close_sent:  # its close frame, then TCP goes at once
                        self.close_sent = True
                        await self.send(CLOSE, close_payload(exc.code, exc.reason))
                    await self._hangup(reset=False, why=f"protocol violation: {exc}")
            if self.frozen:
                await trio.sleep_forever()
            size = 65536
            if self.read_rate is not None:
                size = max(1, min(size, int(self.read_rate * 0.02)))
            data = b""
            with trio.CancelScope() as scope:
                self.read_scope = scope
                data = await self.stream.receive_some(size)
            self.read_scope = None
            if scope.cancelled_caught:
                continue
            if not data:
                record.ended = record.ended or "eof"
                raise _EndedError
            record.bytes_received += len(data)
            if self.read_rate is not None:
                await trio.sleep(len(data) / self.read_rate)

    async def _on_message(self, opcode: int, payload: bytes) -> None:
        record = self.record
        if opcode == PING:
            record.pings_received += 1
            if await self._fire(OnPing):
                return
            if not self.close_sent:
                await self.send(PONG, payload)
        elif opcode == PONG:
            record.pongs_received += 1
        elif opcode == CLOSE:
            code, reason = parse_close(payload)
            record.client_close = (code, reason)
            if self.close_sent:
                record.ended = "closed"  # the reply to our close
                await self._hangup(reset=False, why="close handshake done")
            await self._fire(OnClientClose)
            if self.frozen:
                return  # half-open: no answer, and TCP stays up
            if not self.close_sent:
                self.close_sent = True
                await self.send(CLOSE, close_payload(code))
            record.ended = "closed by the client"
            await self._hangup(reset=False, why="client closed")
        elif opcode == BINARY:
            self._on_audio(payload)
            await self._fire(AfterAudio)
        elif opcode == TEXT:
            text = payload.decode("utf-8")
            record.texts.append(text[:_TEXT_CHARS])
            await self._on_text(text)

    def _on_audio(self, payload: bytes) -> None:
        record = self.record
        record.audio_frames += 1
        record.audio_bytes += len(payload)
        room = self.server.audio_limit - len(record.audio)
        if room > 0:
            record.audio += payload[:room]

    async def _on_text(self, text: str) -> None:
        record = self.record
        try:
            message = json.loads(text)
        except ValueError:
            record.note("text frame that is not JSON")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "finalize":
            record.finalizes += 1
            if await self._fire(OnFinalize) or self.close_sent:
                return
            await self.send_final(Final(from_finalize=True))
        elif kind == "close_stream":
            record.close_streams += 1
            if await self._fire(OnCloseStream) or not self.script.answer_close_stream:
                return
            if self.close_sent:
                return
            last = self.script.send_is_last
            await self.send_final(Final(is_last=last, from_finalize=False))
            if last and self.script.close_after_is_last:
                await self._close(1000, "")
        else:
            record.note(f"unknown text message type {kind!r}")

    # -- faults ------------------------------------------------------------------------

    async def _fire(self, kind: type[Trigger]) -> bool:
        """Run every fault due on an event of ``kind``; True if one replaces
        the normal answer."""
        replaced = False
        for index, fault in enumerate(self.script.faults):
            when = fault.when
            if not isinstance(when, kind) or self.frozen:
                continue
            if isinstance(when, AfterAudio) and self.record.audio_bytes < when.bytes:
                continue
            if isinstance(when, OnFinalize) and when.nth not in (0, self.record.finalizes):
                continue
            if index in self.fired and not (isinstance(when, OnFinalize) and when.nth == 0):
                continue
            self.fired.add(index)
            replaced = replaced or fault.replace
            await self._run_actions(fault.do)
        return replaced

    async def _run_actions(self, actions: tuple[Action, ...]) -> None:
        for action in actions:
            if self.frozen:
                return
            await self._act(action)

    async def _act(self, action: Action) -> None:
        if isinstance(action, Ping):
            await self.send(PING, self._fill_bytes(action.payload))
        elif isinstance(action, Pong):
            await self.send(PONG, self._fill_bytes(action.payload))
        elif isinstance(action, Text):
            await self.send(TEXT, self._fill(action.text).encode("utf-8"))
        elif isinstance(action, Raw):
            await self._write_raw(action.data, record_as=-1)
        elif isinstance(action, Final):
            await self.send_final(action)
        elif isinstance(action, RepeatFinal):
            if self.last_final is not None:
                await self.send(TEXT, self.last_final.encode("utf-8"))
        elif isinstance(action, SplitFinals):
            await self._split_finals(action)
        elif isinstance(action, Error):
            await self.send(TEXT, json.dumps(self._error(action)).encode("utf-8"))
        elif isinstance(action, Close):
            await self._close(action.code, self._fill(action.reason))
        elif isinstance(action, Hangup):
            await self._hangup(reset=action.reset, why="scripted hang-up")
        elif isinstance(action, HalfOpen):
            self.record.note("half-open: no more reading or writing")
            self.frozen = True
            if self.read_scope is not None:
                self.read_scope.cancel()
        elif isinstance(action, SlowRead):
            self.read_rate = action.rate
        elif isinstance(action, Delay):
            await trio.sleep(action.seconds)
        elif isinstance(action, Together):
            outer, self.batch = self.batch, bytearray()
            try:
                await self._run_actions(action.do)
            finally:
                held, self.batch = self.batch, outer
            await self._write_raw(bytes(held))
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(f"unknown action {action!r}")

    def _error(self, action: Error) -> dict[str, Any]:
        message = self._fill(action.message)
        if action.shape == 1:
            return {"type": "error", "status": "error", "message": message}
        if action.shape == 2:
            return {"type": "error", "error_code": action.code or "ERROR", "message": message}
        return {"status": "error", "error": {"message": message, "code": action.code or "ERROR"}}

    def _fill(self, text: str) -> str:
        for name, value in self.fillers.items():
            text = text.replace(name, value)
        return text

    def _fill_bytes(self, data: bytes) -> bytes:
        return self._fill(data.decode("latin-1")).encode("latin-1")

    # -- finals ------------------------------------------------------------------------

    @property
    def ticks(self) -> int:
        return self.record.audio_bytes // self.bytes_per_tick

    def _words(self, first: int, last: int) -> list[dict[str, Any]]:
        step = max(1, int(self.tps * _WORD_SECONDS))
        return [
            {
                "word": f"w{tick}",
                "start": tick / self.tps,
                "end": min(tick + step, last) / self.tps,
                "confidence": 1.0,
            }
            for tick in range(first, last, step)
        ]

    async def send_final(self, action: Final) -> None:
        first, last = self.final_mark, self.ticks
        if not action.covers:
            last = first
        self.final_mark = last
        words = self._words(first, last)
        if action.words is not None:
            words = [
                {"word": f"bogus{i}", "start": start, "end": end, "confidence": 1.0}
                for i, (start, end) in enumerate(action.words)
            ]
        await self._emit(
            words, first, last, is_last=action.is_last, from_finalize=action.from_finalize
        )

    async def _split_finals(self, action: SplitFinals) -> None:
        first, last = self.final_mark, self.ticks
        self.final_mark = last
        pieces = max(1, action.pieces)
        bounds = [first + (last - first) * i // pieces for i in range(pieces + 1)]
        # One write for all of them: the pieces took their audio at once, so
        # no other final (nor a hang-up) may come between them.
        outer, self.batch = self.batch, bytearray()
        try:
            latest_first = list(reversed(list(itertools.pairwise(bounds))))
            for low, high in latest_first[: action.sent]:
                await self._emit(
                    self._words(low, high),
                    low,
                    high,
                    is_last=False,
                    from_finalize=action.from_finalize,
                )
        finally:
            held, self.batch = self.batch, outer
        await self._write_raw(bytes(held))

    async def _emit(
        self,
        words: list[dict[str, Any]],
        first: int,
        last: int,
        *,
        is_last: bool,
        from_finalize: bool | None,
    ) -> None:
        """Send a final with ``words``, recorded as covering ticks ``first``
        to ``last`` of the connection (the truth, whatever the words say)."""
        transcript = " ".join(w["word"] for w in words)
        message: dict[str, Any] = {
            "type": "transcription",
            "session_id": f"hostile-{self.record.number}",
            "transcript": transcript,
            "is_final": True,
            "is_last": is_last,
            "language": "en",
            "words": words,
        }
        if from_finalize is not None:
            message["from_finalize"] = from_finalize
        text = json.dumps(message)
        self.last_final = text
        self.record.finals.append(
            FinalSent(
                first=first,
                last=last,
                is_last=is_last,
                from_finalize=from_finalize,
                text=transcript[:_PREVIEW],
                close_streams=self.record.close_streams,
            )
        )
        await self.send(TEXT, text.encode("utf-8"))

    # -- writing -----------------------------------------------------------------------

    async def send(self, opcode: int, payload: bytes) -> None:
        await self._write_raw(encode_frame(opcode, payload), record_as=opcode)

    async def _write_raw(self, data: bytes, *, record_as: int | None = None) -> None:
        if self.frozen or not data:
            return
        if record_as is not None:
            self.record.sent.append(SentFrame(record_as, len(data), data[:_PREVIEW]))
        if self.batch is not None:
            self.batch += data  # written by the Together that holds it
            return
        async with self.lock:
            # Counted first: the peer may read the bytes before send_all returns.
            self.record.bytes_sent += len(data)
            self.record.writes += 1
            await self.stream.send_all(data)

    async def _close(self, code: int | None, reason: str) -> None:
        """Start the close handshake (or answer a violation); the read loop
        takes the reply, or the connection ends after a short wait."""
        if self.close_sent:
            return
        self.close_sent = True
        await self.send(CLOSE, close_payload(code, reason))
        if self.nursery is not None:
            self.nursery.start_soon(self._guarded, self._close_deadline)

    async def _close_deadline(self) -> None:
        await trio.sleep(_CLOSE_WAIT)
        self.record.ended = self.record.ended or "no close reply"
        await self._hangup(reset=False, why="no close reply in time")

    async def _hangup(self, *, reset: bool, why: str) -> None:
        self.record.note(why)
        if reset:
            self.record.ended = "reset"
            self.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        elif self.record.ended is None:
            self.record.ended = "hangup"
        await trio.aclose_forcefully(self.stream)
        self.scope.cancel()
        raise _EndedError


class HostileServer:
    """The server. ``scripts`` apply to connections 1, 2, ... in order; later
    connections run ``then`` (default: a well-behaved server).

    At most ``max_connections`` are served at once: one beyond that is closed
    as soon as it is accepted, its record ended "over max_connections" (it
    still counts as a connection, so the scripts keep their numbers)."""

    def __init__(
        self,
        *scripts: Script,
        then: Script | None = None,
        audio_limit: int = 1 << 20,
        max_connections: int = 64,
    ) -> None:
        self.scripts = scripts
        self.then = then if then is not None else Script()
        #: Audio bytes kept per connection (all are counted).
        self.audio_limit = audio_limit
        self.max_connections = max_connections
        self.port = 0
        #: Connections accepted (TCP), whether or not they upgraded.
        self.accepted = 0
        #: Connections being served now.
        self.live = 0
        #: Records of the most recent connections (at most 256), oldest first.
        self.connections: collections.deque[ConnectionRecord] = collections.deque(
            maxlen=_RECORDS_KEEP
        )

    def script_for(self, number: int) -> Script:
        return self.scripts[number - 1] if number <= len(self.scripts) else self.then

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def upgraded(self) -> list[ConnectionRecord]:
        return [record for record in self.connections if record.upgraded]

    async def serve(
        self, *, task_status: trio.TaskStatus[HostileServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        if self.live >= self.max_connections:
            record = ConnectionRecord(self.accepted, ended="over max_connections")
            record.note(f"closed at once: {self.live} connections are served already")
            record.done.set()
            self.connections.append(record)
            await trio.aclose_forcefully(stream)
            return
        connection = _Connection(self, stream, self.accepted)
        self.connections.append(connection.record)
        self.live += 1
        try:
            await connection.run()
        finally:
            self.live -= 1
            if connection.record.ended is None:
                connection.record.ended = "shutdown"
            connection.record.done.set()
            await trio.aclose_forcefully(stream)

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds, polled every 5 ms; whether it did
        within ``timeout``."""
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.005)
            return True
        return False


@asynccontextmanager
async def serving(
    *scripts: Script,
    then: Script | None = None,
    audio_limit: int = 1 << 20,
    max_connections: int = 64,
    limit: float = 10.0,
) -> AsyncIterator[HostileServer]:
    """A ``HostileServer`` for these arguments, serving on 127.0.0.1 (an
    ephemeral port) for the block, which fails (TooSlowError) after ``limit``
    seconds: the tests run on the real clock and must not hang."""
    server = HostileServer(
        *scripts, then=then, audio_limit=audio_limit, max_connections=max_connections
    )
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()
