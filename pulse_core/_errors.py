"""The exceptions pulse_core raises.

Every exception the engine lets escape is one of these. Misuse by the local
caller is a ``LocalProtocolError``; bytes from the server that make no sense
are a ``RemoteProtocolError`` (the engine turns those into events instead of
raising); invalid settings are a ``ConfigurationError``, raised before any
connection is attempted.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "LocalProtocolError",
    "PulseError",
    "RemoteProtocolError",
]


class PulseError(Exception):
    """Base class of every exception raised by pulse_core."""


class ConfigurationError(PulseError, ValueError):
    """A setting or connection option is invalid.

    ``field`` names the offending option, ``value`` is what was given (never an
    API key: those are reported as ``<redacted>``) and ``allowed`` says what
    would have been accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str, *, detail: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        message = f"invalid {field}={value!r}: {allowed}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class LocalProtocolError(PulseError):
    """The caller used the engine in a way the protocol does not allow.

    For example: audio after ``close()``, an input in a state that cannot take
    it, or time going backwards.
    """


class RemoteProtocolError(PulseError):
    """The server sent something that is not a valid Pulse message.

    Raised by :func:`pulse_core.parse_server_message`; inside
    :class:`pulse_core.PulseConnection` it becomes a ``MalformedMessage`` event.
    """
