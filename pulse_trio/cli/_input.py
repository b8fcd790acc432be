"""Audio input for ``pulse transcribe``: a file or stdin, ready for the wire.

:func:`open_source` reads just enough of the input to know what it is (a WAV
file, an Ogg Opus stream, another audio format it names, or raw samples
described by ``--encoding``/``--sample-rate``) and returns an
:class:`AudioSource` whose ``read`` gives wire-ready chunks with their
duration. Reading blocks; the command calls it from a worker thread.
Everything wrong with the input is an :class:`InputError` whose message is a
complete sentence naming the input.
"""

from __future__ import annotations

import array
import os
import stat
import struct
import sys
from typing import BinaryIO, Final

import attrs

from pulse_core import SAMPLE_RATES, OggPageSplitter

from ._args import RAW_ENCODINGS
from ._wav import (
    FORMAT_ALAW,
    FORMAT_MULAW,
    FORMAT_PCM,
    Converter,
    WavError,
    WavFormat,
    read_header,
)

__all__ = ["AudioSource", "InputError", "SilenceDetector", "open_source"]

_RATES: Final = ", ".join(map(str, SAMPLE_RATES))
_OPUS_RATE: Final = 48000
_CONVERT_HINT: Final = "convert it first, e.g.: ffmpeg -i {name} -ar 16000 -ac 1 out.wav"


#: --encoding, --sample-rate and --channels as given (``None``: not given).
_Given = tuple[str | None, int | None, int | None]


class InputError(Exception):
    """The input cannot be transcribed; the message says why, naming it."""


def _rate_error(label: str, rate: int) -> InputError:
    return InputError(
        f"{label}: {rate} Hz is not a sample rate Pulse accepts ({_RATES}); "
        f"resample it, e.g.: ffmpeg -i {label if label != 'stdin' else 'IN'} -ar 16000 out.wav"
    )


def _sniff(head: bytes) -> str | None:
    """Name a container or codec pulse does not read, from its first bytes."""
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "WebM/Matroska"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head.startswith(b"caff"):
        return "CAF"
    if head.startswith(b".snd"):
        return "Sun AU"
    return None


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


@attrs.frozen
class _Origin:
    label: str
    stream: BinaryIO
    streaming: bool

    def size(self) -> int | None:
        """Bytes in the input, for a regular file."""
        if self.streaming:
            return None
        try:
            return os.fstat(self.stream.fileno()).st_size
        except (OSError, AttributeError, ValueError):
            return None


class AudioSource:
    """Audio ready to send: ``encoding``, ``sample_rate`` and timed chunks."""

    #: Seconds of input audio in the whole input, when known.
    duration: float | None = None

    def __init__(
        self,
        *,
        label: str,
        stream: BinaryIO,
        streaming: bool,
        head: bytes,
        encoding: str,
        sample_rate: int,
        description: str,
    ) -> None:
        self.label = label
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.description = description
        self.streaming = streaming
        self.eof = False
        self._stream = stream
        self._head = head

    def read(self, seconds: float) -> tuple[bytes, float]:
        """Up to about ``seconds`` of audio and its duration; sets ``eof`` at the end.

        From a file this blocks until the audio is read; from stdin it returns
        what has arrived (possibly nothing yet).
        """
        raise NotImplementedError

    def _raw(self, size: int) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        if self.streaming:
            read1 = getattr(self._stream, "read1", None)
            if read1 is not None:
                return bytes(read1(size))
        return self._stream.read(size)

    def close(self) -> None:
        self._stream.close()  # stdin's descriptor stays open (closefd=False)


