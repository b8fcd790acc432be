"""Handler names: which of an application's named callbacks an event is for.

A transport that lets the application register callbacks by name
(``pulse_trio``'s ``Session.event_handler``, the asyncio and Pipecat examples)
takes the names and their meaning from here, so that ``on_final_transcript``
means the same thing whatever carries the bytes. The names are the ones
Pipecat users know from its Smallest AI service (``on_connected``,
``on_disconnected``, ``on_connection_error``), and one per event kind besides.

Rules: every event goes to ``on_event``; a transcript goes to
``on_transcript`` and to exactly one of ``on_final_transcript`` and
``on_interim_transcript``; ``on_server_error`` gets what the server said was
wrong and what it sent that could not be used (``MalformedMessage``,
``UnhandledMessage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ._events import (
    AudioDropped,
    Closed,
    Connected,
    ConnectionFailed,
    Disconnected,
    Event,
    FinalizeTimedOut,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SettingsApplied,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    UnhandledMessage,
)

__all__ = ["HANDLER_EVENTS", "check_handler_name", "handler_names"]

#: Each handler name and the event types it is given (``object``: all).
HANDLER_EVENTS: Final[Mapping[str, tuple[type, ...]]] = {
    "on_connected": (Connected,),
    "on_disconnected": (Disconnected,),
    "on_connection_error": (ConnectionFailed,),
    "on_reconnecting": (Reconnecting,),
    "on_transcript": (Transcript,),
    "on_interim_transcript": (Transcript,),
    "on_final_transcript": (Transcript,),
    "on_speech_started": (SpeechStarted,),
    "on_speech_ended": (SpeechEnded,),
    "on_server_error": (ServerError, MalformedMessage, UnhandledMessage),
    "on_audio_dropped": (AudioDropped,),
    "on_finalize_timeout": (FinalizeTimedOut,),
    "on_settings_applied": (SettingsApplied,),
    "on_closed": (Closed,),
    "on_event": (object,),
}


def check_handler_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a handler name."""
    if name not in HANDLER_EVENTS:
        raise ValueError(f"unknown event handler {name!r}; one of {', '.join(HANDLER_EVENTS)}")


def handler_names(event: Event) -> list[str]:
    """The names whose handlers get ``event``, in the table's order."""
    names = []
    for name, kinds in HANDLER_EVENTS.items():
        if not isinstance(event, kinds):
            continue
        if isinstance(event, Transcript) and (
            (name == "on_final_transcript" and not event.is_final)
            or (name == "on_interim_transcript" and event.is_final)
        ):
            continue
        names.append(name)
    return names
