"""Opus and Ogg Opus test audio: TOC bytes (RFC 6716 section 3.1) and Ogg
pages (RFC 3533) built by hand, with the two Opus header pages."""

from __future__ import annotations

import struct

__all__ = [
    "BOS",
    "EOS",
    "HEADERS",
    "OPUS_HEAD",
    "OPUS_TAGS",
    "audio_page",
    "ogg_page",
    "toc",
]


def toc(config: int, code: int, stereo: bool = False) -> int:
    """An Opus TOC byte: the frame ``config`` (0-31), ``stereo``, and the frame
    count ``code`` (0: one frame, 1 and 2: two, 3: counted in the next byte)."""
    return config << 3 | int(stereo) << 2 | code


# Ogg page header types: first and last page of a logical stream.
BOS, EOS = 0x02, 0x04


def ogg_page(
    body: bytes, granule: int, *, header_type: int = 0, serial: int = 0x5EED, seqno: int = 0
) -> bytes:
    """One Ogg page (RFC 3533): CRC left at zero, the splitter does not check it."""
    lacing = [255] * (len(body) // 255) + [len(body) % 255]
    assert len(lacing) <= 255
    header = struct.pack(
        "<4sBBqIIIB", b"OggS", 0, header_type, granule, serial, seqno, 0, len(lacing)
    )
    return header + bytes(lacing) + body


OPUS_HEAD = ogg_page(
    b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0), 0, header_type=BOS
)
OPUS_TAGS = ogg_page(b"OpusTags" + struct.pack("<I", 5) + b"pulse" + bytes(4), 0, seqno=1)
HEADERS = OPUS_HEAD + OPUS_TAGS


def audio_page(granule: int, seqno: int, size: int = 40, header_type: int = 0) -> bytes:
    """An audio page of ``size`` bytes ending at ``granule`` (-1: no granule)."""
    return ogg_page(bytes([seqno & 0xFF]) * size, granule, seqno=seqno, header_type=header_type)
