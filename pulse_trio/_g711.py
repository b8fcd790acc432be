"""G.711 mu-law and a-law, both directions (ITU-T G.711; the classic segment tables).

``audioop`` did this but is deprecated and gone from Python 3.13.
"""

from __future__ import annotations

import array
import sys

__all__ = ["alaw_to_linear16", "linear16_to_alaw", "linear16_to_mulaw", "mulaw_to_linear16"]

_BIAS = 0x84
_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _ulaw_from_sample(sample: int) -> int:
    sign = 0
    if sample < 0:
        sample = -sample
        sign = 0x80
    sample = min(sample, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _sample_from_ulaw(value: int) -> int:
    value = ~value & 0xFF
    exponent = (value >> 4) & 0x07
    sample = ((((value & 0x0F) << 3) + _BIAS) << exponent) - _BIAS
    return -sample if value & 0x80 else sample


def _alaw_from_sample(sample: int) -> int:
    sample >>= 3
    if sample >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        sample = -sample - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if sample <= end), None)
    if segment is None:
        return 0x7F ^ mask
    value = segment << 4
    value |= (sample >> 1) & 0x0F if segment < 2 else (sample >> segment) & 0x0F
    return value ^ mask


def _sample_from_alaw(value: int) -> int:
    value ^= 0x55
    magnitude = (value & 0x0F) << 4
    segment = (value & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    elif segment == 1:
        magnitude += 0x108
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if value & 0x80 else -magnitude


# Tables indexed by the unsigned 16-bit value of a sample, and by the G.711 byte.
_ULAW_ENCODE = bytes(_ulaw_from_sample(i - 65536 if i >= 32768 else i) for i in range(65536))
_ALAW_ENCODE = bytes(_alaw_from_sample(i - 65536 if i >= 32768 else i) for i in range(65536))
_ULAW_DECODE = array.array("h", (_sample_from_ulaw(i) for i in range(256)))
_ALAW_DECODE = array.array("h", (_sample_from_alaw(i) for i in range(256)))


def _unsigned(pcm: bytes) -> array.array[int]:
    samples = array.array("H")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":  # pragma: no cover - little-endian machines only here
        samples.byteswap()
    return samples


def linear16_to_mulaw(pcm: bytes) -> bytes:
    """Little-endian signed 16-bit samples to mu-law bytes."""
    table = _ULAW_ENCODE
    return bytes(table[value] for value in _unsigned(pcm))


def linear16_to_alaw(pcm: bytes) -> bytes:
    """Little-endian signed 16-bit samples to a-law bytes."""
    table = _ALAW_ENCODE
    return bytes(table[value] for value in _unsigned(pcm))


def _expand(data: bytes, table: array.array[int]) -> bytes:
    samples = array.array("h", (table[value] for value in data))
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    return samples.tobytes()


def mulaw_to_linear16(data: bytes) -> bytes:
    """mu-law bytes to little-endian signed 16-bit samples."""
    return _expand(data, _ULAW_DECODE)


def alaw_to_linear16(data: bytes) -> bytes:
    """a-law bytes to little-endian signed 16-bit samples."""
    return _expand(data, _ALAW_DECODE)
