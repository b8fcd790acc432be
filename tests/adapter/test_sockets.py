"""open_session() against the emulator over real loopback sockets: ws and wss.

test_session.py, beside this file, covers the behaviours on in-memory streams
and trio's virtual clock; this file runs the same adapter over the real network stack
(TCP on 127.0.0.1 with an ephemeral port, TLS with a trustme CA), so the real
clock runs here and every test is bounded by ``trio.fail_after``.

Each test of a defect found in review stays as a regression test. The one
still marked ``xfail(strict=True, reason="BUG: ...")`` proves a defect not yet
fixed; strict xfail fails it once it is, as a reminder to drop the mark.
"""

from __future__ import annotations

import functools
import gc
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trustme
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

from pulse_core import (
    Closed,
    ConfigurationError,
    Connected,
    ConnectionFailed,
    Event,
    Reconnecting,
    Transcript,
)
from pulse_trio import (
    AuthenticationError,
    CertificateError,
    ConnectionGaveUpError,
    RateLimitError,
    Session,
    SessionFailedError,
    default_connector,
    open_session,
)
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import encode, opus_packets

KEY = "sk_sockets_test_key_0123456789"
LIMIT = 20  # seconds; no test comes near it


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect at the end of each test, so that a socket left to the garbage
    collector fails (ResourceWarning, filterwarnings=error) the test that leaked
    it rather than whichever test the collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def untrusting_context() -> ssl.SSLContext:
    """A client context that trusts some other CA, not the emulator's."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trustme.CA().configure_trust(context)
    return context


@asynccontextmanager
async def serving(
    emulator: Emulator, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Emulator]:
    """Run ``emulator`` on 127.0.0.1 with an ephemeral port for the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(emulator.serve, ssl_context=ssl_context))
        yield emulator
        nursery.cancel_scope.cancel()


def base_url(emulator: Emulator, secure: bool = False) -> str:
    # wss goes to "localhost" so that SNI and the hostname check run for real.
    return emulator.url("localhost" if secure else "127.0.0.1", secure=secure)


def recorder(session: Session) -> list[Event]:
    events: list[Event] = []
    session.event_handler("on_event")(events.append)
    return events


async def speak(session: Session, words: str, *, chunk: int = 1280, pace: float = 0.0) -> None:
    """Send token audio for ``words`` (faster than real time unless ``pace``)."""
    audio = encode(words.split(), trail=0.15)
    for offset in range(0, len(audio), chunk):
        await session.send_audio(audio[offset : offset + chunk])
        await trio.sleep(pace)