class PcmSource(AudioSource):
    """PCM or G.711 samples, converted to mono on the wire format."""

    def __init__(
        self,
        origin: _Origin,
        *,
        converter: Converter,
        rate: int,
        remaining: int | None,
        head: bytes,
        description: str,
    ) -> None:
        super().__init__(
            label=origin.label,
            stream=origin.stream,
            streaming=origin.streaming,
            head=head,
            encoding=converter.encoding,
            sample_rate=rate,
            description=description,
        )
        self.converter = converter
        self._remaining = remaining
        self._out_rate = converter.sample_width * rate  # wire bytes per second

    def read(self, seconds: float) -> tuple[bytes, float]:
        frame = self.converter.frame
        want = max(frame, round(seconds * self.sample_rate) * frame)
        if self._remaining is not None:
            want = min(want, self._remaining)
        data = self._raw(want) if want else b""
        if not data:
            self.eof = True
            return b"", 0.0
        if self._remaining is not None:
            self._remaining -= len(data)
        out = self.converter.feed(data)
        return out, len(out) / self._out_rate


class OggOpusSource(AudioSource):
    """An Ogg Opus stream, passed through page by page (timed by granule position)."""

    def __init__(self, origin: _Origin, *, head: bytes, sample_rate: int) -> None:
        super().__init__(
            label=origin.label,
            stream=origin.stream,
            streaming=origin.streaming,
            head=head,
            encoding="ogg_opus",
            sample_rate=sample_rate,
            description="Ogg Opus",
        )
        self._pages = OggPageSplitter()
        self._headers_sent = False

    def read(self, seconds: float) -> tuple[bytes, float]:
        out = bytearray()
        ticks = 0
        while ticks < seconds * _OPUS_RATE:
            data = self._raw(4096)
            if not data:
                self.eof = True
                if not self._headers_sent:
                    out += self._pages.headers
                out += self._pages.flush()
                break
            for page, page_ticks in self._pages.feed(data):
                if not self._headers_sent:
                    out += self._pages.headers
                    self._headers_sent = True
                out += page
                ticks += page_ticks
            if self.streaming:
                break
        return bytes(out), ticks / _OPUS_RATE


def _ogg_duration(stream: BinaryIO) -> float | None:
    """The last granule position of a seekable Ogg file, in seconds."""
    try:
        here = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(max(0, end - 65536))
        tail = stream.read()
        stream.seek(here)
    except OSError:
        return None
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) < at + 14:
        return None
    granule: int = struct.unpack_from("<q", tail, at + 6)[0]
    return granule / _OPUS_RATE if granule > 0 else None


def open_source(
    path: str,
    *,
    encoding: str | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> AudioSource:
    """Open ``path`` (``-`` is stdin) and find out what audio it holds.

    ``encoding``, ``sample_rate`` and ``channels`` describe raw input; for a
    WAV or Ogg input they must agree with its header, if given.
    """
    if path == "-":
        label = "stdin"
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            raise InputError(
                "stdin is closed: pipe audio into `pulse transcribe -`, or give a file"
            ) from None
        if os.isatty(fd):
            raise InputError(
                "stdin is a terminal: pipe audio into `pulse transcribe -`, or give a file"
            )
        # The descriptor itself, unbuffered: a worker thread waiting in a read of
        # sys.stdin.buffer holds that reader's lock, and the interpreter aborts at
        # exit when it cannot take the lock to close stdin (Ctrl-C while the
        # producer is quiet). A raw read holds no lock.
        stream: BinaryIO = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        streaming = True
    else:
        label = path
        try:
            # Unbuffered, like stdin: a named pipe can leave a read waiting too.
            stream = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by AudioSource.close
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror or exc}") from None
        try:
            if stat.S_ISDIR(os.fstat(stream.fileno()).st_mode):
                raise InputError(f"{path}: is a directory")
        except InputError:
            stream.close()
            raise
        streaming = not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    try:
        return _open(
            stream, label, streaming, encoding=encoding, sample_rate=sample_rate, channels=channels
        )
    except (InputError, OSError) as exc:
        stream.close()
        if isinstance(exc, OSError):
            raise InputError(f"{label}: {exc.strerror or exc}") from None
        raise


