"""The hostile server itself: its framing, handshake and scripts.

Nothing here uses the pulse client or any WebSocket library. Frames are
checked against the examples of RFC 6455 (section 5.7 and 1.3), and the
server is driven over TCP by a tiny client written out below, whose framing
shares no code with the server's (a second, independent reading of the RFC),
or by the standard library's ``http.client``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import os
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.hostile import KEY, speech
from tests.hostile.framing import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    FrameParser,
    FramingError,
    MessageAssembler,
    accept_key,
    encode_frame,
    parse_close,
    parse_request,
)
from tests.hostile.script import (
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
    OnPing,
    Ping,
    Pong,
    Raw,
    RepeatFinal,
    Script,
    SlowRead,
    SplitFinals,
    Together,
    fragmented_text,
    invalid_utf8_text,
    redirect,
    refuse,
)
from tests.hostile.server import HostileServer, serving

TARGET = "/waves/v1/stt/live?model=pulse&language=en&encoding=linear16&sample_rate=16000"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# -- a tiny client, framing written out independently ---------------------------------


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if len(payload) <= 125:
        head.append(bit | len(payload))
    elif len(payload) <= 0xFFFF:
        head.append(bit | 126)
        head += len(payload).to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += len(payload).to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


#: The most the test client keeps of what the server sends: a server bug that
#: announces or streams more fails the test instead of filling memory.
CLIENT_KEEPS = 16 << 20


class RawClient:
    """A WebSocket client in a page: enough to drive the server by hand. Its
    buffer holds at most ``CLIENT_KEEPS`` bytes (and one read)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _read(self) -> bytes:
        if len(self.buffer) > CLIENT_KEEPS:
            raise AssertionError(f"the server sent over {CLIENT_KEEPS} bytes unread")
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return data

    async def fill(self, size: int) -> None:
        assert size <= CLIENT_KEEPS, f"a frame of {size} bytes"
        while len(self.buffer) < size:
            if not await self._read():
                raise EOFError(f"EOF with {len(self.buffer)} of {size} bytes")

    async def take(self, size: int) -> bytes:
        await self.fill(size)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def response_head(self) -> tuple[str, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._read():
                raise EOFError("EOF in the response head")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def upgrade(self, target: str = TARGET, key: str = RFC_KEY) -> tuple[str, dict[str, str]]:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        )
        await self.stream.send_all(request.encode("latin-1"))
        return await self.response_head()

    async def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        await self.stream.send_all(client_frame(opcode, payload, fin=fin))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(TEXT, json.dumps(message).encode())

    async def frame(self) -> tuple[bool, int, bytes]:
        first, second = await self.take(2)
        assert not second & 0x80, "a server frame must not be masked"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.take(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.take(8))
        return bool(first & 0x80), first & 0x0F, await self.take(size)

    async def message(self) -> tuple[int, bytes]:
        """The next data message or control frame (fragments joined)."""
        fin, opcode, payload = await self.frame()
        if opcode >= 0x8:
            return opcode, payload
        while not fin:
            fin, more, part = await self.frame()
            assert more == CONTINUATION
            payload += part
        return opcode, payload

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.message()
        assert opcode == TEXT, (opcode, payload[:80])
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def eof(self) -> bytes:
        """Everything until the server closes TCP."""
        while await self._read():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@asynccontextmanager
async def client_of(server: HostileServer) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        yield RawClient(stream)


