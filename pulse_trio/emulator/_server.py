"""The emulator's WebSocket server: ``ServerSession`` over trio-websocket."""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from pulse_core import Region
from pulse_trio._websocket import open_client, open_server

from ._protocol import (
    Accept,
    Close,
    RecognitionEngine,
    Reject,
    ServerParams,
    ServerSession,
    check_request,
    region_refusal,
)
from ._token_engine import TokenEngine

__all__ = ["Emulator", "Fault", "Faults"]

logger = logging.getLogger("pulse_trio.emulator")
#: Seconds a client has to send its upgrade request (a silent one is let go).
_HANDSHAKE_TIMEOUT: Final = 60.0
#: Seconds a connection that went silent (``Faults.silence``) is held open, unread.
SILENT_FOR: Final = 60.0
#: The concurrency limit when the engine does not set one.
_MAX_SESSIONS: Final = 100

_ERROR_SHAPES: dict[int, Callable[[str, str], dict[str, Any]]] = {
    1: lambda code, message: {"type": "error", "status": "error", "message": message},
    2: lambda code, message: {"type": "error", "error_code": code, "message": message},
    3: lambda code, message: {"status": "error", "error": {"message": message, "code": code}},
}


@attrs.define
class Fault:
    """One fault for the next connection that gets to it.

    ``after_bytes`` or ``at_seconds`` (audio received on that connection) say
    when; ``action`` is one of ``drop`` (no close frame), ``close`` (close with
    ``code``), ``error`` (send an error in ``shape`` 1, 2 or 3), ``malformed``
    (send ``text``), ``stall`` (stop answering), ``silence`` (stop reading too,
    so that pings go unanswered).
    """

    action: str
    after_bytes: int | None = None
    at_seconds: float | None = None
    code: int = 1011
    shape: int = 1
    error_code: str = "INTERNAL_ERROR"
    text: str = "{this is not json"

    def due(self, session: ServerSession) -> bool:
        if self.after_bytes is not None:
            return session.audio_bytes >= self.after_bytes
        if self.at_seconds is not None:
            return session.seconds >= self.at_seconds
        return True


class Faults:
    """Faults to inject, for tests and demos. Each is used once."""

    def __init__(self) -> None:
        self._refusals: list[tuple[int, float | None]] = []
        self._pending: list[Fault] = []

    def refuse(
        self, count: int = 1, *, status: int = 503, retry_after: float | None = None
    ) -> None:
        """Answer the next ``count`` handshakes with ``status``."""
        self._refusals.extend([(status, retry_after)] * count)

    def drop(self, *, after_bytes: int | None = None, at_seconds: float | None = None) -> None:
        """Cut the next connection (no close frame) after that much audio."""
        self._pending.append(Fault("drop", after_bytes=after_bytes, at_seconds=at_seconds))

    def close(
        self, code: int, *, after_bytes: int | None = None, at_seconds: float | None = None
    ) -> None:
        """Close the next connection with ``code`` after that much audio."""
        self._pending.append(
            Fault("close", after_bytes=after_bytes, at_seconds=at_seconds, code=code)
        )

    def error(
        self,
        shape: int = 1,
        *,
        code: str = "INTERNAL_ERROR",
        after_bytes: int | None = None,
        at_seconds: float | None = None,
    ) -> None:
        """Send an error message in documented shape 1, 2 or 3."""
        if shape not in _ERROR_SHAPES:
            raise ValueError("shape is 1, 2 or 3")
        self._pending.append(
            Fault(
                "error",
                after_bytes=after_bytes,
                at_seconds=at_seconds,
                shape=shape,
                error_code=code,
            )
        )

    def malformed(
        self,
        text: str = "{this is not json",
        *,
        after_bytes: int | None = None,
        at_seconds: float | None = None,
    ) -> None:
        """Send a text frame that is not a valid message."""
        self._pending.append(
            Fault("malformed", after_bytes=after_bytes, at_seconds=at_seconds, text=text)
        )

    def stall(self, *, after_bytes: int | None = None, at_seconds: float | None = None) -> None:
        """Stop answering (keep the socket open, send nothing more)."""
        self._pending.append(Fault("stall", after_bytes=after_bytes, at_seconds=at_seconds))

    def silence(self, *, after_bytes: int | None = None, at_seconds: float | None = None) -> None:
        """Go silent as a dead peer or a black-holed path does: stop reading, so
        that once a message or two more arrive nothing is answered, pings
        included (a ``stall`` still answers pings). The connection is held
        open, unread, for ``SILENT_FOR`` seconds, then cut."""
        self._pending.append(Fault("silence", after_bytes=after_bytes, at_seconds=at_seconds))

    def next_refusal(self) -> tuple[int, float | None] | None:
        return self._refusals.pop(0) if self._refusals else None

    def take_due(self, session: ServerSession) -> list[Fault]:
        due = [fault for fault in self._pending if fault.due(session)]
        for fault in due:
            self._pending.remove(fault)
        return due