def _open(
    stream: BinaryIO,
    label: str,
    streaming: bool,
    *,
    encoding: str | None,
    sample_rate: int | None,
    channels: int | None,
) -> AudioSource:
    head = _read_up_to(stream, 12)
    if not head:
        raise InputError(f"{label}: empty input, no audio")
    origin = _Origin(label, stream, streaming)
    given: _Given = (encoding, sample_rate, channels)
    hint = _CONVERT_HINT.format(name=label if label != "stdin" else "IN")
    if head[:4] in (b"RIFF", b"RF64", b"BW64", b"RIFX"):
        try:
            fmt = read_header(stream, head)
        except WavError as exc:
            raise InputError(f"{label}: {exc}") from None
        return _wav_source(fmt, origin, given)
    if head.startswith(b"OggS"):
        head += _read_up_to(stream, 128)
        at = head.find(b"OpusHead")
        if at < 0:
            kind = "Vorbis" if b"vorbis" in head else "FLAC" if b"FLAC" in head else "non-Opus"
            raise InputError(
                f"{label}: Ogg {kind} audio is not supported (pulse reads WAV and Ogg Opus); "
                + hint
            )
        _check_given(label, "Ogg Opus", given, ("ogg_opus", None, None))
        rate = struct.unpack_from("<I", head, at + 12)[0] if len(head) >= at + 16 else 0
        source = OggOpusSource(
            origin, head=head, sample_rate=rate if rate in SAMPLE_RATES else _OPUS_RATE
        )
        if not streaming:
            source.duration = _ogg_duration(stream)
        return source
    other = _sniff(head)
    if other is not None:
        raise InputError(
            f"{label}: {other} audio is not supported (pulse reads WAV: PCM, float, a-law, "
            "mu-law; and Ogg Opus); " + hint
        )
    if encoding is None:
        raise InputError(
            f"{label}: not a WAV or Ogg Opus file (no RIFF or OggS header); for raw audio "
            "give --encoding (and --sample-rate, --channels)"
        )
    return _raw_source(head, origin, encoding, sample_rate, channels or 1)


def _check_given(
    label: str, kind: str, given: _Given, actual: tuple[str | None, int | None, int | None]
) -> None:
    problems = [
        f"--{name} {value}"
        for name, value, real in zip(
            ("encoding", "sample-rate", "channels"), given, actual, strict=True
        )
        if value is not None and value != real
    ]
    if problems:
        raise InputError(
            f"{label}: {' and '.join(problems)} do not match this {kind} input; its header "
            "gives the format (those options are for raw audio, and pulse does not resample)"
        )


def _wav_source(fmt: WavFormat, origin: _Origin, given: _Given) -> AudioSource:
    label = origin.label
    _check_given(label, "WAV", given, (fmt.source_encoding, fmt.sample_rate, fmt.channels))
    if fmt.sample_rate not in SAMPLE_RATES:
        raise _rate_error(label, fmt.sample_rate)
    converter = Converter(fmt.tag, fmt.width, fmt.channels, fmt.sample_rate)
    parts = [f"WAV, {fmt.name}"]
    if fmt.channels > 1:
        parts.append(f"{fmt.channels} channels mixed to mono")
    if fmt.source_encoding != converter.encoding:
        parts.append(f"sent as {converter.encoding}")
    parts.append(f"{fmt.sample_rate} Hz")
    source = PcmSource(
        origin,
        converter=converter,
        rate=fmt.sample_rate,
        remaining=fmt.data_size,
        head=b"",
        description=", ".join(parts),
    )
    size = origin.size()
    if size is not None:
        available = max(0, size - fmt.data_offset)
        if fmt.data_size is not None:
            available = min(available, fmt.data_size)
        frames = available // fmt.block_align
        source.duration = frames / fmt.sample_rate
        if frames == 0:
            raise InputError(f"{label}: the WAV file holds no audio (its data chunk is empty)")
    return source