# -- framing against the RFC ------------------------------------------------------------


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key(RFC_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    digest = hashlib.sha1(
        b"x3JJHMbDL1EzLkh9GBhXDw==258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
        usedforsecurity=False,
    ).digest()
    assert accept_key("x3JJHMbDL1EzLkh9GBhXDw==") == base64.b64encode(digest).decode()


def frames_of(data: bytes, *, require_mask: bool | None) -> list[tuple[bool, int, bytes]]:
    parser = FrameParser(require_mask=require_mask)
    parser.feed(data)
    return [(f.fin, f.opcode, f.payload) for f in parser.frames()]


def test_the_rfc_examples_parse() -> None:
    # RFC 6455 5.7: a single-frame unmasked text message, and the same masked.
    assert frames_of(bytes.fromhex("810548656c6c6f"), require_mask=False) == [
        (True, TEXT, b"Hello")
    ]
    assert frames_of(bytes.fromhex("818537fa213d7f9f4d5158"), require_mask=True) == [
        (True, TEXT, b"Hello")
    ]
    # A fragmented unmasked text message, and an unmasked ping.
    assert frames_of(bytes.fromhex("010348656c80026c6f"), require_mask=False) == [
        (False, TEXT, b"Hel"),
        (True, CONTINUATION, b"lo"),
    ]
    assert frames_of(bytes.fromhex("890548656c6c6f"), require_mask=None) == [(True, PING, b"Hello")]
    # 256 bytes (16-bit length) and 64 KiB (64-bit length) of binary.
    payload = bytes(range(256))
    assert frames_of(b"\x82\x7e\x01\x00" + payload, require_mask=False) == [(True, BINARY, payload)]
    big = os.urandom(65536)
    head = b"\x82\x7f" + (65536).to_bytes(8, "big")
    assert frames_of(head + big, require_mask=False) == [(True, BINARY, big)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_encoded_frames_have_the_right_length_field(size: int) -> None:
    payload = os.urandom(size)
    frame = encode_frame(BINARY, payload)
    if size <= 125:
        assert frame[:2] == bytes([0x82, size])
    elif size <= 0xFFFF:
        assert frame[:4] == bytes([0x82, 126]) + size.to_bytes(2, "big")
    else:
        assert frame[:10] == bytes([0x82, 127]) + size.to_bytes(8, "big")
    assert frame.endswith(payload)
    # The test's own client framing and the server's parser agree, however it is cut.
    masked = client_frame(BINARY, payload)
    parser = FrameParser(require_mask=True)
    got: list[Any] = []
    pieces = [masked[i : i + 1] for i in range(16)]  # the header a byte at a time
    pieces += [masked[i : i + 4096] for i in range(16, len(masked), 4096)]
    for piece in pieces:
        parser.feed(piece)
        got.extend(parser.frames())
    assert [(f.opcode, f.payload, f.masked) for f in got] == [(BINARY, payload, True)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes.fromhex("810548656c6c6f"), 1002),  # unmasked client frame
        (
            client_frame(TEXT, b"x")[:1].replace(b"\x81", b"\xc1") + client_frame(TEXT, b"x")[1:],
            1002,
        ),
        (client_frame(0x3, b"x"), 1002),  # reserved opcode
        (client_frame(PING, b"x", fin=False), 1002),  # fragmented control frame
        (client_frame(PING, b"x" * 126), 1002),  # control frame over 125 bytes
        (b"\x82\xff" + (1 << 63).to_bytes(8, "big"), 1002),  # 64-bit length, top bit set
        (b"\x82\xff" + (1 << 40).to_bytes(8, "big"), 1009),  # over the frame limit
    ],
    ids=["unmasked", "rsv", "opcode", "fragmented-ping", "long-ping", "length-msb", "too-big"],
)
def test_the_parser_refuses_what_the_rfc_forbids(data: bytes, code: int) -> None:
    parser = FrameParser(require_mask=True, max_frame=1 << 20)
    parser.feed(data)
    with pytest.raises(FramingError) as info:
        list(parser.frames())
    assert info.value.code == code


