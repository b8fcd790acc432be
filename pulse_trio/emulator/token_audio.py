"""Token audio: words written as audio that the emulator reads back exactly.

Tests need audio whose transcript is known in advance, in every encoding and at
every sample rate, whatever way it is cut into chunks. Token audio is that: a
simple signal, not speech, built so that the emulator's token engine decodes it
back to exactly the words that made it.

The signal (documented in README.md, "Token audio"):

* Each word is the UTF-8 bytes of its text, high nibble first. Each nibble is a
  *symbol*: ``SYMBOL_SECONDS`` (10 ms) of constant amplitude
  ``LEVEL_BASE + nibble * LEVEL_STEP`` (16-bit scale), and consecutive symbols
  alternate in sign (+, -, +, ...), so every symbol boundary is a sign change.
* Silence (|sample| below ``SILENCE_BELOW``) separates words: a word ends after
  half a symbol of silence. ``gap`` seconds of silence go between words.
* Levels are ``LEVEL_STEP`` apart, far more than G.711 quantisation moves a
  sample, so mu-law and a-law carry token audio unharmed. linear32 is the same
  signal shifted to 32 bits.
* Opus has no decoder here, so for ``opus`` each 20 ms of the 8 kHz token signal
  becomes one packet: a valid table-of-contents byte (CELT, 20 ms, one frame)
  followed by the mu-law bytes of that 20 ms. ``ogg_opus`` puts those packets in
  Ogg pages after OpusHead/OpusTags headers. A real Opus decoder would not make
  sense of them; the token engine does.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Iterable, Iterator

import attrs

from pulse_core import Encoding
from pulse_trio._g711 import linear16_to_alaw, linear16_to_mulaw

from ._samples import OPUS_TOC, OPUS_TOKEN_RATE, WireSamples

__all__ = [
    "LEVEL_BASE",
    "LEVEL_STEP",
    "SILENCE_BELOW",
    "SYMBOL_SECONDS",
    "DecodedWord",
    "TokenDecoder",
    "encode",
    "ogg_opus_stream",
    "opus_packets",
    "silence",
]

SYMBOL_SECONDS = 0.01
LEVEL_BASE = 2000
LEVEL_STEP = 1900
SILENCE_BELOW = 1000
OPUS_FRAME_SECONDS = 0.02


@attrs.frozen
class DecodedWord:
    """A word read back from token audio, with its time span in seconds."""

    word: str
    start: float
    end: float


def _words(words: Iterable[str] | str) -> list[str]:
    items = words.split() if isinstance(words, str) else list(words)
    for item in items:
        if not item or any(ch.isspace() for ch in item):
            raise ValueError(f"token words must be non-empty and without spaces: {item!r}")
    return items


def _pcm16(words: list[str], rate: int, gap: float, lead: float, trail: float) -> array.array[int]:
    symbol = max(2, round(rate * SYMBOL_SECONDS))
    samples = array.array("h", bytes(2 * round(rate * lead)))
    gap_samples = array.array("h", bytes(2 * max(symbol, round(rate * gap))))
    for index, word in enumerate(words):
        if index:
            samples.extend(gap_samples)
        sign = 1
        for byte in word.encode("utf-8"):
            for nibble in (byte >> 4, byte & 0x0F):
                samples.extend([sign * (LEVEL_BASE + nibble * LEVEL_STEP)] * symbol)
                sign = -sign
    samples.extend(array.array("h", bytes(2 * round(rate * trail))))
    return samples


def _to_bytes(samples: array.array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _encode_pcm(pcm16: bytes, encoding: Encoding) -> bytes:
    if encoding is Encoding.LINEAR16:
        return pcm16
    if encoding is Encoding.MULAW:
        return linear16_to_mulaw(pcm16)
    if encoding is Encoding.ALAW:
        return linear16_to_alaw(pcm16)
    if encoding is Encoding.LINEAR32:
        source = array.array("h")
        source.frombytes(pcm16)
        wide = array.array("i", (value << 16 for value in source))
        return _to_bytes(wide) if sys.byteorder == "little" else wide.tobytes()  # pragma: no branch
    raise ValueError(f"{encoding.value} is not a PCM encoding")


def encode(
    words: Iterable[str] | str,
    *,
    encoding: Encoding | str = Encoding.LINEAR16,
    sample_rate: int = 16000,
    gap: float = 0.1,
    lead: float = 0.0,
    trail: float = 0.0,
) -> bytes:
    """Token audio for ``words`` (a list, or one string split on spaces).

    ``gap`` seconds of silence separate words; ``lead`` and ``trail`` add
    silence before and after. For ``opus`` this is the packets joined (use
    :func:`opus_packets` to send them one by one, as raw Opus requires).
    """
    encoding = Encoding(encoding)
    items = _words(words)
    if encoding is Encoding.OPUS:
        return b"".join(opus_packets(items, gap=gap, lead=lead, trail=trail))
    if encoding is Encoding.OGG_OPUS:
        return ogg_opus_stream(items, gap=gap, lead=lead, trail=trail)
    return _encode_pcm(_to_bytes(_pcm16(items, sample_rate, gap, lead, trail)), encoding)


def silence(
    seconds: float, *, encoding: Encoding | str = Encoding.LINEAR16, sample_rate: int = 16000
) -> bytes:
    """``seconds`` of silence in ``encoding`` (PCM and G.711 only)."""
    encoding = Encoding(encoding)
    data = encoding.silence(sample_rate, seconds)
    if data is None:
        raise ValueError(f"{encoding.value} has no byte-level silence; use opus_packets([])")
    return data


def opus_packets(
    words: Iterable[str] | str, *, gap: float = 0.1, lead: float = 0.0, trail: float = 0.0
) -> list[bytes]:
    """Token audio as 20 ms Opus-framed packets (see the module documentation)."""
    pcm = _to_bytes(_pcm16(_words(words), OPUS_TOKEN_RATE, gap, lead, trail))
    frame = round(OPUS_TOKEN_RATE * OPUS_FRAME_SECONDS) * 2
    if len(pcm) % frame:
        pcm += bytes(frame - len(pcm) % frame)
    return [
        bytes([OPUS_TOC]) + linear16_to_mulaw(pcm[i : i + frame]) for i in range(0, len(pcm), frame)
    ]


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packet: bytes, *, granule: int, sequence: int, flags: int, serial: int) -> bytes:
    segments = [255] * (len(packet) // 255) + [len(packet) % 255]
    header = struct.pack(
        "<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0, len(segments)
    )
    page = header + bytes(segments) + packet
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus_stream(
    words: Iterable[str] | str,
    *,
    gap: float = 0.1,
    lead: float = 0.0,
    trail: float = 0.0,
    serial: int = 0x70756C73,
) -> bytes:
    """Token audio as an Ogg Opus stream: headers, then one packet per page."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 0, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 5) + b"pulse" + struct.pack("<I", 0)
    pages = [
        _ogg_page(head, granule=0, sequence=0, flags=0x02, serial=serial),
        _ogg_page(tags, granule=0, sequence=1, flags=0, serial=serial),
    ]
    packets = opus_packets(words, gap=gap, lead=lead, trail=trail)
    for index, packet in enumerate(packets):
        last = index == len(packets) - 1
        pages.append(
            _ogg_page(
                packet,
                granule=960 * (index + 1),
                sequence=index + 2,
                flags=0x04 if last else 0,
                serial=serial,
            )
        )
    return b"".join(pages)


