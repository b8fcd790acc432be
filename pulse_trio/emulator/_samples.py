"""Wire audio as 16-bit samples: what the emulator hears, in every encoding.

PCM and G.711 are converted as they are. The emulator has no Opus decoder:
for ``opus`` and ``ogg_opus`` it reads the packets of token audio (a
table-of-contents byte, then 20 ms of 8 kHz mu-law; see
``pulse_trio.emulator.token_audio``), so its time runs at 8 kHz there.
The token engine and the voice activity detector share this, so their times
agree to the sample.
"""

from __future__ import annotations

import array
from typing import Final

from pulse_core import Encoding, OggPageSplitter
from pulse_trio._g711 import alaw_to_linear16, mulaw_to_linear16

__all__ = ["OPUS_TOC", "OPUS_TOKEN_RATE", "WireSamples"]

OPUS_TOKEN_RATE: Final = 8000
# CELT fullband, 20 ms frames, one frame per packet (RFC 6716 section 3.1).
OPUS_TOC: Final = 31 << 3


class WireSamples:
    """Turns wire bytes, fed in chunks of any size, into 16-bit samples at ``rate``."""

    def __init__(self, encoding: Encoding | str, sample_rate: int) -> None:
        self.encoding = Encoding(encoding)
        self.rate = OPUS_TOKEN_RATE if self.encoding.compressed else sample_rate
        self._pending = b""
        self._ogg = OggPageSplitter() if self.encoding is Encoding.OGG_OPUS else None

    def feed(self, data: bytes) -> array.array[int]:
        encoding = self.encoding
        if encoding is Encoding.OPUS:
            pcm = mulaw_to_linear16(data[1:]) if data and data[0] == OPUS_TOC else b""
        elif encoding is Encoding.OGG_OPUS:
            assert self._ogg is not None
            pcm = b"".join(
                mulaw_to_linear16(_page_body(page)[1:])
                for page, ticks in self._ogg.feed(data)
                if ticks >= 0
            )
        else:
            data = self._pending + data
            width = encoding.sample_width or 1
            usable = len(data) - len(data) % width
            self._pending = data[usable:]
            data = data[:usable]
            if encoding is Encoding.MULAW:
                pcm = mulaw_to_linear16(data)
            elif encoding is Encoding.ALAW:
                pcm = alaw_to_linear16(data)
            elif encoding is Encoding.LINEAR32:
                wide = array.array("i")
                wide.frombytes(data)
                return array.array("h", (value >> 16 for value in wide))
            else:
                pcm = data
        samples = array.array("h")
        samples.frombytes(pcm)
        return samples


def _page_body(page: bytes) -> bytes:
    segments = page[26]
    return page[27 + segments :]