def test_messages_assemble_across_fragments_and_interleaved_control_frames() -> None:
    parser = FrameParser(require_mask=True)
    assembler = MessageAssembler(max_message=100)
    text = "naïve €".encode()
    parser.feed(
        client_frame(TEXT, text[:3], fin=False)  # splits the two-byte "ï"
        + client_frame(PING, b"p")
        + client_frame(CONTINUATION, text[3:7], fin=False)
        + client_frame(CONTINUATION, text[7:])
    )
    got = [m for f in parser.frames() if (m := assembler.add(f)) is not None]
    assert [(m.opcode, m.payload, m.fragments) for m in got] == [
        (PING, b"p", 1),
        (TEXT, text, 3),
    ]
    with pytest.raises(FramingError, match="1002"):
        assembler.add(next(iter(frames_parsed(client_frame(CONTINUATION, b"x")))))
    assembler.add(next(iter(frames_parsed(client_frame(TEXT, b"\xe2\x82", fin=False)))))
    with pytest.raises(FramingError, match="1007"):
        assembler.add(next(iter(frames_parsed(client_frame(CONTINUATION, b"\xff")))))
    with pytest.raises(FramingError, match="1009"):
        assembler.add(next(iter(frames_parsed(client_frame(BINARY, b"x" * 101)))))


def frames_parsed(data: bytes) -> Iterator[Any]:
    parser = FrameParser(require_mask=True)
    parser.feed(data)
    return parser.frames()


def test_the_parser_and_the_assembler_are_bounded() -> None:
    # Fed without draining, the parser refuses to grow past one largest frame.
    parser = FrameParser(require_mask=True, max_frame=100)
    parser.feed(client_frame(BINARY, b"x" * 50) * 3)
    with pytest.raises(ValueError, match="drained"):
        parser.feed(b"\x82")
    assert len(list(parser.frames())) == 3
    parser.feed(client_frame(BINARY, b"x" * 100)[:-1])  # drained: room for a frame
    assert list(parser.frames()) == []
    # A message in more frames than max_fragments is refused, even if they are empty.
    assembler = MessageAssembler(max_fragments=4)
    parts = frames_parsed(
        client_frame(TEXT, b"", fin=False) + client_frame(CONTINUATION, b"", fin=False) * 4
    )
    assert [assembler.add(next(parts)) for _ in range(4)] == [None] * 4
    with pytest.raises(FramingError, match="1009"):
        assembler.add(next(parts))


def test_close_payloads_and_requests_parse() -> None:
    assert parse_close(b"") == (None, "")
    assert parse_close(b"\x03\xe8bye") == (1000, "bye")
    with pytest.raises(FramingError, match="1002"):
        parse_close(b"\x03")
    request = parse_request(
        b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nX:  v \r\n"
    )
    assert request.target == "/x?a=1"
    assert request.tokens("connection") == {"keep-alive", "upgrade"}
    assert request.header("x") == "v"
    with pytest.raises(ValueError, match="request line"):
        parse_request(b"GARBAGE\r\n")


# -- the server over TCP ---------------------------------------------------------------


