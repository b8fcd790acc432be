"""Audio encodings: sample sizes, silence, and how long a piece of audio lasts.

The engine measures audio in *ticks*: samples of the session's sample rate for
PCM and G.711, and 48 kHz samples for Opus (Opus always counts time at 48 kHz).
Ticks are integers, so positions in the session never drift.
"""

from __future__ import annotations

import enum
import functools
import struct

__all__ = ["SAMPLE_RATES", "Encoding", "OggPageSplitter", "opus_packet_ticks"]

#: Sample rates the service accepts. It does not resample.
SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 44100, 48000)

OPUS_CLOCK_RATE = 48000


class Encoding(enum.StrEnum):
    """The audio encodings the service decodes."""

    LINEAR16 = "linear16"
    LINEAR32 = "linear32"
    ALAW = "alaw"
    MULAW = "mulaw"
    OPUS = "opus"
    OGG_OPUS = "ogg_opus"

    @property
    def sample_width(self) -> int | None:
        """Bytes per sample, or ``None`` for compressed encodings."""
        return _WIDTHS.get(self)

    @property
    def silence_byte(self) -> int | None:
        """The byte value of a silent sample, or ``None`` when there is none.

        Zero is silence for linear PCM but loud noise in G.711: a-law silence is
        0xD5 and mu-law silence is 0xFF. Opus has no byte-level silence.
        """
        return _SILENCE.get(self)

    @property
    def telephony(self) -> bool:
        """G.711 encodings carry 8 kHz telephone audio."""
        return self in (Encoding.ALAW, Encoding.MULAW)

    @property
    def compressed(self) -> bool:
        return self in (Encoding.OPUS, Encoding.OGG_OPUS)

    def clock_rate(self, sample_rate: int) -> int:
        """Ticks per second of audio for this encoding."""
        return OPUS_CLOCK_RATE if self.compressed else sample_rate

    def silence(self, sample_rate: int, seconds: float) -> bytes | None:
        """``seconds`` of silence, or ``None`` for encodings without byte silence.

        The same few lengths are asked for by every session (the keepalive's),
        so the bytes are made once and shared: they are immutable."""
        return _silence(self, sample_rate, seconds)


@functools.lru_cache(maxsize=32)
def _silence(encoding: Encoding, sample_rate: int, seconds: float) -> bytes | None:
    """:meth:`Encoding.silence`, made once per (encoding, rate, length) and
    shared (at most 32 kept; a long keepalive silence is a few KiB)."""
    width = encoding.sample_width
    fill = encoding.silence_byte
    if width is None or fill is None:
        return None
    return bytes([fill]) * (round(sample_rate * seconds) * width)


_WIDTHS = {Encoding.LINEAR16: 2, Encoding.LINEAR32: 4, Encoding.ALAW: 1, Encoding.MULAW: 1}
_SILENCE = {
    Encoding.LINEAR16: 0x00,
    Encoding.LINEAR32: 0x00,
    Encoding.ALAW: 0xD5,
    Encoding.MULAW: 0xFF,
}

# Frame duration of each Opus TOC configuration (RFC 6716 section 3.1), in 48 kHz ticks.
_SILK = (480, 960, 1920, 2880)
_HYBRID = (480, 960)
_CELT = (120, 240, 480, 960)
_OPUS_FRAME_TICKS: tuple[int, ...] = _SILK * 3 + _HYBRID * 2 + _CELT * 4


def opus_packet_ticks(packet: bytes | bytearray | memoryview) -> int:
    """Duration of one raw Opus packet, in 48 kHz ticks (RFC 6716 section 3.1).

    Returns 0 for a packet too short to carry a table-of-contents byte.
    """
    if not packet:
        return 0
    toc = packet[0]
    frame = _OPUS_FRAME_TICKS[toc >> 3]
    code = toc & 0x03
    if code == 0:
        return frame
    if code in (1, 2):
        return 2 * frame
    if len(packet) < 2:
        return 0
    return (packet[1] & 0x3F) * frame


_OGG_HEADER = struct.Struct("<4sBBqIIIB")


class OggPageSplitter:
    """Cuts an Ogg Opus byte stream into whole pages (RFC 3533).

    Pages are the unit the engine sends and replays for ``ogg_opus``: a new
    connection must start with the stream's header pages and continue at a page
    boundary. Bytes that do not parse as Ogg are passed through as they are,
    with no duration, so nothing the caller gives is ever held back for good.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._last_granule = 0
        self._in_headers = True
        self.headers = b""

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a page."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, int]]:
        """Add bytes; return the complete audio pages with their duration in ticks.

        Header pages (granule position 0 at the start of the stream) are kept in
        :attr:`headers` instead of being returned.
        """
        self._buffer += data
        pages: list[tuple[bytes, int]] = []
        while True:
            page = self._next_page()
            if page is None:
                return pages
            data_page, granule = page
            if granule is None:  # bytes that are not a page: passed on as they are
                pages.append((data_page, 0))
                continue
            if granule == 0 and self._in_headers:
                self.headers += data_page
                continue
            self._in_headers = False
            ticks = 0
            if granule > 0:
                ticks = max(0, granule - self._last_granule)
                self._last_granule = granule
            pages.append((data_page, ticks))

    def flush(self) -> bytes:
        """Give up on a partial page: return (and forget) the held-back bytes."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _next_page(self) -> tuple[bytes, int | None] | None:
        buffer = self._buffer
        if len(buffer) < _OGG_HEADER.size:
            return None
        if buffer[:4] != b"OggS":
            # Not at a page boundary: pass everything up to the next capture
            # pattern through unparsed rather than holding it forever, but keep
            # a tail that may be the start of "OggS" split across feeds.
            cut = buffer.find(b"OggS", 1)
            if cut < 0:
                cut = len(buffer)
                for keep in (3, 2, 1):
                    if buffer.endswith(b"OggS"[:keep]):
                        cut -= keep
                        break
                if cut == 0:
                    return None
            junk = bytes(buffer[:cut])
            del buffer[:cut]
            return junk, None
        _, _, _, granule, _, _, _, segments = _OGG_HEADER.unpack_from(buffer)
        header_len = _OGG_HEADER.size + segments
        if len(buffer) < header_len:
            return None
        size = header_len + sum(buffer[_OGG_HEADER.size : header_len])
        if len(buffer) < size:
            return None
        page = bytes(buffer[:size])
        del buffer[:size]
        return page, granule
