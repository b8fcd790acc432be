"""The WebSocket layer (pulse_trio/_websocket.py) against peers written by hand.

Each peer here speaks raw bytes over an in-memory stream, so it can do what
trio-websocket never does itself: ping after the other side's close frame,
hang up in the middle of the handshake, answer the upgrade wrongly, refuse
with a huge body. Each test fails on plain trio-websocket
(``wrap_client_stream`` / ``wrap_server_stream``), which is what the layer
exists for.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from pulse_trio._websocket import (
    REFUSAL_BODY_LIMIT,
    HandshakeFailed,
    deliver,
    open_client,
    open_server,
    send_messages,
    violation,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LIMIT = 5.0  # seconds; every exchange here takes milliseconds


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes = b"", *, masked: bool) -> bytes:
    """One final frame (payload under 126 bytes); clients mask, servers do not."""
    assert len(payload) < 126
    if not masked:
        return bytes([0x80 | opcode, len(payload)]) + payload
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


TEXT, CLOSE, PING = 0x1, 0x8, 0x9


def long_frame(opcode: int, payload: bytes) -> bytes:
    """One final unmasked frame of up to 64 KiB (a 16-bit extended length)."""
    assert len(payload) < 1 << 16
    return bytes([0x80 | opcode, 126]) + struct.pack("!H", len(payload)) + payload


async def read_until(stream: trio.abc.Stream, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    while not done(data):
        more = await stream.receive_some(65536)
        if not more:
            break
        data += more
    return data


async def read_request(stream: trio.abc.Stream) -> bytes:
    """The client's upgrade request; returns its Sec-WebSocket-Key."""
    head = await read_until(stream, lambda data: b"\r\n\r\n" in data)
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return value.strip()
    raise AssertionError(f"no key in {head!r}")


def switching(key: bytes, *, accept: bytes | None = None, upgrade: bool = True) -> bytes:
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade"]
    if upgrade:
        lines.append(b"Upgrade: websocket")
    lines.append(b"Sec-WebSocket-Accept: " + (accept or accept_for(key)))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def client_against(
    server: Callable[[trio.abc.Stream], Awaitable[None]],
    body: Callable[[WebSocketConnection], Awaitable[None]] | None = None,
    *,
    max_message_size: int = 1 << 20,
    client_stream: trio.abc.Stream | None = None,
    server_stream: trio.abc.Stream | None = None,
) -> None:
    """Run ``open_client`` against ``server`` (then ``body`` on the connection);
    what fails is raised as it is, not in the nursery's group."""
    if client_stream is None or server_stream is None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT), _unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server, server_stream)
            ws = await open_client(
                nursery,
                client_stream,
                "example.test",
                "/waves/v1/stt/live",
                extra_headers=[],
                message_queue_size=1,
                max_message_size=max_message_size,
            )
            if body is not None:
                await body(ws)
            nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _unwrapped() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _after_head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


# -- a ping after this side's close frame ---------------------------------------------------


async def test_a_client_ignores_a_ping_that_follows_its_close_frame() -> None:
    async def server(stream: trio.abc.Stream) -> None:
        await stream.send_all(switching(await read_request(stream)))
        # Wait for the client's close frame, then ping before answering it.
        await read_until(stream, lambda data: len(data) >= 2 and data[0] == 0x80 | CLOSE)
        await stream.send_all(frame(PING, b"late", masked=False))
        await stream.send_all(frame(CLOSE, struct.pack("!H", 1000), masked=False))
        await trio.sleep_forever()

    async def close(ws: WebSocketConnection) -> None:
        await ws.aclose()
        assert ws.closed is not None and ws.closed.code == 1000

    await client_against(server, close)


async def test_a_server_ignores_a_ping_that_follows_its_close_frame() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    closed: list[int | None] = []

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            request = await open_server(nursery, server_stream)
            ws = await request.accept()
            await ws.aclose()
            closed.append(ws.closed.code if ws.closed is not None else None)
            nursery.cancel_scope.cancel()

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            key = b"dGhlIHNhbXBsZSBub25jZQ=="
            await client_stream.send_all(
                b"GET /waves/v1/stt/live HTTP/1.1\r\nHost: example.test\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
            )
            # The server accepts, then closes; the client pings before it
            # answers the close.
            answer = await read_until(
                client_stream,
                lambda data: len(_after_head(data)) >= 2 and _after_head(data)[0] == 0x80 | CLOSE,
            )
            assert accept_for(key) in answer
            await client_stream.send_all(frame(PING, b"late", masked=True))
            await client_stream.send_all(frame(CLOSE, struct.pack("!H", 1000), masked=True))
    assert closed == [1000]


