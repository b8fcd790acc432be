"""A local Pulse-compatible server: for tests, offline development and demos.

    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(Emulator().serve)
        ... connect to emulator.url() ...

It follows the protocol in spec/PROTOCOL.md: both paths, bearer keys,
parameter validation, region rules, the concurrency limit, interims, one
final per finalize, automatic finals (endpointing, max_words), close_stream
with is_last, voice-activity events, word and sentence timestamps,
diarization, full transcripts and redaction, plus fault injection.
Recognition is pluggable; the built-in engine reads token audio
(``pulse_trio.emulator.token_audio``).
"""

from ._protocol import (
    Accept,
    Close,
    RecognitionEngine,
    RecognitionStream,
    Reject,
    ServerParams,
    ServerSession,
    check_request,
)
from ._server import Emulator, Fault, Faults
from ._token_engine import TokenEngine

__all__ = [
    "Accept",
    "Close",
    "Emulator",
    "Fault",
    "Faults",
    "RecognitionEngine",
    "RecognitionStream",
    "Reject",
    "ServerParams",
    "ServerSession",
    "TokenEngine",
    "check_request",
]