class TokenDecoder:
    """Reads words back from token audio fed in chunks of any size.

    ``feed`` returns the words completed by that chunk; ``end_word`` closes a
    word in progress (the emulator does this on finalize and close). Times are
    seconds from the first byte fed.
    """

    def __init__(
        self, encoding: Encoding | str = Encoding.LINEAR16, sample_rate: int = 16000
    ) -> None:
        self.encoding = Encoding(encoding)
        self._wire = WireSamples(self.encoding, sample_rate)
        self.rate = self._wire.rate
        self._symbol = max(2, round(self.rate * SYMBOL_SECONDS))
        self._samples = 0  # samples seen
        self._run_sign = 0  # 0: silence
        self._run_length = 0
        self._run_total = 0
        self._nibbles: list[int] = []
        self._word_start = 0
        self._word_end = 0

    @property
    def seconds(self) -> float:
        """Audio time read so far."""
        return self._samples / self.rate

    def feed(self, data: bytes) -> list[DecodedWord]:
        return list(self._feed_samples(self._wire.feed(data)))

    def end_word(self) -> list[DecodedWord]:
        """Close the word in progress, if any."""
        words = list(self._close_run())
        word = self._finish_word()
        return words + ([word] if word else [])

    def _feed_samples(self, samples: array.array[int]) -> Iterator[DecodedWord]:
        half = self._symbol // 2
        for value in samples:
            sign = 0 if -SILENCE_BELOW < value < SILENCE_BELOW else (1 if value > 0 else -1)
            if sign == self._run_sign:
                self._run_length += 1
                self._run_total += abs(value)
            else:
                yield from self._close_run()
                self._run_sign = sign
                self._run_length = 1
                self._run_total = abs(value)
            self._samples += 1
            if sign == 0 and self._run_length == half and self._nibbles:
                word = self._finish_word()
                if word:
                    yield word

    def _close_run(self) -> Iterator[DecodedWord]:
        if self._run_sign == 0 or self._run_length < self._symbol // 2:
            return
        level = self._run_total / self._run_length
        nibble = min(15, max(0, round((level - LEVEL_BASE) / LEVEL_STEP)))
        if not self._nibbles:
            self._word_start = self._samples - self._run_length
        self._nibbles.append(nibble)
        self._word_end = self._samples
        self._run_length = 0
        yield from ()

    def _finish_word(self) -> DecodedWord | None:
        nibbles, self._nibbles = self._nibbles, []
        if len(nibbles) < 2:
            return None
        raw = bytes((nibbles[i] << 4) | nibbles[i + 1] for i in range(0, len(nibbles) - 1, 2))
        text = raw.decode("utf-8", errors="replace")
        return DecodedWord(text, self._word_start / self.rate, self._word_end / self.rate)