# -- the handshake cannot succeed -----------------------------------------------------------


async def test_a_server_hanging_up_mid_handshake_fails_it_at_once() -> None:
    async def server(stream: trio.abc.Stream) -> None:
        await read_request(stream)
        await stream.aclose()

    start = trio.current_time()
    with pytest.raises(HandshakeFailed, match="closed the connection during the handshake"):
        await client_against(server)
    assert trio.current_time() - start < 1.0


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (lambda key: switching(key, accept=b"AAAA"), "Bad accept token"),
        (lambda key: switching(key, upgrade=False), "Upgrade"),
        (lambda key: b"HTTP/1.1 101 OK\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n", "too long"),
        (lambda key: b"HTTP/1.0 garbage\r\n\r\n", "status line"),
    ],
    ids=["wrong-accept", "no-upgrade-header", "huge-headers", "garbage-status-line"],
)
async def test_a_malformed_answer_to_the_upgrade_fails_the_handshake(
    answer: Callable[[bytes], bytes], complaint: str
) -> None:
    async def server(stream: trio.abc.Stream) -> None:
        await stream.send_all(answer(await read_request(stream)))
        await trio.sleep_forever()

    with pytest.raises(HandshakeFailed, match="not a WebSocket handshake") as info:
        await client_against(server)
    assert complaint in str(info.value)


async def test_a_refusal_body_is_read_up_to_the_limit() -> None:
    async def server(stream: trio.abc.Stream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 67108864\r\n\r\n")
        for _ in range(64):  # 4 of the 64 MiB promised: far more than is kept
            await stream.send_all(b"x" * 65536)
        await trio.sleep_forever()

    with pytest.raises(ConnectionRejected) as info:
        await client_against(server)
    assert info.value.status_code == 503
    assert info.value.body is not None and len(info.value.body) == REFUSAL_BODY_LIMIT


# -- a peer that breaks the protocol is failed --------------------------------------------


async def close_code_from(stream: trio.abc.Stream, after: bytes = b"") -> int | None:
    """The code of the next close frame the client writes (masked), or None
    if the client ends the stream without one."""
    data = after
    while True:
        while len(data) >= 6:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            assert data[1] & 0x80 and length < 126  # a client's frames here are small, masked
            if len(data) < 6 + length:
                break
            payload = bytes(b ^ data[2 + i % 4] for i, b in enumerate(data[6 : 6 + length]))
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            data = data[6 + length :]
        more = await stream.receive_some(65536)
        if not more:
            return None
        data += more


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (long_frame(TEXT, b"x" * 2000), 1009),
        (frame(TEXT, b'{"transcript": "\x80\xff"}', masked=False), 1007),
        (frame(TEXT, b"{}", masked=True), 1002),  # a server never masks (RFC 6455 5.1)
        (frame(CLOSE, struct.pack("!H", 999), masked=False), 1002),  # no such close code
    ],
    ids=["message-too-big", "invalid-utf8", "masked-frame", "bad-close-code"],
)
async def test_a_peer_that_breaks_the_protocol_is_failed_with_its_code(
    bad: bytes, code: int
) -> None:
    """The client sends a close frame with the code for what the peer did
    (RFC 6455 7.1.7, 8.1), delivers the message that came before, and says the
    close was its own (``violation``), not the peer's."""
    heard: list[int | None] = []
    answered = trio.Event()

    async def server(stream: trio.abc.Stream) -> None:
        request = await read_until(stream, lambda data: b"\r\n\r\n" in data)
        key = next(
            line.partition(b":")[2].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        await stream.send_all(switching(key) + frame(TEXT, b"before", masked=False) + bad)
        with trio.move_on_after(1.0):
            heard.append(await close_code_from(stream, _after_head(request)))
        answered.set()
        await trio.sleep_forever()

    async def body(ws: WebSocketConnection) -> None:
        await answered.wait()  # everything the server sent has been read by now
        assert await ws.get_message() == "before"
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        failed = violation(ws)
        assert failed is not None and type(failed.code) is int and failed.code == code, failed

    await client_against(server, body, max_message_size=1024)
    assert heard == [code]


class SlowWrites(trio.abc.Stream):
    """A stream whose writes take ``delay`` seconds to leave."""

    def __init__(self, inner: trio.abc.Stream, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(self.delay)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_aclose_returns_once_the_peers_close_frame_is_answered() -> None:
    """The server closes first; the client calls aclose() as soon as it has
    read that close frame, then closes the stream, as a session does. The
    answer (RFC 6455 5.5.1) must be written before aclose() returns."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    answers: list[int | None] = []

    async def server(stream: trio.abc.Stream) -> None:
        await stream.send_all(switching(await read_request(stream)))
        await stream.send_all(frame(CLOSE, struct.pack("!H", 1000), masked=False))
        answers.append(await close_code_from(stream))

    async def body(ws: WebSocketConnection) -> None:
        while ws.closed is None:  # the close frame is read; its answer is on its way
            await trio.sleep(0.001)
        await ws.aclose()
        await client_stream.aclose()
        while not answers:
            await trio.sleep(0.001)

    await client_against(
        server,
        body,
        client_stream=SlowWrites(client_stream, 0.05),
        server_stream=server_stream,
    )
    assert answers == [1000]


# -- several messages in one write ------------------------------------------------------------


class CountedWrites(SlowWrites):
    """A stream that counts its writes (and does not slow them)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner, 0.0)
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)