async def test_a_whole_session_round_trip() -> None:
    """A good Pulse server by default: handshake, audio in every length
    encoding and fragmented, finalize, close_stream, is_last, close 1000."""
    async with serving() as server, client_of(server) as client:
        status, headers = await client.upgrade()
        assert status == "HTTP/1.1 101 Switching Protocols"
        assert headers["upgrade"].lower() == "websocket"
        assert headers["connection"].lower() == "upgrade"
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        sound = speech(2.5)  # 80000 bytes
        pieces = [sound[:100], sound[100:1100], sound[1100:71100]]  # 7-, 16- and 64-bit
        for piece in pieces:
            await client.send(BINARY, piece)
        # One message in three frames, a ping between its fragments.
        rest = sound[71100:]
        await client.send(BINARY, rest[:4000], fin=False)
        await client.send(PING, b"are you there")
        await client.send(CONTINUATION, rest[4000:6000], fin=False)
        await client.send(CONTINUATION, rest[6000:])
        assert await client.message() == (PONG, b"are you there")
        # finalize as a fragmented text message.
        data = b'{"type":"finalize"}'
        await client.send(TEXT, data[:5], fin=False)
        await client.send(CONTINUATION, data[5:])
        final = await client.json()
        assert final["is_final"] is True and final["from_finalize"] is True
        assert final["is_last"] is False
        words = final["words"]
        assert [w["word"] for w in words] == ["w0", "w8000", "w16000", "w24000", "w32000"]
        assert words[0]["start"] == 0.0 and words[-1]["end"] == 2.5
        assert all(a["end"] == b["start"] for a, b in itertools.pairwise(words))
        assert final["transcript"] == "w0 w8000 w16000 w24000 w32000"
        await client.send(BINARY, speech(0.25, offset=2.5))
        await client.send_json({"type": "close_stream"})
        last = await client.json()
        assert last["is_last"] is True and last["from_finalize"] is False
        assert [(w["word"], w["start"], w["end"]) for w in last["words"]] == [("w40000", 2.5, 2.75)]
        assert await client.message() == (CLOSE, b"\x03\xe8")
        await client.send(CLOSE, b"\x03\xe8")
        assert await client.eof() == b""
        await server.wait_for(server.connections[0].done.is_set)
    record = server.connections[0]
    assert record.upgraded and record.status == 101
    assert record.query["encoding"] == "linear16"
    assert record.authorization == f"Bearer {KEY}"
    assert record.audio_bytes == len(sound) + 8000
    assert bytes(record.audio[: len(sound)]) == sound
    assert record.audio_frames == 5
    assert [json.loads(text) for text in record.texts] == [
        {"type": "finalize"},
        {"type": "close_stream"},
    ]
    assert record.pings_received == 1
    assert record.client_close == (1000, "")
    assert record.ended == "closed"
    assert [(f.first, f.last, f.is_last, f.close_streams) for f in record.finals] == [
        (0, 40000, False, 0),
        (40000, 44000, True, 1),
    ]


@pytest.mark.parametrize(
    ("encoding", "rate", "bytes_per_second"),
    [("linear16", 16000, 32000), ("linear32", 8000, 32000), ("mulaw", 8000, 8000)],
)
async def test_word_times_follow_the_requested_format(
    encoding: str, rate: int, bytes_per_second: int
) -> None:
    async with serving() as server, client_of(server) as client:
        await client.upgrade(f"/live?encoding={encoding}&sample_rate={rate}")
        await client.send(BINARY, b"\x01" * bytes_per_second)  # one second
        await client.send_json({"type": "finalize"})
        final = await client.json()
    assert [(w["start"], w["end"]) for w in final["words"]] == [(0.0, 0.5), (0.5, 1.0)]
    assert final["words"][1]["word"] == f"w{rate // 2}"


async def test_an_unmasked_client_frame_is_closed_1002() -> None:
    async with serving() as server, client_of(server) as client:
        await client.upgrade()
        await client.stream.send_all(encode_frame(BINARY, b"\x00\x00"))
        opcode, payload = await client.message()
        assert opcode == CLOSE and payload[:2] == b"\x03\xea"
        assert await client.eof() == b""
    assert server.connections[0].violation is not None


async def test_a_frame_over_the_limit_is_closed_1009() -> None:
    async with serving(Script(max_frame=1000)) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00" * 1002)
        opcode, payload = await client.message()
        assert (opcode, payload[:2]) == (CLOSE, b"\x03\xf1")


async def test_a_message_in_over_1024_frames_is_closed_1009() -> None:
    async with serving() as server, client_of(server) as client:
        await client.upgrade()
        await client.stream.send_all(
            client_frame(TEXT, b"", fin=False) + client_frame(CONTINUATION, b"", fin=False) * 1024
        )
        opcode, payload = await client.message()
        assert (opcode, payload[:2]) == (CLOSE, b"\x03\xf1")
        assert await client.eof() == b""
    assert server.connections[0].violation == "1009: message in over 1024 frames"


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    async with serving(max_connections=1) as server:
        async with client_of(server) as first:
            status, _ = await first.upgrade()
            assert status.startswith("HTTP/1.1 101")
            async with client_of(server) as second:
                assert await second.eof() == b""  # closed without an answer
        assert await server.wait_for(lambda: server.live == 0)
        async with client_of(server) as third:
            status, _ = await third.upgrade()  # room again
            assert status.startswith("HTTP/1.1 101")
    assert [r.ended for r in server.connections][1] == "over max_connections"
    assert [r.upgraded for r in server.connections] == [True, False, True]


