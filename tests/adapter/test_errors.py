"""What leaving ``open_session()`` raises, row by row of README's exception table.

Every row of the table ("| exception | raised when |") is checked here: each
case it describes is run against the emulator over in-memory streams on trio's
virtual clock and must raise exactly that class (not a subclass, never an
ExceptionGroup), and every row has a case. A close with every final in but no
``is_last`` raises nothing.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import pulse_trio
from pulse_core import AudioDropped, Closed, Event, State
from pulse_trio import Session, SessionFailedError, open_session
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import encode

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "sk_errors_test_key_0123456789"
URL = "ws://127.0.0.1:8765"  # reached in memory, never dialled


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def table_rows() -> list[tuple[str, str]]:
    """(exception, raised when) of each row of README's exception table."""
    text = README.read_text(encoding="utf-8")
    table = text.split("| exception | raised when |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        match = re.fullmatch(r"\| `(\w+)` \| (.+) \|", line)
        assert match, f"not a row of the exception table: {line!r}"
        rows.append((match[1], match[2]))
    return rows


async def speak(session: Session) -> None:
    await session.send_audio(encode(["hello", "there"], trail=0.2))


@attrs.frozen
class Case:
    """One way to end a session that says a few words: the emulator's faults
    and the session's options (or a connector of its own)."""

    name: str
    faults: Callable[[Emulator], None] = lambda emulator: None
    options: dict[str, Any] = attrs.field(factory=dict)
    connector: Callable[[Emulator], Any] | None = None
    #: Part of the message it must have.
    says: str = ""


def refused(
    count: int, status: int, retry_after: float | None = None
) -> Callable[[Emulator], None]:
    return lambda emulator: emulator.faults.refuse(count, status=status, retry_after=retry_after)


def untrusted(emulator: Emulator) -> Any:
    """A connector whose TLS handshake fails verification."""

    async def connect(*args: Any) -> Any:
        error = ssl.SSLCertVerificationError(1, "certificate verify failed")
        error.verify_message = "self-signed certificate"  # set by ssl on a real failure
        raise error

    return connect


def stalls(emulator: Emulator) -> None:
    emulator.faults.stall(after_bytes=1)


def region_refusal(emulator: Emulator) -> None:
    emulator.faults.error(2, code="LANGUAGE_NOT_ENABLED_IN_REGION", after_bytes=1)


CASES: dict[str, list[Case]] = {
    "AuthenticationError": [Case("401", refused(1, 401), says="the API key was refused")],
    "PermissionDeniedError": [Case("403", refused(1, 403), says="not allowed for this key")],
    "InvalidRequestError": [
        Case("400", refused(1, 400), says="HTTP 400"),
        Case("404", refused(1, 404), says="HTTP 404"),
    ],
    "RateLimitError": [Case("429-for-a-day", refused(1, 429, 86400), says="HTTP 429")],
    "RegionError": [Case("region", region_refusal, says="LANGUAGE_NOT_ENABLED_IN_REGION")],
    "CertificateError": [Case("certificate", connector=untrusted, says="certificate")],
    "ConnectionGaveUpError": [
        Case(
            "attempts-ran-out",
            refused(5, 503),
            {"reconnect": {"max_attempts": 3}},
            says="gave up after 3 attempts: HTTP 503",
        ),
        Case(
            "close-timeout-before-any-connection",
            refused(50, 503),
            {"close_timeout": 2.0, "reconnect": {"max_attempts": None}},
            says="could not reach the service after",
        ),
    ],
    "SessionFailedError": [
        Case("redirect", refused(1, 301), says="redirects are not followed"),
        Case("410", refused(1, 410), says="HTTP 410"),
        Case("503-for-a-day", refused(1, 503, 86400), says="asked to retry after"),
        Case(
            "close-timeout-with-audio-unconfirmed",
            stalls,
            {"close_timeout": 1.0},
            says="close timed out before the server confirmed all audio",
        ),
    ],
}


async def run(case: Case) -> tuple[BaseException | None, list[Event]]:
    emulator = Emulator()
    case.faults(emulator)
    connector = case.connector(emulator) if case.connector else emulator.memory_connector()
    events: list[Event] = []
    try:
        async with open_session(KEY, base_url=URL, connector=connector, **case.options) as session:
            session.event_handler("on_event")(events.append)
            await speak(session)
    except BaseException as exc:  # an ExceptionGroup too: that would be a failure
        return exc, events
    return None, events


def test_every_row_has_cases_and_names_a_session_failed_error() -> None:
    names = [name for name, _ in table_rows()]
    assert names == list(CASES)
    for name in names:
        cls = getattr(pulse_trio, name)
        assert issubclass(cls, SessionFailedError)
    documented = {
        name
        for name in pulse_trio.__all__
        if isinstance(getattr(pulse_trio, name), type)
        and issubclass(getattr(pulse_trio, name), SessionFailedError)
    }
    assert documented == set(names), "every exception pulse_trio exports has a row"


@pytest.mark.parametrize(
    ("name", "case"),
    [(name, case) for name, cases in CASES.items() for case in cases],
    ids=[f"{name}-{case.name}" for name, cases in CASES.items() for case in cases],
)
async def test_each_row_is_what_is_raised(name: str, case: Case, autojump_clock: Any) -> None:
    error, events = await run(case)
    assert type(error) is getattr(pulse_trio, name), repr(error)
    assert case.says in str(error)
    closed = [event for event in events if isinstance(event, Closed)]
    assert len(closed) == 1 and closed[0].error is not None


async def test_a_close_without_is_last_after_every_final_raises_nothing(
    autojump_clock: Any,
) -> None:
    """The emulator answers the finalize, then stops answering: close_stream
    never gets its is_last, yet nothing is lost."""
    emulator = Emulator()
    events: list[Event] = []
    connector = emulator.memory_connector()
    async with open_session(KEY, base_url=URL, connector=connector, close_timeout=1.0) as session:
        session.event_handler("on_event")(events.append)
        await speak(session)
        await session.speech_stopped()
        await trio.sleep(1.0)  # the answer is in
        emulator.faults.stall()  # from the next message on: close_stream
    [closed] = [event for event in events if isinstance(event, Closed)]
    assert (closed.error, closed.is_last_missing) == (None, True)
    assert not [event for event in events if isinstance(event, AudioDropped)]


async def test_a_mistaken_call_raises_its_documented_error_and_changes_nothing(
    autojump_clock: Any,
) -> None:
    """README: a mistake in a call is raised by that call, at once, and the
    session goes on as if it was never made."""
    from pulse_core import ConfigurationError, LocalProtocolError  # noqa: PLC0415

    emulator = Emulator()
    finals: list[str] = []
    async with open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session:
        session.event_handler("on_final_transcript")(lambda event: finals.append(event.text))
        with pytest.raises(ValueError, match="unknown event handler 'on_final'"):
            session.event_handler("on_final")
        with pytest.raises(TypeError, match="audio must be bytes-like, not str"):
            await session.send_audio("hello")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError) as bad:
            await session.update_settings(language="xx-nowhere")
        assert isinstance(bad.value, ValueError)
        assert session.settings.language == "en"
        await speak(session)
        await session.speech_stopped()
        async for _ in session.events():  # ends after Closed
            if finals and session.state is not State.CLOSED:
                await session.aclose()
        with pytest.raises(LocalProtocolError):
            await session.send_audio(b"\0\0")
    assert [text for text in finals if text] == ["hello there"]
