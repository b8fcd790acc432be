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
from trio_websocket import ConnectionRejected, WebSocketConnection

from pulse_trio._websocket import REFUSAL_BODY_LIMIT, HandshakeFailed, open_client, open_server

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


CLOSE, PING = 0x8, 0x9


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
) -> None:
    """Run ``open_client`` against ``server`` (then ``body`` on the connection);
    what fails is raised as it is, not in the nursery's group."""
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
                max_message_size=1 << 20,
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
