"""``pulse_core._handlers``: which named callbacks an event is for.

Invariants: every event goes to ``on_event``; a transcript goes to
``on_transcript`` and to exactly one of ``on_final_transcript`` and
``on_interim_transcript``; every event type the engine emits has a name of its
own besides ``on_event``; an unknown name is a ``ValueError`` that lists the
known ones.
"""

from __future__ import annotations

import inspect

import pytest

import pulse_core
from pulse_core import (
    HANDLER_EVENTS,
    Closed,
    MalformedMessage,
    Transcript,
    _events,
    check_handler_name,
    handler_names,
)


def transcript(*, final: bool) -> Transcript:
    return Transcript(text="hi", is_final=final)


def test_a_final_goes_to_the_final_handlers_only() -> None:
    assert handler_names(transcript(final=True)) == [
        "on_transcript",
        "on_final_transcript",
        "on_event",
    ]


def test_an_interim_goes_to_the_interim_handlers_only() -> None:
    assert handler_names(transcript(final=False)) == [
        "on_transcript",
        "on_interim_transcript",
        "on_event",
    ]


def test_what_the_server_sent_wrong_goes_to_on_server_error() -> None:
    event = MalformedMessage(error="bad", data="{")
    assert handler_names(event) == ["on_server_error", "on_event"]


def test_every_event_type_has_a_name_of_its_own() -> None:
    kinds = [
        value
        for value in vars(_events).values()
        if inspect.isclass(value)
        and value.__module__ == _events.__name__
        and value in pulse_core.Event.__args__  # type: ignore[attr-defined]
    ]
    assert kinds
    named = {kind for name, types in HANDLER_EVENTS.items() if name != "on_event" for kind in types}
    assert set(kinds) <= named, set(kinds) - named


def test_closed_goes_to_on_closed() -> None:
    engine = pulse_core.PulseConnection(pulse_core.ConnectionConfig(api_key="sk_handlers_key"))
    engine.close(0.0)  # before start(): the session ends at once
    *_, event = engine.events()
    assert isinstance(event, Closed)
    assert handler_names(event) == ["on_closed", "on_event"]


@pytest.mark.parametrize("name", list(HANDLER_EVENTS))
def test_known_names_pass(name: str) -> None:
    check_handler_name(name)


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown event handler 'on_final'; one of on_connected"):
        check_handler_name("on_final")