def _raw_source(
    head: bytes, origin: _Origin, encoding: str, sample_rate: int | None, channels: int
) -> AudioSource:
    label = origin.label
    if encoding == "opus":
        raise InputError(
            f"{label}: raw Opus packets cannot be read from a byte stream (they carry no "
            "framing); give an Ogg Opus stream (--encoding ogg_opus)"
        )
    if encoding == "ogg_opus":
        raise InputError(f"{label}: --encoding ogg_opus, but this is not an Ogg stream")
    if encoding not in RAW_ENCODINGS:  # pragma: no cover - argparse checks the choices
        raise InputError(f"{label}: unknown encoding {encoding!r}")
    telephony = encoding in ("alaw", "mulaw")
    rate = sample_rate if sample_rate is not None else (8000 if telephony else 16000)
    if rate not in SAMPLE_RATES:
        raise _rate_error(label, rate)
    if channels < 1:
        raise InputError(f"{label}: --channels must be at least 1")
    tag = {"alaw": FORMAT_ALAW, "mulaw": FORMAT_MULAW}.get(encoding, FORMAT_PCM)
    width = 4 if encoding == "linear32" else 2 if encoding == "linear16" else 1
    converter = Converter(tag, width, channels, rate)
    parts = [f"raw {encoding}"]
    if channels > 1:
        parts.append(f"{channels} channels mixed to mono")
    if converter.encoding != encoding:
        parts.append(f"sent as {converter.encoding}")
    parts.append(f"{rate} Hz")
    source = PcmSource(
        origin,
        converter=converter,
        rate=rate,
        remaining=None,
        head=head,
        description=", ".join(parts),
    )
    size = origin.size()
    if size is not None:
        source.duration = size // converter.frame / rate
    return source


class SilenceDetector:
    """A simple energy detector standing in for a voice agent's VAD.

    ``split`` cuts a wire chunk where speech starts (``"start"``) and where it
    has been quiet for ``silence`` seconds after speech (``"stop"``): the
    command sends each piece, then tells the session. A 10 ms frame is quiet
    when no sample reaches ``threshold`` (16-bit scale, about -30 dBFS).
    """

    def __init__(
        self, encoding: str, sample_rate: int, silence: float, threshold: int = 1000
    ) -> None:
        if encoding not in ("linear16", "linear32", "alaw", "mulaw"):
            raise ValueError(f"{encoding} audio cannot be measured here")
        self._encoding = encoding
        self._width = {"linear16": 2, "linear32": 4}.get(encoding, 1)
        self._frame = max(1, sample_rate // 100)
        self._needed = round(silence * sample_rate)
        self._threshold = threshold << 16 if encoding == "linear32" else threshold
        self._speaking = False
        self._quiet = 0
        self._rest = 0  # samples of the current frame already seen

    def _samples(self, data: bytes) -> array.array[int]:
        if self._encoding in ("alaw", "mulaw"):
            from pulse_trio._g711 import (  # noqa: PLC0415 - its tables take 0.15 s to build
                alaw_to_linear16,
                mulaw_to_linear16,
            )

            data = (alaw_to_linear16 if self._encoding == "alaw" else mulaw_to_linear16)(data)
            code = "h"
        else:
            code = "h" if self._width == 2 else "i"
        samples = array.array(code)
        samples.frombytes(data[: len(data) - len(data) % samples.itemsize])
        if sys.byteorder == "big":  # pragma: no cover
            samples.byteswap()
        return samples

    def split(self, data: bytes) -> list[tuple[bytes, str | None]]:
        """``data`` cut into pieces, each followed by what happened after it."""
        samples = self._samples(data)
        cuts: list[tuple[int, str]] = []
        index = 0
        total = len(samples)
        frame = self._frame
        while index < total:
            step = min(frame - self._rest, total - index)
            piece = samples[index : index + step]
            loud = max(piece) >= self._threshold or -min(piece) >= self._threshold
            index += step
            self._rest = (self._rest + step) % frame
            if loud:
                self._quiet = 0
                if not self._speaking:
                    self._speaking = True
                    cuts.append((index - step, "start"))
            elif self._speaking:
                self._quiet += step
                if self._quiet >= self._needed:
                    self._speaking = False
                    cuts.append((index, "stop"))
        pieces: list[tuple[bytes, str | None]] = []
        begin = 0
        for at, what in cuts:
            end = at * self._width
            pieces.append((data[begin:end], what))
            begin = end
        pieces.append((data[begin:], None))
        return pieces