async def wait_until(predicate: Callable[[], object], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` on the real clock; whether it came true in time."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
        return True
    return False


def finals(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Transcript) and e.is_final and e.text]


def kinds(events: list[Event], *types: type) -> list[str]:
    return [type(e).__name__ for e in events if isinstance(e, types or (object,))]


class NoJitter:
    """Backoff delays without their random part."""

    def random(self) -> float:
        return 0.0


class ClosingEmulator(Emulator):
    """An emulator that records how each accepted WebSocket ended (code, reason)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.closes: list[tuple[int, str | None]] = []

    async def _run(self, ws: WebSocketConnection, session: Any) -> None:
        try:
            await super()._run(ws, session)
        finally:
            reason = ws.closed
            self.closes.append((int(reason.code), reason.reason) if reason else (0, None))


class RecordingConnector:
    """``default_connector``, remembering every WebSocket it opened."""

    def __init__(self) -> None:
        self.opened: list[WebSocketConnection] = []

    async def __call__(
        self,
        nursery: trio.Nursery,
        url: str,
        headers: list[tuple[bytes, bytes]],
        ssl_context: ssl.SSLContext | None,
    ) -> WebSocketConnection:
        ws = await default_connector(nursery, url, headers, ssl_context)
        self.opened.append(ws)
        return ws


class SlowUplink:
    """``default_connector`` whose next write, once armed, takes ``delay`` seconds
    (a congested uplink, or a large replay still being written)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.armed = False
        self.writing = trio.Event()

    async def __call__(
        self,
        nursery: trio.Nursery,
        url: str,
        headers: list[tuple[bytes, bytes]],
        ssl_context: ssl.SSLContext | None,
    ) -> WebSocketConnection:
        ws = await default_connector(nursery, url, headers, ssl_context)
        # Below the WebSocket: the session's writer frames its messages itself
        # and writes the stream (``_websocket.send_messages``).
        stream = ws._stream
        send = stream.send_all

        async def send_all(data: bytes | bytearray | memoryview) -> None:
            if self.armed:
                self.armed = False
                self.writing.set()
                await trio.sleep(self.delay)
            await send(data)

        stream.send_all = send_all  # type: ignore[method-assign]
        return ws


class Pipe:
    """One connection through the relay."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.flowing = trio.Event()
        self.flowing.set()


class Relay:
    """A TCP relay in front of the emulator that can stall or cut its connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._pipes: list[Pipe] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._relay, listeners)

    def hold(self) -> None:
        """Stall the open connections both ways, as a black-holed path would: the
        relay stops reading, so TCP flow control pushes back. New ones flow."""
        for pipe in self._pipes:
            pipe.flowing = trio.Event()

    def cut(self) -> None:
        """Close the open connections (no close frame); new ones get through."""
        for pipe in self._pipes:
            pipe.scope.cancel()
        self._pipes.clear()

    async def _relay(self, client: trio.SocketStream) -> None:
        pipe = Pipe()
        self._pipes.append(pipe)
        async with client:
            with pipe.scope:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, pipe, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, pipe, upstream, client, nursery.cancel_scope)

    async def _pump(
        self,
        pipe: Pipe,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await pipe.flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@asynccontextmanager
async def relaying(emulator: Emulator) -> AsyncIterator[Relay]:
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(Relay(emulator.port).serve)
        yield relay
        nursery.cancel_scope.cancel()


# -- what works over real sockets ---------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_token_audio_transcripts_arrive_exactly(
    secure: bool, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    turns = ["hello over a real socket", "second turn with more words", "and a third"]
    with trio.fail_after(LIMIT):
        emulator = Emulator(api_keys={KEY})
        async with serving(emulator, server_context if secure else None):
            async with open_session(
                KEY,
                base_url=base_url(emulator, secure),
                ssl_context=client_context if secure else None,
            ) as session:
                events = recorder(session)
                assert await wait_until(lambda: emulator.active == 1)
                for turn in turns:
                    await speak(session, turn)
                    await session.speech_stopped()
                await speak(session, "closing words")  # finalized by close_stream
            assert finals(events) == [*turns, "closing words"]
            answers = [e for e in events if isinstance(e, Transcript) and e.finalized]
            assert [(e.turn, e.text) for e in answers] == list(enumerate(turns, start=1))
            last = [e.text for e in events if isinstance(e, Transcript) and e.is_last]
            assert last == ["closing words"]
            assert kinds(events, Connected, Closed) == ["Connected", "Closed"]
            closed = events[-1]
            assert isinstance(closed, Closed) and closed.error is None
            assert closed.summary.dropped_bytes == 0
            assert emulator.handshakes == emulator.connections == 1


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_reconnect_after_an_injected_drop(
    secure: bool, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        emulator.faults.drop(at_seconds=1.2)  # mid-utterance, no close frame
        async with serving(emulator, server_context if secure else None):
            async with open_session(
                KEY,
                base_url=base_url(emulator, secure),
                ssl_context=client_context if secure else None,
            ) as session:
                events = recorder(session)
                await speak(session, words, pace=0.002)
                await session.speech_stopped()
            # Replayed audio: every word exactly once, in order.
            assert " ".join(finals(events)).split() == words.split()
            assert kinds(events, Connected, Reconnecting) == [
                "Connected",
                "Reconnecting",
                "Connected",
            ]
            assert [e.reconnect for e in events if isinstance(e, Connected)] == [False, True]
            assert emulator.connections == 2
            assert session.engine.summary().reconnects == 1


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_a_refused_handshake_401_raises_authentication_error(
    secure: bool, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator(api_keys={"sk_someone_else"})
        async with serving(emulator, server_context if secure else None):
            with pytest.raises(AuthenticationError, match="401") as info:
                async with open_session(
                    KEY,
                    base_url=base_url(emulator, secure),
                    ssl_context=client_context if secure else None,
                ) as session:
                    await speak(session, "nobody hears this")
                    async for _ in session.events():  # ends after Closed
                        pass
            assert emulator.handshakes == 1  # permanent: not retried
            assert emulator.connections == 0
            failure = info.value.failure
            assert failure is not None and failure.status == 401 and failure.permanent
            assert KEY not in str(info.value) and KEY not in repr(failure)


async def test_wss_with_an_untrusted_ca_fails_without_waiting_for_the_timeout(
    server_context: ssl.SSLContext, untrusting_context: ssl.SSLContext
) -> None:
    """What happens today; see test_an_untrusted_certificate_is_a_permanent_failure."""
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator, server_context):
            start = trio.current_time()
            with pytest.raises(SessionFailedError) as info:
                async with open_session(
                    KEY,
                    base_url=base_url(emulator, True),
                    ssl_context=untrusting_context,
                    connect_timeout=5.0,
                    reconnect={"max_attempts": 2, "base_delay": 0.01},
                ) as session:
                    events = recorder(session)
                    await speak(session, "nobody hears this")
                    async for _ in session.events():  # ends after Closed
                        pass
            # The TLS handshake fails at once (the connector runs it before the
            # WebSocket handshake), but as a transient failure: retried, then given up.
            assert trio.current_time() - start < 2.0  # far less than connect_timeout
            assert isinstance(info.value, CertificateError)
            assert "certificate failed verification" in str(info.value)
            assert emulator.handshakes == 0  # no upgrade request ever reached it
            failures = [e for e in events if isinstance(e, ConnectionFailed)]
            assert [f.permanent for f in failures] == [True]  # not retried
            assert KEY not in str(info.value)


async def test_a_close_that_times_out_still_closes_the_socket() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        emulator.faults.stall(at_seconds=0.0)  # never sends the is_last final
        async with serving(emulator):
            with pytest.raises(SessionFailedError, match="close timed out"):
                async with open_session(
                    KEY, base_url=base_url(emulator), close_timeout=0.2
                ) as session:
                    await speak(session, "unconfirmed words")
                    assert await wait_until(lambda: emulator.active == 1)
            assert await wait_until(lambda: emulator.active == 0, timeout=2.0)


async def test_leaving_the_block_closes_the_server_side() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator):
            # Several times: the server's close and the client's cancellation of its
            # link race, and that race used to leave the socket open half the time.
            for _ in range(6):
                async with open_session(KEY, base_url=base_url(emulator)) as session:
                    await speak(session, "short and sweet")
                    assert await wait_until(lambda: emulator.active == 1)
                assert await wait_until(lambda: emulator.active == 0, timeout=1.0)


async def test_leaving_the_block_by_an_exception_closes_the_server_side() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator):
            with pytest.raises(KeyError, match="mine"):
                async with open_session(KEY, base_url=base_url(emulator)) as session:
                    await speak(session, "then a bug")
                    assert await wait_until(lambda: emulator.active == 1)
                    raise KeyError("mine")
            assert await wait_until(lambda: emulator.active == 0, timeout=1.0)


async def test_cancelling_the_block_closes_the_server_side() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        emulator.faults.stall(at_seconds=0.0)  # never answers: only cancel ends it
        async with serving(emulator):
            with trio.move_on_after(0.3) as scope:
                async with open_session(KEY, base_url=base_url(emulator)) as session:
                    await speak(session, "never answered")
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            assert await wait_until(lambda: emulator.active == 0, timeout=1.0)


async def test_no_client_socket_outlives_the_session() -> None:
    connector = RecordingConnector()
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        emulator.faults.drop(at_seconds=0.3)  # one link ends in a drop, one in a close
        async with serving(emulator):
            async with open_session(
                KEY, base_url=base_url(emulator), connector=connector
            ) as session:
                await speak(session, "one two three four five six", pace=0.002)
            assert session.engine.summary().reconnects == 1
            assert len(connector.opened) == 2
            sockets = [getattr(ws._stream, "socket", None) for ws in connector.opened]
            assert [sock.fileno() for sock in sockets if sock is not None] == [-1, -1]


# -- bugs, most severe first ------------------------------------------------------


async def test_a_black_holed_connection_is_replaced() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with (
            serving(emulator),
            relaying(emulator) as relay,
            open_session(
                KEY,
                base_url=relay.url,
                outgoing_buffer=65536,
                replay_seconds=2.0,
                finalize_timeout=0.3,
                jitter=NoJitter(),
            ) as session,
        ):
            events = recorder(session)
            assert await wait_until(lambda: kinds(events, Connected))
            relay.hold()  # the path goes dark; TCP buffers fill, writes block

            async def flood() -> None:
                while True:
                    await session.send_audio(bytes(32000))  # waits when full: fine

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await trio.sleep(0.1)
                await session.finalize()  # unanswered: the engine replaces the socket
                assert await wait_until(lambda: emulator.connections == 2, timeout=1.0)
                nursery.cancel_scope.cancel()


async def test_a_connection_lost_during_a_keepalive_ping_is_replaced() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator), relaying(emulator) as relay:
            async with open_session(
                KEY,
                base_url=relay.url,
                encoding="opus",  # no byte-level silence: keepalives are pings
                keepalive_interval=0.1,
                jitter=NoJitter(),
            ) as session:
                events = recorder(session)
                for packet in opus_packets("before the loss"):
                    await session.send_audio(packet)
                await session.speech_stopped()
                assert await wait_until(lambda: finals(events) == ["before the loss"])
                relay.hold()  # the path stalls: the next ping's pong cannot come back
                assert await wait_until(lambda: session.engine.summary().keepalives >= 1)
                await trio.sleep(0.05)
                relay.cut()  # ... and then the connection dies
                assert await wait_until(lambda: emulator.connections == 2, timeout=1.0)
                for packet in opus_packets("after the loss"):
                    await session.send_audio(packet)
                await session.speech_stopped()
            assert finals(events) == ["before the loss", "after the loss"]


async def test_a_socket_lost_after_the_engine_closed_it_is_not_reported() -> None:
    uplink = SlowUplink(0.5)
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator), relaying(emulator) as relay:
            async with open_session(
                KEY,
                base_url=relay.url,
                connector=uplink,
                keepalive_interval=0.1,
                jitter=NoJitter(),
                reconnect={"base_delay": 2.0},
            ) as session:
                events = recorder(session)
                assert await wait_until(lambda: kinds(events, Connected))
                uplink.armed = True
                await uplink.writing.wait()  # a keepalive is being written, slowly
                # The engine switches sockets: CloseConnection + Connect, queued behind it.
                await session.update_settings(language="hi")
                relay.cut()  # the old socket dies before the executor reaches them
                assert await wait_until(lambda: len(kinds(events, Connected)) == 2)
                await speak(session, "after the switch")
                await session.speech_stopped()
            assert kinds(events, ConnectionFailed) == []
            assert finals(events) == ["after the switch"]


async def test_concurrent_senders_all_get_through_a_full_outgoing_buffer() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with (
            serving(emulator),
            open_session(
                KEY, base_url=base_url(emulator), outgoing_buffer=1, max_chunk_delay=0
            ) as session,
        ):
            events = recorder(session)
            assert await wait_until(lambda: kinds(events, Connected))
            audio = encode(["two", "producers", "share", "one", "session"])
            done: list[str] = []

            async def sender(name: str) -> None:
                for offset in range(0, len(audio), 640):
                    await session.send_audio(audio[offset : offset + 640])
                done.append(name)

            with trio.move_on_after(0.5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender, "a")
                    nursery.start_soon(sender, "b")
            assert sorted(done) == ["a", "b"]


async def test_leaving_the_events_iterator_early_does_not_stall_the_session() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with (
            serving(emulator),
            open_session(KEY, base_url=base_url(emulator), event_buffer=4) as session,
        ):
            events = recorder(session)
            iterator = cast(AsyncGenerator[Event, None], session.events())
            async with aclosing(iterator):
                async for event in iterator:
                    if isinstance(event, Connected):
                        break  # only wanted to know it is up; the iterator is closed
            await speak(session, "several words make several interims")
            await session.speech_stopped()
            assert await wait_until(
                lambda: finals(events) == ["several words make several interims"],
                timeout=0.75,
            )


async def test_an_untrusted_certificate_is_a_permanent_failure(
    server_context: ssl.SSLContext, untrusting_context: ssl.SSLContext
) -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator, server_context):
            with pytest.raises(SessionFailedError, match=r"(?i)certificate") as info:
                async with open_session(
                    KEY,
                    base_url=base_url(emulator, True),
                    ssl_context=untrusting_context,
                    reconnect={"max_attempts": 3, "base_delay": 0.01},
                ) as session:
                    events = recorder(session)
                    async for _ in session.events():
                        pass
            assert not isinstance(info.value, ConnectionGaveUpError)
            assert [f.permanent for f in events if isinstance(f, ConnectionFailed)] == [True]


async def serve_hanging_up(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP server that reads the upgrade request and hangs up without an answer
    (a restarting server, a load balancer resetting, the wrong port)."""

    async def hang_up(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hang_up, listeners)


async def test_a_server_that_hangs_up_fails_the_attempt_at_once() -> None:
    # trio-websocket's reader ends silently when the server hangs up before
    # answering the upgrade; the connector notices it (pulse_trio/_websocket.py).
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_hanging_up)
            start = trio.current_time()
            with pytest.raises(ConnectionGaveUpError) as info:
                async with open_session(
                    KEY,
                    base_url=f"ws://127.0.0.1:{port}",
                    connect_timeout=0.6,
                    reconnect={"max_attempts": 1},
                ) as session:
                    async for _ in session.events():
                        pass
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start < 0.3
        assert "timed out" not in str(info.value)
        assert "closed the connection during the handshake" in str(info.value)


async def test_the_client_closes_with_a_close_frame() -> None:
    with trio.fail_after(LIMIT):
        emulator = ClosingEmulator()
        async with serving(emulator):
            for _ in range(12):
                emulator.faults.stall(at_seconds=0.0)  # the client must close: close timeout
                with pytest.raises(SessionFailedError, match="close timed out"):
                    async with open_session(
                        KEY, base_url=base_url(emulator), close_timeout=0.02
                    ) as session:
                        await session.send_audio(encode(["x"]))
                        assert await wait_until(lambda: emulator.active == 1)
            assert await wait_until(lambda: emulator.active == 0, timeout=1.0)
            assert emulator.closes == [(1000, "close timed out")] * 12


async def test_aclose_from_an_event_handler_returns_promptly() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        took: list[float] = []
        async with (
            serving(emulator),
            open_session(
                KEY, base_url=base_url(emulator), close_timeout=0.2, connect_timeout=0.2
            ) as session,
        ):

            @session.event_handler("on_final_transcript")
            async def stop(event: Transcript) -> None:
                if not took:
                    start = trio.current_time()
                    await session.aclose()
                    took.append(trio.current_time() - start)

            await speak(session, "stop after this")
            await session.speech_stopped()
            assert await wait_until(lambda: took, timeout=2.0)
            assert took[0] < 0.3


async def test_a_permanent_failure_interrupts_a_waiting_block() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator(api_keys={"sk_someone_else"})
        async with serving(emulator):
            with trio.move_on_after(0.5) as scope, pytest.raises(AuthenticationError):
                async with open_session(KEY, base_url=base_url(emulator)):
                    await trio.sleep_forever()  # e.g. handlers only, or other work
            assert not scope.cancelled_caught


async def test_a_recovered_429_does_not_classify_a_later_failure() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        emulator.faults.refuse(1, status=429, retry_after=0)
        emulator.faults.stall(at_seconds=0.0)  # then the close times out
        async with serving(emulator):
            with pytest.raises(SessionFailedError, match="close timed out") as info:
                async with open_session(
                    KEY, base_url=base_url(emulator), close_timeout=0.2, jitter=NoJitter()
                ) as session:
                    events = recorder(session)
                    await speak(session, "fine at first")
                    assert await wait_until(lambda: kinds(events, Connected))
            assert not isinstance(info.value, RateLimitError)
            assert info.value.failure is None


async def test_an_ssl_context_with_a_ws_url_is_a_configuration_error(
    client_context: ssl.SSLContext,
) -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator):
            with pytest.raises(ConfigurationError):
                async with open_session(
                    KEY, base_url=base_url(emulator), ssl_context=client_context
                ) as session:
                    await speak(session, "sent in the clear")
            assert emulator.handshakes == 0


async def serve_rejecting_with_the_request_echoed(
    *, task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """A gateway that answers 401 with the request headers in the body, as some
    debugging proxies and misconfigured gateways do."""

    async def reject(request: WebSocketRequest) -> None:
        echoed = b"; ".join(name + b": " + value for name, value in request.headers)
        await request.reject(401, body=b"unauthorized; request was: " + echoed)

    await serve_websocket(reject, "127.0.0.1", 0, None, task_status=task_status)


async def test_a_refusal_that_echoes_the_request_does_not_leak_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_rejecting_with_the_request_echoed)
            with pytest.raises(AuthenticationError) as info:
                async with open_session(KEY, base_url=f"ws://127.0.0.1:{server.port}") as session:
                    async for _ in session.events():
                        pass
            nursery.cancel_scope.cancel()
        assert KEY not in str(info.value)
        assert KEY not in caplog.text


class HostRecordingEmulator(Emulator):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.hosts: list[str] = []

    async def handle(self, request: WebSocketRequest) -> None:
        self.hosts.append(request._event.host)  # wsproto keeps Host out of .headers
        await super().handle(request)


async def test_an_ipv6_literal_gets_a_valid_host_header() -> None:
    with trio.fail_after(LIMIT):
        emulator = HostRecordingEmulator()
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(emulator.serve, "::1"))
            port = emulator.port
            async with open_session(KEY, base_url=f"ws://[::1]:{port}") as session:
                await speak(session, "over ipv6")
            nursery.cancel_scope.cancel()
        assert emulator.connections == 1
        assert emulator.hosts == [f"[::1]:{port}"]


async def test_an_exception_group_from_the_block_comes_out_as_it_went_in() -> None:
    async def fail() -> None:
        raise KeyError("mine")

    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with serving(emulator):
            with pytest.raises(ExceptionGroup) as info:
                async with (
                    open_session(KEY, base_url=base_url(emulator)),
                    trio.open_nursery() as nursery,
                ):
                    nursery.start_soon(fail)
            assert info.group_contains(KeyError, depth=1)


async def test_a_cancelled_send_audio_sends_nothing() -> None:
    with trio.fail_after(LIMIT):
        emulator = Emulator()
        async with (
            serving(emulator),
            open_session(KEY, base_url=base_url(emulator)) as session,
        ):
            with trio.CancelScope() as scope:
                scope.cancel()
                await session.send_audio(encode(["lost"]))
            assert scope.cancelled_caught
            assert session.engine.buffered_bytes == 0
