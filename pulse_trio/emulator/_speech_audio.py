"""Any audio the service takes, as 16 kHz mono float samples for a speech model.

Pulse takes six encodings at six sample rates (PROTOCOL.md §2); speech models
want one rate. ``ModelAudio`` decodes each chunk as it arrives (G.711 through
the project's own tables, Opus through libavcodec) and resamples it with
libswresample, both from PyAV, which faster-whisper already depends on: a
well-kept, stateful resampler, so chunk boundaries leave no clicks and no
samples are lost or doubled between chunks.

Needs the ``local`` extra (numpy and PyAV); imported only by the speech engine.
"""

from __future__ import annotations

import struct
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from pulse_core import Encoding, OggPageSplitter
from pulse_trio._g711 import alaw_to_linear16, mulaw_to_linear16

__all__ = ["MODEL_RATE", "ModelAudio"]

#: The rate speech models are trained on.
MODEL_RATE = 16000
#: Opus always decodes at 48 kHz (RFC 6716 section 2).
_OPUS_RATE = 48000

Samples = npt.NDArray[np.float32]


class ModelAudio:
    """Turns one connection's audio, chunk by chunk, into 16 kHz float samples.

    ``seconds`` counts the audio received in the connection's own rate, so
    times given back to the client are connection times (PROTOCOL.md §4).
    """

    def __init__(self, encoding: Encoding, sample_rate: int) -> None:
        self.encoding = encoding
        self.sample_rate = _OPUS_RATE if encoding.compressed else sample_rate
        self._pending = b""  # a partial PCM sample carried to the next chunk
        self._received = 0  # samples at self.sample_rate
        self._ogg = _OggPackets() if encoding is Encoding.OGG_OPUS else None
        self._opus: Any = av.CodecContext.create("opus", "r") if encoding.compressed else None
        self._resampler: Any = (
            None
            if self.sample_rate == MODEL_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
        )

    @property
    def seconds(self) -> float:
        """Audio time received so far, in seconds."""
        return self._received / self.sample_rate

    def feed(self, data: bytes) -> Samples:
        """The 16 kHz samples this chunk completes (the resampler may hold a few back)."""
        if self.encoding.compressed:
            return self._resample_frames(self._decode_opus(data))
        pcm = self._pcm16(data)
        self._received += len(pcm)
        if self._resampler is None:
            return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
        if not len(pcm):
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        return self._resample_frames([frame])

    def flush(self) -> Samples:
        """The samples the resampler still holds, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resample_frames([None])
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
        return tail

    # -- internals -------------------------------------------------------------

    def _pcm16(self, data: bytes) -> npt.NDArray[np.int16]:
        data = self._pending + data
        width = self.encoding.sample_width or 1
        usable = len(data) - len(data) % width
        self._pending = data[usable:]
        data = data[:usable]
        if self.encoding is Encoding.MULAW:
            data = mulaw_to_linear16(data)
        elif self.encoding is Encoding.ALAW:
            data = alaw_to_linear16(data)
        elif self.encoding is Encoding.LINEAR32:
            wide = np.frombuffer(data, "<i4")
            return (wide >> 16).astype(np.int16)
        return np.frombuffer(data, "<i2").astype(np.int16)

    def _decode_opus(self, data: bytes) -> list[Any]:
        packets = self._ogg.feed(data) if self._ogg is not None else [data]
        frames: list[Any] = []
        for packet in packets:
            if not packet:
                continue
            try:
                decoded = self._opus.decode(av.Packet(packet))
            except av.error.FFmpegError:
                continue  # a damaged packet is lost audio, as on the service
            for frame in decoded:
                self._received += frame.samples
                frames.append(frame)
        return frames

    def _resample_frames(self, frames: list[Any]) -> Samples:
        parts: list[Samples] = []
        for frame in frames:
            if self._resampler is None:
                parts.append(frame.to_ndarray().reshape(-1).astype(np.float32))
                continue
            parts.extend(
                out.to_ndarray().reshape(-1).astype(np.float32)
                for out in self._resampler.resample(frame)
            )
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts)


class _OggPackets:
    """Opus packets out of an Ogg stream fed in chunks of any size (RFC 3533, RFC 7845).

    ``OggPageSplitter`` keeps the OpusHead and OpusTags header pages aside, so
    every page it returns carries audio. A packet may span pages: a lacing
    value of 255 says it continues.
    """

    def __init__(self) -> None:
        self._pages = OggPageSplitter()
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        for page, _ticks in self._pages.feed(data):
            if page.startswith(b"OggS") and len(page) >= 27:
                packets.extend(self._packets(page))
        return packets

    def _packets(self, page: bytes) -> list[bytes]:
        (count,) = struct.unpack_from("<B", page, 26)
        lacing = page[27 : 27 + count]
        position = 27 + count
        packets: list[bytes] = []
        for value in lacing:
            self._partial += page[position : position + value]
            position += value
            if value < 255:
                packets.append(self._partial)
                self._partial = b""
        return packets
