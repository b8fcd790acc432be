"""RFC 6455 framing and the HTTP/1.1 upgrade, written out by hand.

Nothing here imports a WebSocket or HTTP library: the point of the hostile
server is to share no code, and so no assumptions, with the client under test.
Everything works on bytes and is bounded by explicit limits.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator
from typing import Final

import attrs

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "GUID",
    "LONGEST_HEADER",
    "PING",
    "PONG",
    "TEXT",
    "Frame",
    "FrameParser",
    "FramingError",
    "HttpRequest",
    "Message",
    "MessageAssembler",
    "accept_key",
    "close_payload",
    "encode_frame",
    "format_response",
    "parse_close",
    "parse_request",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_DATA_OPCODES: Final = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL_OPCODES: Final = frozenset({CLOSE, PING, PONG})
GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
LONGEST_HEADER: Final = 14


class FramingError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# -- the opening handshake ------------------------------------------------------------


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a request's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


@attrs.frozen
class HttpRequest:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every ``name`` header, lower-cased."""
        wanted = name.lower()
        found: set[str] = set()
        for key, value in self.headers:
            if key.lower() == wanted:
                found.update(part.strip().lower() for part in value.split(",") if part.strip())
        return found


def parse_request(head: bytes) -> HttpRequest:
    """Parse a request head (everything before the blank line, CRLF or LF line ends)."""
    text = head.decode("latin-1")  # every byte is a latin-1 character
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise ValueError("obsolete header folding")
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    return HttpRequest(method, target, version, tuple(headers))


def format_response(
    status_line: bytes, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]
) -> bytes:
    """A response head: status line, headers, blank line."""
    lines = [status_line]
    lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- frames ---------------------------------------------------------------------------


@attrs.frozen
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    masked: bool = False


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One server frame (unmasked).

    No checks: the hostile server uses this to write frames a peer must reject.
    """
    first = (0x80 if fin else 0) | (opcode & 0xF)
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def close_payload(code: int | None, reason: str | bytes = b"") -> bytes:
    """A close frame's payload; ``code=None`` is the empty payload (no status)."""
    if code is None:
        return b""
    data = reason.encode("utf-8") if isinstance(reason, str) else reason
    return struct.pack("!H", code) + data


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close frame; (None, "") for an empty one."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FramingError(1002, "a close payload of one byte")
    (code,) = struct.unpack("!H", payload[:2])
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError(1007, "close reason is not UTF-8") from None
    return code, reason


class FrameParser:
    """Incremental frame parser. ``feed`` bytes, then drain ``frames()``.

    ``require_mask``: every frame must be masked (a server reading a client)
    or none may be (a client reading a server). ``max_frame`` bounds one
    frame's payload, and so the buffer: a longer frame is a 1009 violation as
    soon as its header is read. Drained, the buffer holds less than one frame
    (``LONGEST_HEADER + max_frame`` bytes), so it never holds more than that
    plus one ``feed``; feeding again without draining past that bound is a
    caller's error (ValueError), not growth.
    """

    def __init__(self, *, require_mask: bool | None, max_frame: int = 1 << 24) -> None:
        self.require_mask = require_mask
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self._buffer) >= LONGEST_HEADER + self.max_frame:
            raise ValueError("feed() again before frames() was drained")
        self._buffer += data

    def frames(self) -> Iterator[Frame]:
        while (frame := self._next()) is not None:
            yield frame

    def _next(self) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin = bool(first & 0x80)
        rsv = (first >> 4) & 0x7
        opcode = first & 0xF
        masked = bool(second & 0x80)
        size = second & 0x7F
        offset = 2
        if size == 126:
            if len(buffer) < 4:
                return None
            (size,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            (size,) = struct.unpack_from("!Q", buffer, 2)
            if size >> 63:
                raise FramingError(1002, "64-bit length with the high bit set")
            offset = 10
        if rsv:
            raise FramingError(1002, f"reserved bits {rsv:#x} without an extension")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise FramingError(1002, f"unknown opcode {opcode:#x}")
        if opcode in _CONTROL_OPCODES and (size > 125 or not fin):
            raise FramingError(1002, "a control frame fragmented or over 125 bytes")
        if self.require_mask is not None and masked != self.require_mask:
            raise FramingError(1002, "masked frame" if masked else "unmasked frame")
        if size > self.max_frame:
            raise FramingError(1009, f"frame of {size} bytes over {self.max_frame}")
        mask = b""
        if masked:
            if len(buffer) < offset + 4:
                return None
            mask = bytes(buffer[offset : offset + 4])
            offset += 4
        if len(buffer) < offset + size:
            return None
        payload = bytes(buffer[offset : offset + size])
        del buffer[: offset + size]
        if masked:
            payload = _apply_mask(payload, mask)
        return Frame(fin=fin, opcode=opcode, payload=payload, masked=masked)


@attrs.frozen
class Message:
    """A whole data message, or a control frame passed through as it came."""

    opcode: int
    payload: bytes
    #: Data frames it was assembled from (1 when not fragmented).
    fragments: int = 1

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class MessageAssembler:
    """Joins fragmented data frames into messages; control frames pass through
    at once, even between the fragments of a message. Text is checked as UTF-8
    (1007); a message's size (``max_message`` bytes) and its number of frames
    (``max_fragments``, so empty fragments cannot pile up either) are bounded,
    1009 beyond them."""

    def __init__(self, *, max_message: int = 1 << 24, max_fragments: int = 1024) -> None:
        self.max_message = max_message
        self.max_fragments = max_fragments
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, frame: Frame) -> Message | None:
        if frame.opcode in _CONTROL_OPCODES:
            return Message(frame.opcode, frame.payload)
        if frame.opcode == CONTINUATION:
            if self._opcode is None:
                raise FramingError(1002, "continuation frame without a message to continue")
        elif self._opcode is not None:
            raise FramingError(1002, "new data frame inside a fragmented message")
        else:
            self._opcode = frame.opcode
        self._size += len(frame.payload)
        if self._size > self.max_message:
            raise FramingError(1009, f"message over {self.max_message} bytes")
        if len(self._parts) >= self.max_fragments:
            raise FramingError(1009, f"message in over {self.max_fragments} frames")
        self._parts.append(frame.payload)
        if not frame.fin:
            return None
        opcode, parts = self._opcode, self._parts
        self._opcode, self._parts, self._size = None, [], 0
        payload = b"".join(parts)
        if opcode == TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise FramingError(1007, "text message is not UTF-8") from None
        return Message(opcode, payload, fragments=len(parts))