class Emulator:
    """A local Pulse-compatible server.

    ``api_keys=None`` accepts any bearer key. ``region`` makes it behave like
    that region's host for region-restricted languages. ``max_sessions`` is
    the account's concurrency limit (more are closed with 1008); by default
    the engine's own ``max_sessions`` if it has one (what stays real time), else 100.
    """

    def __init__(
        self,
        *,
        engine: RecognitionEngine | None = None,
        api_keys: frozenset[str] | set[str] | None = None,
        region: Region | str | None = None,
        max_sessions: int | None = None,
        send_from_finalize: bool = True,
        on_send: Callable[[str, str], None] | None = None,
    ) -> None:
        self.engine: RecognitionEngine = engine or TokenEngine()
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.region = Region(region) if region is not None else None
        self.max_sessions: int = (
            max_sessions
            if max_sessions is not None
            else getattr(self.engine, "max_sessions", _MAX_SESSIONS)
        )
        self.send_from_finalize = send_from_finalize
        #: Called with (session id, text) for every text frame once it is sent.
        self.on_send = on_send
        self.faults = Faults()
        self.active = 0
        self.connections = 0
        self.handshakes = 0
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not serving")
        return self._port

    def url(self, host: str = "127.0.0.1", *, secure: bool = False) -> str:
        """The base URL to give a client."""
        return f"{'wss' if secure else 'ws'}://{host}:{self.port}"

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (use with ``nursery.start``).

        Each connection is served on its own (:meth:`serve_stream`): whatever
        goes wrong on one is logged and never reaches the others or the
        listener. An address that cannot be listened on raises its
        ``OSError`` from here (from ``nursery.start``), as it is.
        """

        async def connection(stream: trio.SocketStream) -> None:
            try:
                if ssl_context is None:
                    await self.serve_stream(stream)
                    return
                tls = trio.SSLStream(stream, ssl_context, server_side=True)
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    logger.debug("TLS handshake failed")
                    await trio.aclose_forcefully(tls)
                    return
                await self.serve_stream(tls)
            except Exception:
                logger.exception("a connection failed; the emulator serves on")

        # Bound before the nursery opens, so a refusal is not an exception group.
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, connection, listeners)
            task_status.started(self)

    def memory_connector(self) -> Callable[..., Any]:
        """A ``connector`` for ``open_session`` that reaches this emulator over
        in-memory streams: no sockets, and trio's virtual clock works."""

        async def connect(
            nursery: trio.Nursery,
            url: str,
            headers: list[tuple[bytes, bytes]],
            ssl_context: ssl.SSLContext | None,
        ) -> WebSocketConnection:
            # Imported here: only tests need it, and trio.testing imports pytest.
            from trio.testing import memory_stream_pair  # noqa: PLC0415

            client, server = memory_stream_pair()
            nursery.start_soon(self.serve_stream, server)
            parts = urlsplit(url)
            resource = parts.path + (f"?{parts.query}" if parts.query else "")
            return await open_client(
                nursery,
                client,
                parts.hostname or "localhost",
                resource,
                extra_headers=headers,
                message_queue_size=1,
                max_message_size=1 << 20,
            )

        return connect

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over an already-open stream (e.g. a memory stream)."""
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT):
                    request = await open_server(nursery, stream)
                if request is not None:
                    await self.handle(request)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def handle(self, request: WebSocketRequest) -> None:
        self.handshakes += 1
        # Logged: the path and the peer, never the headers (the key is one) nor
        # the query as given (the parameters are logged as understood).
        path = request.path.split("?")[0]
        peer = _peer(request.remote)
        refusal = self.faults.next_refusal()
        if refusal is not None:
            status, retry_after = refusal
            logger.info("refused %s from %s: %d (fault injection)", path, peer, status)
            headers = (
                [(b"Retry-After", str(retry_after).encode())] if retry_after is not None else []
            )
            await request.reject(status, extra_headers=headers, body=b"refused by fault injection")
            return
        request_headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ]
        decision = check_request(request.path, request_headers, api_keys=self.api_keys)
        if isinstance(decision, Reject):
            logger.info("rejected %s from %s: %d %s", path, peer, decision.status, decision.reason)
            await request.reject(decision.status, body=decision.reason.encode())
            return
        assert isinstance(decision, Accept)
        ws = await request.accept()
        self.connections += 1
        # An engine that answers in its own time brings its own session (converse()).
        session_type = getattr(self.engine, "session_type", ServerSession)
        session = session_type(
            decision.params,
            self.engine.stream(decision.params.encoding, decision.params.sample_rate),
            session_id=f"emulator-{self.connections}",
            send_from_finalize=self.send_from_finalize,
        )
        logger.info(
            "%s: accepted %s from %s (%s)",
            session.session_id,
            path,
            peer,
            _describe_params(decision.params),
        )
        refused = region_refusal(decision.params.language, self.region)
        if decision.params.english_only_refusal:
            refused = [Close(1011, "this model serves English only")]
        if refused is not None:
            await self._send(ws, session, refused)
            return
        if self.active >= self.max_sessions:
            logger.info(
                "%s: over the limit of %d sessions: closing it",
                session.session_id,
                self.max_sessions,
            )
            await self._send(
                ws,
                session,
                [
                    {"type": "error", "status": "error", "message": "concurrency limit reached"},
                    Close(1008, "concurrency limit reached"),
                ],
            )
            return
        self.active += 1
        try:
            converse = getattr(session, "converse", None)
            if converse is not None:
                await converse(ws, functools.partial(self._send, ws, session))
            else:
                await self._run(ws, session)
        finally:
            self.active -= 1
            # The code only: the reason is whichever side's close frame came first.
            how = f"closed {ws.closed.code}" if ws.closed is not None else "cut off"
            logger.info(
                "%s: ended, %s, after %.2f s of audio (%d bytes)",
                session.session_id,
                how,
                session.seconds,
                session.audio_bytes,
            )

    async def _run(self, ws: WebSocketConnection, session: ServerSession) -> None:
        stalled = False
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return
            if stalled:
                continue
            if isinstance(message, bytes):
                # About once a second of audio, not for every frame.
                before = int(session.seconds)
                outputs_ = session.audio(message)
                if logger.isEnabledFor(logging.DEBUG) and int(session.seconds) > before:
                    logger.debug(
                        "%s: audio received up to %.2f s (%d bytes)",
                        session.session_id,
                        session.seconds,
                        session.audio_bytes,
                    )
            else:
                logger.debug("%s: received %s", session.session_id, _control_name(message))
                outputs_ = session.control(message)
            outputs: list[dict[str, Any] | Close | str] = []
            outputs.extend(outputs_)
            injected: list[dict[str, Any] | Close | str] = []  # malformed text goes first
            for fault in self.faults.take_due(session):
                logger.info(
                    "%s: fault injection: %s at %.2f s of audio",
                    session.session_id,
                    fault.action,
                    session.seconds,
                )
                if fault.action in ("drop", "close"):
                    if not await self._send(ws, session, injected):
                        return
                    if fault.action == "drop":
                        await _abort(ws)
                    else:
                        await ws.aclose(fault.code, "fault injection")
                    return
                if fault.action == "silence":
                    # The connection's reader queues one message, then stops
                    # reading the socket: nothing is answered, not even a ping.
                    await trio.sleep(SILENT_FOR)
                    await _abort(ws)
                    return
                if fault.action == "stall":
                    stalled = True
                    outputs = []
                elif fault.action == "error":
                    outputs.insert(
                        0, _ERROR_SHAPES[fault.shape](fault.error_code, "injected error")
                    )
                elif fault.action == "malformed":
                    injected.append(fault.text)
            if not await self._send(ws, session, injected + outputs):
                return

    async def _send(
        self,
        ws: WebSocketConnection,
        session: ServerSession,
        outputs: Sequence[dict[str, Any] | Close | str],
    ) -> bool:
        """Send ``outputs`` in order (a ``str`` is sent as it is); False once the socket is closed."""
        try:
            for item in outputs:
                if isinstance(item, Close):
                    logger.debug(
                        "%s: closing with %d %s", session.session_id, item.code, item.reason
                    )
                    await ws.aclose(item.code, item.reason)
                    return False
                text = item if isinstance(item, str) else json.dumps(item)
                await ws.send_message(text)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s: sent %s", session.session_id, _describe_sent(item))
                if self.on_send is not None:
                    self.on_send(session.session_id, text)
        except ConnectionClosed:
            return False
        return True


def _peer(remote: object) -> str:
    """``address:port`` of a TCP peer; other streams (in memory) have none."""
    address = getattr(remote, "address", None)
    port = getattr(remote, "port", None)
    if address is None or port is None:
        return "a stream in memory"
    return f"[{address}]:{port}" if getattr(address, "version", 4) == 6 else f"{address}:{port}"


def _describe_params(params: ServerParams) -> str:
    """What a session was asked for, for the log."""
    parts = [f"language {params.language}", f"{params.encoding.value} {params.sample_rate} Hz"]
    flags = (
        "word_timestamps",
        "sentence_timestamps",
        "diarize",
        "full_transcript",
        "redact_pii",
        "redact_pci",
        "vad_events",
    )
    parts += [name for name in flags if getattr(params, name)]
    if not params.endpointing:
        parts.append("no endpointing")
    elif params.eou_timeout_ms != attrs.fields(ServerParams).eou_timeout_ms.default:
        parts.append(f"eou_timeout_ms {params.eou_timeout_ms}")
    if params.max_words is not None:
        parts.append(f"max_words {params.max_words}")
    return ", ".join(parts)


def _control_name(text: str) -> str:
    """A control message by its type (cut short: it is the client's text)."""
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        kind = None
    return (
        str(kind)[:40]
        if isinstance(kind, str)
        else f"a text frame that is no control message ({len(text)} characters)"
    )


def _describe_sent(item: dict[str, Any] | str) -> str:
    if isinstance(item, str):
        return f"a malformed frame ({len(item)} characters, fault injection)"
    kind = item.get("type", "error")
    if kind in ("speech_started", "speech_ended"):
        return f"{kind} at {item['timestamp']:.2f} s"
    if kind == "transcription":
        flags = [
            name
            for name, on in (
                ("final" if item["is_final"] else "interim", True),
                ("from_finalize", item.get("from_finalize")),
                ("is_last", item["is_last"]),
            )
            if on
        ]
        text = item["transcript"]
        shown = repr(text if len(text) <= 60 else text[:57] + "...")
        return f"transcription ({', '.join(flags)}) {shown}"
    return f"{kind}: {item.get('message') or item.get('error')}"


async def _abort(ws: WebSocketConnection) -> None:
    """Cut the TCP connection without a close frame, like a network failure."""
    stream: trio.abc.Stream = ws._stream  # deliberate: there is no public way
    await stream.aclose()
