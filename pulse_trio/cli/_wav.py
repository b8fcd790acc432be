"""WAV headers and sample conversion, for ``pulse transcribe``.

Python's ``wave`` module reads integer PCM only, and telephone recordings are
usually a-law or mu-law, so the RIFF chunks are parsed here: ``RIFF``/``RF64``
(and ``BW64``) files, ``fmt `` (plain or ``WAVE_FORMAT_EXTENSIBLE``), ``ds64``
and ``data``; other chunks are skipped, odd-sized chunks are padded.

:class:`Converter` turns the samples of the ``data`` chunk into what the
service takes, keeping partial frames between calls (so it works on a stream):

* mono 16/32-bit PCM and mono 8 kHz G.711 go through untouched;
* 8-bit PCM becomes linear16, 24-bit PCM linear32, IEEE float linear16;
* G.711 with more channels or another rate is expanded to linear16;
* more than one channel is averaged to mono.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO, Final

import attrs

__all__ = [
    "FORMAT_ALAW",
    "FORMAT_FLOAT",
    "FORMAT_MULAW",
    "FORMAT_PCM",
    "Converter",
    "WavError",
    "WavFormat",
    "read_header",
]

FORMAT_PCM: Final = 0x0001
FORMAT_FLOAT: Final = 0x0003
FORMAT_ALAW: Final = 0x0006
FORMAT_MULAW: Final = 0x0007
FORMAT_EXTENSIBLE: Final = 0xFFFE
# KSDATAFORMAT_SUBTYPE_*: the format tag, then this fixed GUID tail.
_GUID_TAIL: Final = bytes.fromhex("000000001000800000aa00389b71")
_UNKNOWN_SIZES: Final = (0, 0xFFFFFFFF)
_MAX_FMT: Final = 1 << 16
# Names of formats people meet, for the "not supported" message.
_FORMAT_NAMES: Final = {
    0x0002: "Microsoft ADPCM",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0040: "G.721 ADPCM",
    0x0050: "MPEG audio",
    0x0055: "MP3",
    0x0092: "Dolby AC-3",
    0x0161: "Windows Media Audio",
    0x1610: "AAC",
    0xF1AC: "FLAC",
}
_WIDTHS: Final = {
    FORMAT_PCM: (1, 2, 3, 4),
    FORMAT_FLOAT: (4, 8),
    FORMAT_ALAW: (1,),
    FORMAT_MULAW: (1,),
}
_LITTLE: Final = sys.byteorder == "little"
_FLIP_SIGN: Final = bytes(value ^ 0x80 for value in range(256))


class WavError(ValueError):
    """The file is not a WAV file pulse can read; the message says why."""


@attrs.frozen
class WavFormat:
    """What the ``fmt `` chunk says, and where the samples are."""

    tag: int  # after resolving WAVE_FORMAT_EXTENSIBLE
    channels: int
    sample_rate: int
    block_align: int
    bits: int
    #: Bytes of samples, or ``None`` when the header does not say (a stream).
    data_size: int | None
    #: Offset of the first sample from the start of the file.
    data_offset: int

    @property
    def width(self) -> int:
        """Bytes per sample (the container size)."""
        return self.block_align // self.channels

    @property
    def name(self) -> str:
        if self.tag == FORMAT_PCM:
            return f"{self.bits}-bit PCM"
        if self.tag == FORMAT_FLOAT:
            return f"{8 * self.width}-bit float"
        return "a-law" if self.tag == FORMAT_ALAW else "mu-law"

    @property
    def source_encoding(self) -> str | None:
        """The Pulse encoding the samples are in as stored, if there is one."""
        if self.tag == FORMAT_PCM and self.width in (2, 4):
            return "linear16" if self.width == 2 else "linear32"
        if self.tag == FORMAT_ALAW:
            return "alaw"
        if self.tag == FORMAT_MULAW:
            return "mulaw"
        return None


class _Reader:
    """Reads a header from a stream, counting bytes, after bytes already read."""

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.offset = 0

    def read(self, size: int) -> bytes:
        out = self._head[:size]
        self._head = self._head[size:]
        while len(out) < size:
            more = self._stream.read(size - len(out))
            if not more:
                break
            out += more
        self.offset += len(out)
        return out

    def exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) < size:
            raise WavError(f"the file ends inside the {what} (truncated or corrupt)")
        return data

    def skip(self, size: int, what: str) -> None:
        if not self._head and _seekable(self._stream):
            here = self._stream.tell()
            end = self._stream.seek(0, 2)
            if end - here < size:
                raise WavError(f"the file ends inside the {what} (truncated or corrupt)")
            self._stream.seek(here + size)
            self.offset += size
            return
        while size:
            step = min(size, 1 << 16)
            self.exact(step, what)
            size -= step


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def read_header(stream: BinaryIO, head: bytes = b"") -> WavFormat:
    """Parse a WAV header from ``stream``, leaving it at the first sample.

    ``head`` holds bytes already read from the start of the stream (to tell
    the file type). Raises :class:`WavError` for anything pulse cannot read.
    """
    reader = _Reader(stream, head)
    riff = reader.read(12)
    if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64", b"BW64", b"RIFX"):
        raise WavError("not a WAV file (no RIFF header)")
    if riff[:4] == b"RIFX":
        raise WavError("big-endian WAV (RIFX) is not supported")
    if riff[8:12] != b"WAVE":
        kind = riff[8:12].decode("latin-1").strip() or "?"
        raise WavError(f"a RIFF file of type {kind!r}, not WAVE audio")
    fmt: tuple[int, int, int, int, int] | None = None
    big_data: int | None = None  # from ds64 (RF64)
    while True:
        header = reader.read(8)
        if len(header) < 8:
            if fmt is None:
                raise WavError("no fmt chunk: the header is truncated or corrupt")
            raise WavError("no data chunk: the file is truncated or corrupt")
        chunk, size = header[:4], struct.unpack_from("<I", header, 4)[0]
        name = chunk.decode("latin-1")
        if chunk == b"fmt ":
            if size > _MAX_FMT:
                raise WavError(f"the fmt chunk claims {size} bytes (corrupt header)")
            fmt = _parse_fmt(reader.exact(size, "fmt chunk"))
        elif chunk == b"ds64":
            body = reader.exact(size, "ds64 chunk")
            if len(body) >= 16:
                big_data = struct.unpack_from("<Q", body, 8)[0]
        elif chunk == b"data":
            if fmt is None:
                raise WavError("the data chunk comes before the fmt chunk (corrupt header)")
            tag, channels, rate, align, bits = fmt
            data_size: int | None = size
            if size == 0xFFFFFFFF and big_data is not None:
                data_size = big_data
            elif size in _UNKNOWN_SIZES:
                data_size = None  # written to a pipe: the samples run to the end
            return WavFormat(tag, channels, rate, align, bits, data_size, reader.offset)
        else:
            reader.skip(size, f"{name!r} chunk")
        if size & 1 and chunk != b"data":
            reader.read(1)  # chunks are padded to an even size


def _parse_fmt(body: bytes) -> tuple[int, int, int, int, int]:
    if len(body) < 16:
        raise WavError(f"the fmt chunk is {len(body)} bytes, too short (corrupt header)")
    tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise WavError("WAVE_FORMAT_EXTENSIBLE without its extension (corrupt header)")
        guid = body[24:40]
        if guid[4:] != _GUID_TAIL[2:] or guid[2:4] != b"\x00\x00":
            raise WavError(
                f"WAVE_FORMAT_EXTENSIBLE with an unknown sub-format {guid.hex()} is not supported"
            )
        tag = struct.unpack_from("<H", guid)[0]
    if tag not in _WIDTHS:
        name = _FORMAT_NAMES.get(tag, "this")
        raise WavError(
            f"{name} audio (WAV format tag 0x{tag:04x}) is not supported: pulse reads PCM, "
            "IEEE float, a-law and mu-law WAV (convert it: ffmpeg -i IN -c:a pcm_s16le OUT.wav)"
        )
    if channels == 0:
        raise WavError("the fmt chunk says 0 channels (corrupt header)")
    if rate == 0:
        raise WavError("the fmt chunk says 0 Hz (corrupt header)")
    width, rest = divmod(align, channels)
    if rest or width not in _WIDTHS[tag] or not 0 < bits <= 8 * width:
        raise WavError(
            f"the fmt chunk is inconsistent ({channels} channels, {bits} bits, "
            f"{align}-byte frames): corrupt, or a sample size pulse does not read"
        )
    return tag, channels, rate, align, bits


def _ints(data: bytes | bytearray, code: str) -> array.array[int]:
    samples = array.array(code)
    samples.frombytes(data)
    if not _LITTLE:  # pragma: no cover - little-endian machines only here
        samples.byteswap()
    return samples


def _to_bytes(samples: array.array[int]) -> bytes:
    if not _LITTLE:  # pragma: no cover
        samples = array.array(samples.typecode, samples)
        samples.byteswap()
    return samples.tobytes()


def _floats(data: bytes, code: str) -> array.array[int]:
    values = array.array(code)
    values.frombytes(data)
    if not _LITTLE:  # pragma: no cover
        values.byteswap()
    return array.array(
        "h", [32767 if v >= 1.0 else -32768 if v <= -1.0 else int(v * 32768.0) for v in values]
    )


def _widen24(data: bytes) -> bytes:
    """24-bit samples to 32-bit ones (the low byte zero): lossless."""
    out = bytearray(len(data) // 3 * 4)
    out[1::4] = data[0::3]
    out[2::4] = data[1::3]
    out[3::4] = data[2::3]
    return bytes(out)


def _widen8(data: bytes) -> bytes:
    """Unsigned 8-bit samples to signed 16-bit ones."""
    out = bytearray(2 * len(data))
    out[1::2] = data.translate(_FLIP_SIGN)
    return bytes(out)


def _mix(samples: array.array[int], channels: int) -> array.array[int]:
    """Average interleaved channels to one."""
    if channels == 2:
        return array.array(
            samples.typecode,
            [(a + b) >> 1 for a, b in zip(samples[0::2], samples[1::2], strict=True)],
        )
    columns = [samples[c::channels] for c in range(channels)]
    return array.array(
        samples.typecode, [sum(frame) // channels for frame in zip(*columns, strict=True)]
    )


class Converter:
    """Samples as stored (``tag``, ``width``, ``channels``) to Pulse's wire format.

    ``encoding`` is what comes out. ``feed`` takes any number of bytes and
    returns the converted whole frames; a partial frame waits for the next call.
    """

    def __init__(self, tag: int, width: int, channels: int, sample_rate: int) -> None:
        self.channels = channels
        self.frame = width * channels
        self._rest = b""
        decode: Callable[[bytes], array.array[int]] | None = None
        if tag == FORMAT_PCM and width == 2:
            self.encoding = "linear16"
            if channels > 1:
                decode = lambda data: _ints(data, "h")  # noqa: E731
        elif tag == FORMAT_PCM and width == 4:
            self.encoding = "linear32"
            if channels > 1:
                decode = lambda data: _ints(data, "i")  # noqa: E731
        elif tag == FORMAT_PCM and width == 3:
            self.encoding = "linear32"
            decode = lambda data: _ints(_widen24(data), "i")  # noqa: E731
        elif tag == FORMAT_PCM:
            self.encoding = "linear16"
            decode = lambda data: _ints(_widen8(data), "h")  # noqa: E731
        elif tag == FORMAT_FLOAT:
            self.encoding = "linear16"
            code = "f" if width == 4 else "d"
            decode = lambda data: _floats(data, code)  # noqa: E731
        elif channels == 1 and sample_rate == 8000:
            self.encoding = "alaw" if tag == FORMAT_ALAW else "mulaw"
        else:
            # G.711 is 8 kHz mono on the wire: anything else goes as linear16.
            from pulse_trio._g711 import (  # noqa: PLC0415 - its tables take 0.15 s to build
                alaw_to_linear16,
                mulaw_to_linear16,
            )

            expand = alaw_to_linear16 if tag == FORMAT_ALAW else mulaw_to_linear16
            self.encoding = "linear16"
            decode = lambda data: _ints(expand(data), "h")  # noqa: E731
        self._decode = decode
        self.sample_width = 1 if self.encoding in ("alaw", "mulaw") else 2
        if self.encoding == "linear32":
            self.sample_width = 4

    @property
    def passthrough(self) -> bool:
        return self._decode is None

    def feed(self, data: bytes) -> bytes:
        if self._rest:
            data = self._rest + data
        usable = len(data) - len(data) % self.frame
        self._rest = data[usable:]
        if not usable:
            return b""
        whole = data[:usable] if usable < len(data) else data
        if self._decode is None:
            return whole
        samples = self._decode(whole)
        if self.channels > 1:
            samples = _mix(samples, self.channels)
        return _to_bytes(samples)

    @property
    def leftover(self) -> int:
        """Bytes of an unfinished frame held back."""
        return len(self._rest)
