"""The emulator's voice activity detector: sound and silence in the audio's own time.

The service decides ``speech_started``, ``speech_ended`` and the end of an
utterance from the audio itself, wherever one chunk of it ends and the next
begins: the same audio gives the same events, at the same connection times
(spec/PROTOCOL.md §4, voice activity), whether it comes in one frame or in a
thousand, fast or in real time. So does this: it reads every sample, and
reports each point of the audio where something happened, for
``ServerSession`` to put in order with the words.

A sample is sound when its magnitude reaches ``SILENCE_BELOW`` (the token
audio threshold, about -30 dBFS): speech starts at the first sound after a
silence, and a silence is a stretch without sound, timed from the end of the
last sound.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from pulse_core import Encoding

from ._samples import WireSamples
from .token_audio import SILENCE_BELOW

__all__ = ["Quiet", "Sound", "VoiceActivity"]

#: Samples examined at a time; a block of silence is skipped in one step.
_BLOCK_SECONDS = 0.01


@attrs.frozen
class Sound:
    """Sound began at ``at`` (seconds of audio) after a silence."""

    at: float


@attrs.frozen
class Quiet:
    """At ``at``, the silence that began at ``since`` had lasted ``after`` seconds
    (one of the detector's ``silences``, as it was given)."""

    at: float
    since: float
    after: float


class VoiceActivity:
    """Finds sound and silence in wire audio fed in chunks of any size.

    ``feed`` returns, in audio order, each :class:`Quiet` (a silence after
    sound reaching one of ``silences``, in seconds) and each :class:`Sound`
    (the first sound, and the first after a silence that reached the shortest
    of ``silences``) that the chunk completed. ``silences`` are longer than
    10 ms: shorter ones inside a 10 ms block could go unreported.
    """

    def __init__(
        self, encoding: Encoding | str, sample_rate: int, *, silences: Sequence[float]
    ) -> None:
        self._wire = WireSamples(encoding, sample_rate)
        self.rate = self._wire.rate
        # (samples, seconds as given), shortest first; each is reported once per silence.
        self._silences = sorted(
            {(max(1, round(seconds * self.rate)), seconds) for seconds in silences}
        )
        self._block = max(1, round(self.rate * _BLOCK_SECONDS))
        self._samples = 0  # samples read so far
        self._heard = False  # any sound yet
        self._last_sound = 0  # end of the last sound, in samples
        self._reported = 0  # how many of the silences this silence has reached

    @property
    def sounding(self) -> bool:
        """Whether the audio read so far ends in sound."""
        return self._heard and self._last_sound == self._samples

    @property
    def last_sound_end(self) -> float | None:
        """Where the last sound ended, in seconds, if there was any."""
        return self._last_sound / self.rate if self._heard else None

    def feed(self, data: bytes) -> list[Sound | Quiet]:
        samples = self._wire.feed(data)
        out: list[Sound | Quiet] = []
        block = self._block
        for begin in range(0, len(samples), block):
            piece = samples[begin : begin + block]
            base = self._samples
            if max(piece) < SILENCE_BELOW and -min(piece) < SILENCE_BELOW:
                self._silence(base + len(piece), out)
                continue
            first = next(i for i, v in enumerate(piece) if abs(v) >= SILENCE_BELOW)
            last = len(piece) - next(
                i for i, v in enumerate(reversed(piece)) if abs(v) >= SILENCE_BELOW
            )
            # The silence before the first sound may reach a length on its way.
            self._silence(base + first, out)
            if not self._heard or self._reported:
                out.append(Sound((base + first) / self.rate))
            # Silences inside a block are shorter than any length reported.
            self._heard = True
            self._last_sound = base + last
            self._reported = 0
            self._samples = base + len(piece)
        return out

    def _silence(self, upto: int, out: list[Sound | Quiet]) -> None:
        """The audio is silent up to sample ``upto``: report the lengths reached."""
        if self._heard:
            while self._reported < len(self._silences):
                length, seconds = self._silences[self._reported]
                reached = self._last_sound + length
                if reached > upto:
                    break
                out.append(Quiet(reached / self.rate, self._last_sound / self.rate, seconds))
                self._reported += 1
        self._samples = upto