async def test_send_messages_writes_them_at_once_and_the_peer_reads_each() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    counted = CountedWrites(client_stream)
    received: list[str | bytes] = []

    async def server(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            ws = await (await open_server(nursery, stream)).accept()
            received.extend([await ws.get_message() for _ in range(3)])
            nursery.cancel_scope.cancel()

    async def body(ws: WebSocketConnection) -> None:
        before = counted.writes
        await send_messages(ws, [b"\x01\x02", '{"type":"finalize"}', b"\x03" * 300])
        assert counted.writes == before + 1
        while len(received) < 3:
            await trio.sleep(0.001)

    await client_against(server, body, client_stream=counted, server_stream=server_stream)
    assert received == [b"\x01\x02", '{"type":"finalize"}', b"\x03" * 300]


async def test_send_messages_after_the_close_raises_and_writes_nothing() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    counted = CountedWrites(client_stream)

    async def server(stream: trio.abc.Stream) -> None:
        await stream.send_all(switching(await read_request(stream)))
        await trio.sleep_forever()

    async def body(ws: WebSocketConnection) -> None:
        with trio.move_on_after(0.05):
            await ws.aclose()  # the server never answers: the close is under way
        before = counted.writes
        with pytest.raises(ConnectionClosed):
            await send_messages(ws, [b"\x01\x02"])
        assert counted.writes == before

    await client_against(server, body, client_stream=counted, server_stream=server_stream)


# -- messages handed on as they are read ------------------------------------------------------


async def test_deliver_hands_on_every_message_once_in_order_from_the_handshake_on() -> None:
    # The first batch comes with the handshake's answer, so it is read (into
    # a buffer of one message, the reader then waiting to put the next) before
    # deliver() starts; the second comes once the client has caught up, and
    # the reader hands it on itself. Both in order, none twice or lost.
    caught_up = trio.Event()

    async def server(stream: trio.abc.Stream) -> None:
        key = await read_request(stream)
        first = b"".join(frame(TEXT, str(i).encode(), masked=False) for i in range(20))
        await stream.send_all(switching(key) + first)
        await caught_up.wait()
        second = b"".join(frame(TEXT, str(i).encode(), masked=False) for i in range(20, 40))
        await stream.send_all(second + frame(CLOSE, struct.pack("!H", 1000), masked=False))
        await trio.sleep_forever()

    got: list[int] = []
    readers: set[trio.lowlevel.Task] = set()

    async def body(ws: WebSocketConnection) -> None:
        await trio.sleep(0.1)  # the first batch is read meanwhile
        delivering = trio.lowlevel.current_task()

        async def sink(message: str | bytes) -> None:
            got.append(int(message))
            readers.add(trio.lowlevel.current_task())
            if len(got) % 3 == 0:
                await trio.sleep(0.001)  # a sink that waits now and then
            if len(got) == 20:
                caught_up.set()

        with pytest.raises(ConnectionClosed):
            await deliver(ws, sink)
        assert got == list(range(40))
        # The buffered ones were handed on by deliver()'s task, the later ones
        # by the reader task as it read them.
        assert delivering in readers and len(readers) == 2

    await client_against(server, body)