async def test_a_request_that_is_no_upgrade_gets_400() -> None:
    async with serving() as server, client_of(server) as client:
        await client.stream.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = await client.response_head()
        assert status.startswith("HTTP/1.1 400")
        await client.eof()
    assert server.connections[0].upgraded is False


async def http_get(port: int) -> tuple[int, dict[str, str], bytes]:
    """A plain request with the standard library's HTTP client."""

    def get() -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request(
                "GET",
                TARGET,
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": RFC_KEY,
                    "Sec-WebSocket-Version": "13",
                    "Authorization": f"Bearer {KEY}",
                },
            )
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    return await trio.to_thread.run_sync(get)


@pytest.mark.parametrize(
    "retry_after", ["86400", "inf", "soon-ish", "Wed, 21 Oct 2015 07:28:00 GMT"]
)
async def test_refusals_are_plain_http(retry_after: str) -> None:
    async with serving(
        Script(handshake=refuse(503, retry_after=retry_after, body=b"busy: {key}"))
    ) as server:
        status, headers, body = await http_get(server.port)
    assert status == 503
    assert headers["retry-after"] == retry_after
    assert body == f"busy: {KEY}".encode()  # placeholders are filled in bodies too
    assert server.connections[0].status == 503


async def test_a_huge_refusal_body_is_streamed() -> None:
    size = 8 << 20
    async with serving(Script(handshake=refuse(500, body_size=size))) as server:
        status, headers, body = await http_get(server.port)
    assert status == 500 and int(headers["content-length"]) == size == len(body)
    assert server.connections[0].bytes_sent > size


async def test_redirects_carry_a_location() -> None:
    async with serving(
        Script(handshake=redirect("ws://127.0.0.1:1/elsewhere", status=307))
    ) as server:
        status, headers, _ = await http_get(server.port)
    assert status == 307 and headers["location"] == "ws://127.0.0.1:1/elsewhere"


