"""The token engine: the emulator's built-in recogniser.

It reads token audio (``pulse_trio.emulator.token_audio``) and gives back
exactly the words that made it, with their times, in every encoding and at
every sample rate. It is a ``RecognitionEngine``; an engine that recognises
something else goes in a module of its own beside this one.
"""

from __future__ import annotations

from pulse_core import Encoding

from ._protocol import RecognitionStream
from .token_audio import TokenDecoder

__all__ = ["TokenEngine"]


class TokenEngine:
    """Recognises token audio (see ``pulse_trio.emulator.token_audio``), exactly."""

    name = "token"

    def stream(self, encoding: Encoding, sample_rate: int) -> RecognitionStream:
        return TokenDecoder(encoding, sample_rate)
