"""A hostile Pulse server for tests, and what its two test modules share."""

from __future__ import annotations

import struct

__all__ = ["KEY", "speech"]

#: The API key the tests use; servers echo it back, whole or cut.
KEY = "sk-SECRET-0123456789abcdef"


def speech(seconds: float, offset: float = 0.0) -> bytes:
    """linear16 audio, 16 kHz, at session time ``offset``: its samples count up
    (wrapping every 4.096 s), so a byte out of place or replayed from elsewhere
    shows."""
    first = round(offset * 16000)
    count = round(seconds * 16000)
    return struct.pack(f"<{count}h", *(((first + i) % 65536) - 32768 for i in range(count)))