@pytest.mark.parametrize(
    ("handshake", "check"),
    [
        (Handshake(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "accept"),
        (Handshake(upgrade=False), "upgrade"),
        (Handshake(padding=20_000), "padding"),
        (Handshake(status_line=b"HTTP/1.0 garbage"), "status"),
    ],
    ids=["wrong-accept", "no-upgrade", "20k-headers", "http10-garbage"],
)
async def test_malformed_101_answers(handshake: Handshake, check: str) -> None:
    async with serving(Script(handshake=handshake)) as server, client_of(server) as client:
        status, headers = await client.upgrade()
        if check == "accept":
            assert headers["sec-websocket-accept"] == "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
        elif check == "upgrade":
            assert "upgrade" not in headers and status.startswith("HTTP/1.1 101")
        elif check == "padding":
            size = sum(len(k) + len(v) + 4 for k, v in headers.items())
            assert size > 16 * 1024
            assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        else:
            assert status == "HTTP/1.0 garbage"


@pytest.mark.parametrize("cut", [0, 12, 60])
async def test_eof_in_the_middle_of_the_answer(cut: int) -> None:
    async with (
        serving(Script(handshake=Handshake(cut_after=cut))) as server,
        client_of(server) as client,
    ):
        await client.stream.send_all(
            f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        got = await client.eof()
    assert len(got) == cut
    assert b"HTTP/1.1 101 Switching Protocols"[:cut] == got[:32]


async def test_hang_up_before_reading_the_request() -> None:
    script = Script(handshake=Handshake(hang_up_at_once=True))
    async with serving(script) as server, client_of(server) as client:
        assert await client.eof() == b""
    assert server.connections[0].request is None


async def test_a_greeting_comes_before_the_request_is_read() -> None:
    script = Script(handshake=Handshake(greeting=b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    async with serving(script) as server, client_of(server) as client:
        status, _ = await client.response_head()  # nothing was sent
        assert status == "HTTP/1.1 400 Bad Request"
        status, _ = await client.upgrade()  # then the request is read and answered
        assert status.startswith("HTTP/1.1 101")
    assert server.connections[0].upgraded


async def test_scripts_apply_per_connection() -> None:
    async with serving(
        Script(handshake=refuse(503)), Script(handshake=Handshake(stall=True))
    ) as server:
        status, _, _ = await http_get(server.port)
        assert status == 503
        async with client_of(server) as client:
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.move_on_after(0.05) as scope:
                await client.stream.receive_some(10)  # the stall: no answer
            assert scope.cancelled_caught
        async with client_of(server) as client:
            status_line, _ = await client.upgrade()  # the third: the default, good
            assert status_line.startswith("HTTP/1.1 101")
    assert [r.status for r in server.connections] == [503, None, 101]


# -- faults ------------------------------------------------------------------------------


async def test_a_ping_during_the_clients_close() -> None:
    """The server pings after the client's close frame, then answers it."""
    script = Script(faults=[Fault(OnClientClose(), Ping(b"late"))])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(CLOSE, b"\x03\xe8bye")
        assert await client.message() == (PING, b"late")
        assert await client.message() == (CLOSE, b"\x03\xe8")
        assert await client.eof() == b""
    assert server.connections[0].client_close == (1000, "bye")


async def test_a_ping_trigger_can_take_the_pongs_place() -> None:
    """OnPing fires before the pong; with replace=True there is no pong."""
    script = Script(faults=[Fault(OnPing(), Pong(b"instead"), replace=True)])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(PING, b"first")
        assert await client.message() == (PONG, b"instead")
        await client.send(PING, b"second")  # fired once: answered as usual
        assert await client.message() == (PONG, b"second")
    assert server.connections[0].pings_received == 2


async def test_half_open_on_the_clients_close_leaves_it_unanswered() -> None:
    script = Script(faults=[Fault(OnClientClose(), HalfOpen())])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(CLOSE, b"\x03\xe8")
        with trio.move_on_after(0.1) as waiting:
            await client.frame()
        assert waiting.cancelled_caught  # no close frame, and TCP stays up
    assert server.connections[0].client_close == (1000, "")


async def test_faults_fire_on_their_triggers_and_fill_in_the_key() -> None:
    script = Script(
        faults=[
            Fault(AfterAudio(3200), [Pong(b"unasked"), Ping(b"{key_tail}")]),
            Fault(
                OnFinalize(2), Error(shape=3, message="no such key {authorization}", code="AUTH")
            ),
            Fault(OnCloseStream(), Close(code=4999, reason="bye {key_head}"), replace=True),
        ]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00" * 3000)
        await client.send(BINARY, b"\x00" * 3000)
        assert await client.message() == (PONG, b"unasked")
        assert await client.message() == (PING, KEY[len(KEY) // 2 :].encode())
        await client.send_json({"type": "finalize"})
        assert (await client.json())["from_finalize"] is True
        await client.send_json({"type": "finalize"})
        error = await client.json()  # the fault comes first, then the normal answer
        assert error == {
            "status": "error",
            "error": {"message": f"no such key Bearer {KEY}", "code": "AUTH"},
        }
        assert (await client.json())["is_final"] is True
        await client.send_json({"type": "close_stream"})
        opcode, payload = await client.message()  # no final: the close replaced it
        assert opcode == CLOSE and parse_close(payload) == (4999, f"bye {KEY[: len(KEY) // 2]}")


@pytest.mark.parametrize("shape", [1, 2, 3])
async def test_error_shapes(shape: int) -> None:
    script = Script(faults=[Fault(AfterAudio(1), Error(shape=shape, message="m", code="C"))])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00\x00")
        got = await client.json()
    expected = [
        {"type": "error", "status": "error", "message": "m"},
        {"type": "error", "error_code": "C", "message": "m"},
        {"status": "error", "error": {"message": "m", "code": "C"}},
    ][shape - 1]
    assert got == expected


async def test_finals_can_lie() -> None:
    script = Script(
        faults=[
            Fault(
                OnFinalize(1),
                [Final(words=((0.0, 1e305), (-3.0, -1.0)), from_finalize=True)],
                replace=True,
            ),
            Fault(OnFinalize(2), [SplitFinals(pieces=2), RepeatFinal()], replace=True),
            Fault(AfterAudio(96000), Final(is_last=True)),
        ]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00" * 32000)
        await client.send_json({"type": "finalize"})
        bogus = await client.json()
        assert [(w["start"], w["end"]) for w in bogus["words"]] == [(0.0, 1e305), (-3.0, -1.0)]
        await client.send(BINARY, b"\x00" * 32000)
        await client.send_json({"type": "finalize"})
        second, first, again = await client.json(), await client.json(), await client.json()
        assert second["words"][0]["start"] == 1.5 and first["words"][0]["start"] == 1.0
        assert again == first  # the previous final, byte for byte
        await client.send(BINARY, b"\x00" * 32000)
        unasked = await client.json()
        assert unasked["is_last"] is True and "from_finalize" not in unasked
    ranges = [(f.first, f.last) for f in server.connections[0].finals]
    assert ranges == [(0, 16000), (24000, 32000), (16000, 24000), (32000, 48000)]


async def test_a_lying_final_may_cover_nothing() -> None:
    """``Final(covers=False)``: the bogus final takes no audio, so the next
    final covers all of it, with its true words."""
    script = Script(
        faults=[
            Fault(
                OnFinalize(1),
                Final(words=((-5.0, -4.0),), from_finalize=True, covers=False),
                replace=True,
            )
        ]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00" * 32000)
        await client.send_json({"type": "finalize"})
        bogus = await client.json()
        assert [(w["start"], w["end"]) for w in bogus["words"]] == [(-5.0, -4.0)]
        await client.send_json({"type": "finalize"})
        true = await client.json()
        assert [(w["start"], w["end"]) for w in true["words"]] == [(0.0, 0.5), (0.5, 1.0)]
    ranges = [(f.first, f.last) for f in server.connections[0].finals]
    assert ranges == [(0, 0), (0, 16000)]


async def test_a_reset_at_a_byte_count() -> None:
    script = Script(faults=[Fault(AfterAudio(10_000), Hangup(reset=True))])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        with pytest.raises((trio.BrokenResourceError, EOFError, OSError)):
            for _ in range(100):
                await client.send(BINARY, b"\x00" * 4096)
                await trio.sleep(0.01)
            await client.frame()
    record = server.connections[0]
    assert record.ended == "reset"
    assert 10_000 <= record.audio_bytes < 20_000


async def test_half_open_stops_reading_and_writing() -> None:
    script = Script(faults=[Fault(AfterAudio(8192), HalfOpen())])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        written = 0
        while True:  # until the kernel buffers are full: the first send that blocks
            with trio.move_on_after(0.1) as blocked:
                await client.send(BINARY, b"\x00" * 65536)
            if blocked.cancelled_caught:
                break
            written += 65536
            assert written < 256 << 20, "the server kept reading"
        with trio.move_on_after(0.1) as reading:
            await client.frame()
        assert reading.cancelled_caught  # and nothing is written
        record = server.connections[0]
        assert record.audio_bytes < written and record.ended is None


async def test_slow_reads_pace_the_client() -> None:
    script = Script(faults=[Fault(AfterAudio(1), SlowRead(200_000))])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00\x00")
        assert await server.wait_for(lambda: server.connections[0].audio_bytes == 2)
        start = trio.current_time()
        await client.send(BINARY, b"\x00" * 20_000)
        await client.send_json({"type": "finalize"})
        await client.json()
        assert trio.current_time() - start >= 0.09  # 20 KB at 200 KB/s: 0.1 s


async def test_a_delay_holds_the_answer_back() -> None:
    script = Script(
        faults=[Fault(OnFinalize(1), [Delay(0.2), Final(from_finalize=True)], replace=True)]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(BINARY, b"\x00" * 3200)
        start = trio.current_time()
        await client.send_json({"type": "finalize"})
        answer = await client.json()
        assert trio.current_time() - start >= 0.2
        assert answer["from_finalize"] is True
    assert [(f.first, f.last) for f in server.connections[0].finals] == [(0, 1600)]


async def test_timed_faults_and_raw_frames() -> None:
    script = Script(
        faults=[
            Fault(AfterSeconds(0.05), [Ping(b"t"), Raw(fragmented_text('{"a": "é"}', 4))]),
            Fault(AfterSeconds(0.1), Raw(invalid_utf8_text())),
        ]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        assert await client.message() == (PING, b"t")
        assert await client.message() == (TEXT, '{"a": "é"}'.encode())
        opcode, payload = await client.message()
        assert opcode == TEXT
        with pytest.raises(UnicodeDecodeError):
            payload.decode("utf-8")
    assert [s.opcode for s in server.connections[0].sent] == [PING, -1, -1]


async def test_together_writes_its_actions_in_one_send() -> None:
    script = Script(
        faults=[
            Fault(OnFinalize(1), Together([Final(from_finalize=True), Ping(b"a")]), replace=True)
        ]
    )
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(PING, b"settle")
        assert await client.message() == (PONG, b"settle")
        writes = server.connections[0].writes
        await client.send(BINARY, b"\x00" * 3200)
        await client.send_json({"type": "finalize"})
        assert (await client.json())["from_finalize"] is True
        assert await client.message() == (PING, b"a")
        record = server.connections[0]
        kinds = [s.opcode for s in record.sent]
        assert kinds[-2:] == [TEXT, PING]
        assert record.writes == writes + 1  # both frames in one write


async def test_split_finals_go_out_in_one_write() -> None:
    """The pieces of a split take their audio at once, so they go out at once:
    no other final (an ``is_last`` answering close_stream, say) and no hang-up
    can come between them."""
    script = Script(faults=[Fault(OnFinalize(1), SplitFinals(pieces=3), replace=True)])
    async with serving(script) as server, client_of(server) as client:
        await client.upgrade()
        await client.send(PING, b"settle")
        assert await client.message() == (PONG, b"settle")
        writes = server.connections[0].writes
        await client.send(BINARY, b"\x00" * 4800)
        await client.send_json({"type": "finalize"})
        pieces = [await client.json() for _ in range(3)]
        assert [p["words"][0]["start"] for p in pieces] == [0.1, 0.05, 0.0]
        assert server.connections[0].writes == writes + 1


async def test_records_are_bounded() -> None:
    async with serving(audio_limit=1000) as server, client_of(server) as client:
        await client.upgrade()
        for _ in range(300):  # each kept (cut) and noted as an unknown type
            await client.send_json({"type": "keep", "pad": "x" * 5000})
        for i in range(1100):  # each answered with a pong
            await client.send(PING, b"%d" % i)
        await client.send(BINARY, b"\x01" * 5000)
        await client.send_json({"type": "finalize"})
        while (await client.message())[0] != TEXT:  # the pongs, then the final
            pass
    record = server.connections[0]
    assert record.audio_bytes == 5000 and len(record.audio) == 1000
    assert len(record.texts) == 256 and max(map(len, record.texts)) <= 4096
    assert len(record.notes) == 256 and record.pings_received == 1100
    assert len(record.sent) == 1024 and record.sent[-1].opcode == TEXT
