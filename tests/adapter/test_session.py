"""open_session() end to end against the emulator, on trio's virtual clock.

The emulator is reached over in-memory streams (``Emulator.memory_connector``),
so time is virtual and every test is deterministic; test_sockets.py, beside
this file, does the same over real loopback sockets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing
import wsproto.utilities
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected

import pulse_core._config
from pulse_core import (
    Closed,
    ConfigurationError,
    Connected,
    ConnectionFailed,
    Disconnected,
    Event,
    LocalProtocolError,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SettingsApplied,
    Transcript,
)
from pulse_trio import (
    AuthenticationError,
    ConnectionGaveUpError,
    RegionError,
    Session,
    SessionFailedError,
    open_session,
)
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import encode

KEY = "sk_session_test_key_0123456789"
URL = "ws://127.0.0.1:8765"  # reached in memory, never dialled


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def session_with(
    emulator: Emulator, **options: Any
) -> AsyncIterator[tuple[Session, list[Event]]]:
    events: list[Event] = []
    async with open_session(
        KEY, base_url=URL, connector=emulator.memory_connector(), **options
    ) as session:
        session.event_handler("on_event")(events.append)
        yield session, events


async def speak(session: Session, words: str, *, chunk: int = 640, pace: float = 0.02) -> None:
    """Send token audio for ``words`` in real-time-sized chunks."""
    audio = encode(words.split(), trail=0.15)
    for offset in range(0, len(audio), chunk):
        await session.send_audio(audio[offset : offset + chunk])
        await trio.sleep(pace)


def finals(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Transcript) and e.is_final and e.text]


def kinds(events: list[Event], *types: type) -> list[str]:
    return [type(e).__name__ for e in events if isinstance(e, types or (object,))]


# -- the numbered behaviours, end to end ----------------------------------------


async def test_audio_before_the_socket_opens_is_not_lost(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.refuse(2, status=503)  # the first words are spoken while it retries
    async with session_with(emulator) as (session, events):
        await speak(session, "hello this is the first turn")
        await session.speech_stopped()
    assert finals(events) == ["hello this is the first turn"]
    assert emulator.handshakes == 3
    assert kinds(events, Connected, Reconnecting) == ["Reconnecting", "Reconnecting", "Connected"]


async def test_finalize_gives_one_finalized_transcript_per_turn(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, events):
        for turn in ("first turn", "second turn here"):
            await speak(session, turn)
            await session.speech_stopped()
            await trio.sleep(0.5)
    answers = [e for e in events if isinstance(e, Transcript) and e.finalized]
    assert [(e.turn, e.text) for e in answers] == [(1, "first turn"), (2, "second turn here")]
    assert all(e.latency is not None and e.latency < 0.5 for e in answers)
    summary = session.engine.summary()
    assert summary.latency.count == 2 and summary.finalized_turns == 2


async def test_the_timer_calls_the_engine_at_its_deadlines_never_before(
    autojump_clock: Any,
) -> None:
    # Coalescing, keepalive and finalize deadlines, moved earlier and later by
    # audio: each handle_timer comes once the deadline the engine asked for has
    # passed, and none comes before it.
    emulator = Emulator()
    calls: list[tuple[float, float | None]] = []
    async with session_with(
        emulator, keepalive_interval=0.5, max_chunk_delay=0.05, chunk_bytes=640
    ) as (session, events):
        engine = session.engine
        handle_timer = engine.handle_timer

        def spy(now: float) -> None:
            calls.append((now, engine.next_deadline()))
            handle_timer(now)

        engine.handle_timer = spy  # type: ignore[method-assign]
        for _ in range(5):  # whole frames, each pushing the keepalive back before it is due
            await trio.sleep(0.4)
            await session.send_audio(bytes(640))
        await speak(session, "tick tock", chunk=100, pace=0.013)  # partial frames: coalescing
        await trio.sleep(2.0)  # keepalives
        await session.speech_stopped()
        await trio.sleep(0.5)
    assert len(calls) >= 4
    assert all(deadline is not None and now >= deadline for now, deadline in calls), calls
    assert finals(events) == ["tick tock"]


async def test_keepalive_after_idle(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, _):
        await speak(session, "hi")
        await trio.sleep(12)  # idle: two keepalive intervals
        assert session.engine.summary().keepalives == 2
        await speak(session, "still here")
        await session.speech_stopped()


async def test_reconnect_replays_audio_and_words_come_exactly_once(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.drop(at_seconds=1.2)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"
    async with session_with(emulator) as (session, events):
        await speak(session, words)
        await session.speech_stopped()
    assert " ".join(finals(events)).split() == words.split()
    assert kinds(events, Connected, Disconnected) == [
        "Connected",
        "Disconnected",
        "Connected",
        "Disconnected",
    ]
    transcripts = [e for e in events if isinstance(e, Transcript) and e.words]
    starts = [w.start for e in transcripts if e.is_final for w in e.words]
    assert starts == sorted(starts)  # session time runs on across the reconnect


async def test_settings_change_mid_turn_loses_nothing(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, events):
        await speak(session, "before the change")
        await session.update_settings(language="hi", diarize=True)
        await speak(session, "after the change")
        await session.speech_stopped()
    assert " ".join(finals(events)) == "before the change after the change"
    applied = [e for e in events if isinstance(e, SettingsApplied)]
    assert applied and applied[0].changed == ("language", "diarize")
    assert session.settings.language == "hi"


async def test_graceful_close_delivers_the_last_final(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, events):
        await speak(session, "words nobody finalized")
    last = [e for e in events if isinstance(e, Transcript) and e.is_last]
    assert [e.text for e in last] == ["words nobody finalized"]
    assert kinds(events)[-2:] == ["Disconnected", "Closed"]


async def test_permanent_401_is_raised_and_not_retried(autojump_clock: Any) -> None:
    emulator = Emulator(api_keys={"sk_other"})
    with pytest.raises(AuthenticationError, match="401"):
        async with session_with(emulator) as (session, _):
            await speak(session, "nobody hears this")
            await trio.sleep(30)
    assert emulator.handshakes == 1


async def test_a_failed_session_delivers_every_event_before_raising(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: the session's tasks were cancelled as
    # soon as it failed, so handlers and events() could miss the last events:
    # the answer to a finalize (FinalizeTimedOut), AudioDropped, Closed.
    emulator = Emulator()
    emulator.faults.refuse(1, status=503)
    emulator.faults.refuse(1, status=401)
    handled: list[Event] = []
    iterated: list[Event] = []
    async with trio.open_nursery() as nursery:
        with pytest.raises(AuthenticationError):
            async with open_session(
                KEY, base_url=URL, connector=emulator.memory_connector()
            ) as session:
                session.event_handler("on_event")(handled.append)

                async def read() -> None:
                    iterated.extend([event async for event in session.events()])

                nursery.start_soon(read)
                await session.send_audio(encode(["unheard"], trail=0.1))
                await session.speech_stopped()
                await trio.sleep(30)
    expected = [
        "ConnectionFailed",
        "Reconnecting",
        "ConnectionFailed",
        "FinalizeTimedOut",
        "AudioDropped",
        "Closed",
    ]
    assert kinds(handled) == expected
    assert kinds(iterated) == expected


async def _fail_while_sending(shielded: bool) -> tuple[list[str], list[str]]:
    """A permanent server error while the block sends audio through a one-byte
    outgoing buffer (so send_audio is waiting for room when the failure lands);
    ``events()`` is read from outside the block. With ``shielded`` the block
    sends from a shielded scope, so the failure reaches it as the exception,
    not as a cancellation."""
    emulator = Emulator()
    emulator.faults.error(2, code="LANGUAGE_NOT_ENABLED_IN_REGION", after_bytes=3200)
    handled: list[Event] = []
    iterated: list[Event] = []
    audio = encode(["hello", "world", "again", "and", "again"], trail=0.15)
    async with trio.open_nursery() as nursery:
        with pytest.raises(RegionError):
            async with open_session(
                KEY, base_url=URL, connector=emulator.memory_connector(), outgoing_buffer=1
            ) as session:

                async def handler(event: Event) -> None:
                    await trio.sleep(0)
                    handled.append(event)

                session.event_handler("on_event")(handler)

                async def read() -> None:
                    iterated.extend([event async for event in session.events()])

                nursery.start_soon(read)
                with trio.CancelScope(shield=shielded):
                    for offset in range(0, len(audio), 640):
                        await session.send_audio(audio[offset : offset + 640])
                    await trio.sleep(30)
                    await session.send_audio(audio[:640])
    return kinds(handled), kinds(iterated)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shielded", [False, True])
def test_a_failure_while_send_audio_waits_delivers_every_event(seed: int, shielded: bool) -> None:
    # Found in review: send_audio waiting for room was woken by the failure and
    # raised it in the block, which aborted the session before its last events
    # (the error, the refusal, the dropped audio, Closed) reached anyone. The
    # scheduler seed varies the interleaving, as trio's test runs do.
    trio._core._run._r.seed(seed)
    handled, iterated = trio.run(
        _fail_while_sending, shielded, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert handled == iterated
    assert handled[-5:] == [
        "ServerError",
        "Disconnected",
        "ConnectionFailed",
        "AudioDropped",
        "Closed",
    ]


async def test_region_error_is_raised_as_region_error(autojump_clock: Any) -> None:
    emulator = Emulator(region="us")
    with pytest.raises(RegionError, match="LANGUAGE_NOT_ENABLED_IN_REGION"):
        async with session_with(emulator, settings={"language": "ta"}) as (session, _):
            await speak(session, "vanakkam")
            await trio.sleep(5)
    assert emulator.handshakes == 1


@pytest.mark.parametrize("shape", [1, 2, 3])
async def test_server_errors_are_surfaced(autojump_clock: Any, shape: int) -> None:
    emulator = Emulator()
    emulator.faults.error(shape, code="E42", at_seconds=0.2)
    async with session_with(emulator) as (session, events):
        await speak(session, "some words")
        await session.speech_stopped()
    errors = [e for e in events if isinstance(e, ServerError)]
    assert len(errors) == 1 and errors[0].message == "injected error"
    assert errors[0].code == (None if shape == 1 else "E42")
    assert finals(events) == ["some words"]


async def test_malformed_frames_are_surfaced_and_skipped(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.malformed(at_seconds=0.1)
    async with session_with(emulator) as (session, events):
        await speak(session, "still transcribed")
        await session.speech_stopped()
    assert kinds(events, MalformedMessage) == ["MalformedMessage"]
    assert finals(events) == ["still transcribed"]


class _HangingUp:
    """A socket whose server sent an error and hung up: the next write fails at
    once, and the error is read only after that write failed."""

    def __init__(self) -> None:
        self.write_failed = trio.Event()
        self.reads = 0
        self.reason = CloseReason(1011, "gone")

    async def send_message(self, data: str | bytes) -> None:
        self.write_failed.set()
        raise ConnectionClosed(self.reason)

    async def get_message(self) -> str:
        await self.write_failed.wait()
        self.reads += 1
        if self.reads == 1:
            return '{"type": "error", "error_code": "E42", "message": "before the hang-up"}'
        raise ConnectionClosed(self.reason)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def test_frames_that_arrived_before_a_hang_up_reach_the_engine(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: when the writer noticed a closed
    # connection before the reader had handed on what arrived before the close,
    # the close was reported first and those frames were thrown away (an error,
    # or a final).
    emulator = Emulator()
    first = _HangingUp()
    connect = emulator.memory_connector()

    async def connector(*args: Any) -> Any:
        return first if emulator.handshakes == 0 and not first.reads else await connect(*args)

    events: list[Event] = []
    async with open_session(KEY, base_url=URL, connector=connector) as session:
        session.event_handler("on_event")(events.append)
        await speak(session, "said twice")
        await session.speech_stopped()
    errors = [e for e in events if isinstance(e, ServerError)]
    assert [e.code for e in errors] == ["E42"]
    assert kinds(events, ServerError, Disconnected)[:2] == ["ServerError", "Disconnected"]
    assert finals(events) == ["said twice"]


async def test_a_refusal_landing_with_the_attempts_replacement_is_not_raised(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: an attempt replaced by a settings
    # change (its task cancelled) whose handshake was refused at that same
    # moment raised ExceptionGroup([ConnectionRejected]) out of open_session.
    emulator = Emulator()
    connect = emulator.memory_connector()
    refuse = trio.Event()
    calls = 0

    async def connector(nursery: trio.Nursery, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await connect(nursery, *args)
        nursery.start_soon(trio.sleep_forever)  # like trio-websocket's reader task
        with trio.CancelScope(shield=True):  # the refusal is on its way regardless
            await refuse.wait()
        raise ConnectionRejected(503, (), b"busy")

    events: list[Event] = []
    async with open_session(KEY, base_url=URL, connector=connector) as session:
        session.event_handler("on_event")(events.append)
        await trio.sleep(0.1)
        await session.update_settings(diarize=True)  # replaces the attempt in flight
        refuse.set()
        await speak(session, "still fine")
        await session.speech_stopped()
    assert finals(events) == ["still fine"]
    assert kinds(events, Connected, ConnectionFailed) == ["Connected"]


async def test_429_retry_after_is_honoured(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.refuse(1, status=429, retry_after=3)
    async with session_with(emulator) as (session, events):
        start = trio.current_time()
        await speak(session, "patience")
        await session.speech_stopped()
        connected = [e for e in events if isinstance(e, Connected)]
        while not connected:
            await trio.sleep(0.1)
            connected = [e for e in events if isinstance(e, Connected)]
        assert trio.current_time() - start >= 3.0
    (waiting,) = [e for e in events if isinstance(e, Reconnecting)]
    assert waiting.delay == 3.0
    assert finals(events) == ["patience"]


async def test_concurrency_limit_backs_off_and_recovers(autojump_clock: Any) -> None:
    emulator = Emulator(max_sessions=0)
    async with session_with(emulator) as (session, events):
        await trio.sleep(0.1)
        emulator.max_sessions = 5
        await speak(session, "finally in")
        await session.speech_stopped()
    delays = [e.delay for e in events if isinstance(e, Reconnecting)]
    assert delays and delays[0] >= 2.0
    assert finals(events) == ["finally in"]


async def test_a_stalled_server_is_replaced(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.stall(at_seconds=0.3)
    async with session_with(emulator, finalize_timeout=2.0) as (session, events):
        await speak(session, "stuck words come back")
        await session.speech_stopped()
        await trio.sleep(3)
    assert "stuck words come back" in " ".join(finals(events))
    assert kinds(events, Connected) == ["Connected", "Connected"]


async def test_audio_queued_on_a_lost_connection_is_not_counted_forever(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: frames still waiting to be written
    # when the server cut the connection stayed counted against outgoing_buffer,
    # so every such loss shrank the room send_audio() has, for good.
    emulator = Emulator()
    emulator.faults.drop(after_bytes=0)  # on the first frame; more are queued
    async with session_with(emulator, chunk_bytes=1000) as (session, events):
        await trio.sleep(0.1)
        await session.send_audio(encode(["queued", "words"], trail=0.2))
        await session.speech_stopped()
    assert finals(events) == ["queued words"]
    assert kinds(events, Connected) == ["Connected", "Connected"]
    assert session._outgoing_bytes == 0


async def test_a_settings_change_while_connecting_dials_only_the_new_url(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: the attempt the change replaced
    # still dialled (after the new one) when its task started late.
    emulator = Emulator()
    dialled: list[str] = []
    connect = emulator.memory_connector()

    async def recording(nursery: trio.Nursery, url: str, *rest: Any) -> Any:
        dialled.append(url)
        return await connect(nursery, url, *rest)

    async with open_session(KEY, base_url=URL, connector=recording) as session:
        await session.update_settings(diarize=True)
        await speak(session, "new settings")
    assert len(dialled) == 1 and "diarize=true" in dialled[0]
    assert emulator.handshakes == 1


async def test_giving_up_raises_connection_gave_up(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.refuse(10, status=503)
    with pytest.raises(ConnectionGaveUpError):
        async with session_with(emulator, reconnect={"max_attempts": 3}) as (session, _):
            await trio.sleep(60)
            await session.send_audio(b"\x00\x00")
    assert emulator.handshakes == 3  # max_attempts consecutive failures, then no more


async def test_running_out_of_attempts_on_429s_raises_connection_gave_up(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: it raised RateLimitError, which is
    # documented for a Retry-After longer than the policy allows.
    emulator = Emulator()
    emulator.faults.refuse(3, status=429, retry_after=1)
    with pytest.raises(ConnectionGaveUpError, match="gave up after 3 attempts"):
        async with session_with(emulator, reconnect={"max_attempts": 3}) as (session, _):
            await speak(session, "nobody hears this")
            await trio.sleep(30)
    assert emulator.handshakes == 3


async def test_a_close_timing_out_while_rate_limited_is_not_a_rate_limit_error(
    autojump_clock: Any,
) -> None:
    # Found by tests/adapter/test_chaos_adapter.py: the last 429 (waited out, not a
    # refusal) made a close timeout raise RateLimitError, which is documented
    # for a Retry-After longer than the policy allows. The service was never
    # reached: the close ended the attempts.
    emulator = Emulator()
    emulator.faults.refuse(20, status=429, retry_after=1)
    with pytest.raises(ConnectionGaveUpError, match="could not reach the service") as caught:
        async with session_with(emulator, close_timeout=2.0) as (session, _):
            await speak(session, "never delivered")
    assert "HTTP 429" in str(caught.value) and "close timed out" not in str(caught.value)


# -- the WebSocket stack's errors end at one edge (pulse_trio/_transport_errors.py) ----

#: Errors a connector (or the reader task it starts) may raise beyond the
#: usual network ones: each fails that attempt, and the next one is made.
ODD_ERRORS = [
    pytest.param(ValueError("odd"), id="ValueError"),
    pytest.param(RuntimeError("odd"), id="RuntimeError"),
    pytest.param(h11.LocalProtocolError("odd"), id="h11-LocalProtocolError"),
    pytest.param(wsproto.utilities.RemoteProtocolError("odd", None), id="wsproto-Remote"),
    pytest.param(trio.BusyResourceError("odd"), id="BusyResourceError"),
]


@pytest.mark.parametrize("error", ODD_ERRORS)
@pytest.mark.parametrize("grouped", [False, True], ids=["raised", "from-a-task"])
async def test_whatever_the_stack_raises_while_connecting_is_a_failed_attempt(
    autojump_clock: Any, caplog: Any, error: Exception, grouped: bool
) -> None:
    """The first attempt's connector raises ``error`` (or its background task
    does, as trio-websocket's reader would): a ConnectionFailed, a retry, and
    the session goes on; nothing is raised, least of all an ExceptionGroup.
    An error the audit did not expect is logged as such."""
    emulator = Emulator()
    connect = emulator.memory_connector()
    calls = 0

    async def fail(error: Exception) -> None:
        raise error

    async def connector(nursery: trio.Nursery, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await connect(nursery, *args)
        if grouped:
            nursery.start_soon(fail, error)
            await trio.sleep_forever()
        raise error

    events: list[Event] = []
    async with open_session(KEY, base_url=URL, connector=connector) as session:
        session.event_handler("on_event")(events.append)
        await speak(session, "after an odd error")
        await session.speech_stopped()
    assert finals(events) == ["after an odd error"]
    failures = [e for e in events if isinstance(e, ConnectionFailed)]
    assert len(failures) == 1 and type(error).__name__ in failures[0].reason
    assert not failures[0].permanent
    unexpected = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    expected = isinstance(error, h11.ProtocolError | wsproto.utilities.ProtocolError)
    assert bool(unexpected) is not expected


async def test_a_host_name_that_cannot_be_encoded_fails_for_good(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trio's lookup raises UnicodeError (not OSError) for a host name IDNA
    cannot encode (a label over 63 characters): no retry can help, so the
    session fails at once with a SessionFailedError, not an ExceptionGroup.

    The configuration refuses such a name before connecting; the transport's
    edge is checked here with that check taken away, for a lookup that fails
    the same way."""
    with pytest.raises(ConfigurationError, match="a host name or IP address"):
        async with open_session(KEY, base_url="wss://" + "x" * 70 + ".example"):
            pass
    monkeypatch.setattr(pulse_core._config, "_valid_host", lambda host: True)
    events: list[Event] = []
    with pytest.raises(SessionFailedError, match="address cannot be used") as info:
        async with open_session(KEY, base_url="wss://" + "x" * 70 + ".example") as session:
            session.event_handler("on_event")(events.append)
            await session.send_audio(b"\0" * 3200)
    assert not isinstance(info.value, ConnectionGaveUpError)
    failures = [e for e in events if isinstance(e, ConnectionFailed)]
    assert [(f.permanent, f.gave_up) for f in failures] == [(True, False)]


class _ClosingUnderWrites:
    """An open socket whose server closed it: a write is refused by wsproto
    (the connection is REMOTE_CLOSING, trio-websocket issue #175), while the
    reader still has a message and the close to hand on."""

    def __init__(self) -> None:
        self.write_refused = trio.Event()
        self.reads = 0

    async def send_message(self, data: str | bytes) -> None:
        self.write_refused.set()
        raise wsproto.utilities.LocalProtocolError(
            "Event BytesMessage cannot be sent in state ConnectionState.REMOTE_CLOSING."
        )

    async def ping(self, payload: bytes | None = None) -> None:
        raise wsproto.utilities.LocalProtocolError("Event Ping cannot be sent now.")

    async def get_message(self) -> str:
        await self.write_refused.wait()
        self.reads += 1
        if self.reads == 1:
            return '{"type": "error", "error_code": "E7", "message": "going away"}'
        raise ConnectionClosed(CloseReason(1001, "going away"))

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def test_a_write_refused_while_the_server_closes_is_reported_by_the_reader(
    autojump_clock: Any,
) -> None:
    """A write that wsproto refuses because the server's close frame came in
    means the connection is ending: the reader reports the close, after the
    message that came before it; nothing is raised."""
    emulator = Emulator()
    first = _ClosingUnderWrites()
    connect = emulator.memory_connector()

    async def connector(*args: Any) -> Any:
        return first if not first.reads else await connect(*args)

    events: list[Event] = []
    async with open_session(KEY, base_url=URL, connector=connector) as session:
        session.event_handler("on_event")(events.append)
        await speak(session, "said once")
        await session.speech_stopped()
    assert [e.code for e in events if isinstance(e, ServerError)] == ["E7"]
    gone = next(e for e in events if isinstance(e, Disconnected))
    assert (gone.code, gone.local) == (1001, False)
    assert finals(events) == ["said once"]


class _BrokenReads(_ClosingUnderWrites):
    """An open socket whose reads fail with an error nobody expected."""

    async def send_message(self, data: str | bytes) -> None:
        pass

    async def get_message(self) -> str:
        self.reads += 1
        raise RuntimeError("the stack broke")


async def test_an_unexpected_error_on_an_open_socket_is_a_lost_connection(
    autojump_clock: Any, caplog: Any
) -> None:
    """An error nobody expected from an open socket is the loss of that
    socket (no close frame): it is replaced, its audio replayed, and the
    error logged as unexpected; nothing is raised."""
    emulator = Emulator()
    first = _BrokenReads()
    connect = emulator.memory_connector()

    async def connector(*args: Any) -> Any:
        return first if not first.reads else await connect(*args)

    events: list[Event] = []
    async with open_session(KEY, base_url=URL, connector=connector) as session:
        session.event_handler("on_event")(events.append)
        await speak(session, "replayed whole")
        await session.speech_stopped()
    gone = next(e for e in events if isinstance(e, Disconnected))
    assert (gone.code, gone.local, gone.will_reconnect) == (None, False, True)
    assert "RuntimeError: the stack broke" in gone.reason
    assert finals(events) == ["replayed whole"]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


# -- the session API --------------------------------------------------------------


async def test_missing_key_is_a_clear_error_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SMALLEST_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="SMALLEST_API_KEY"):
        async with open_session(base_url=URL):
            pass  # pragma: no cover


async def test_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: Any
) -> None:
    monkeypatch.setenv("SMALLEST_API_KEY", "sk_from_env")
    emulator = Emulator(api_keys={"sk_from_env"})
    async with open_session(base_url=URL, connector=emulator.memory_connector()) as session:
        await speak(session, "env key")
    assert emulator.connections == 1


async def test_invalid_settings_fail_before_connecting() -> None:
    emulator = Emulator()
    with pytest.raises(ConfigurationError, match="eou_timeout_ms"):
        async with session_with(emulator, settings={"eou_timeout_ms": 1}):
            pass  # pragma: no cover
    assert emulator.handshakes == 0


async def test_invalid_update_raises_and_sends_nothing(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, events):
        await speak(session, "ok")
        with pytest.raises(ConfigurationError):
            await session.update_settings(max_words=0)
        with pytest.raises(ConfigurationError):
            await session.update_settings(no_such_field=True)
    assert not [e for e in events if isinstance(e, SettingsApplied)]
    assert emulator.connections == 1


async def test_send_audio_rejects_non_bytes_and_use_after_close(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, _):
        with pytest.raises(TypeError):
            await session.send_audio("not audio")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="after close"):
        await session.send_audio(b"\x00\x00")


async def test_events_iterator_ends_after_closed(autojump_clock: Any) -> None:
    emulator = Emulator()
    seen: list[str] = []
    async with (
        trio.open_nursery() as nursery,
        open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session,
    ):

        async def read() -> None:
            seen.extend([type(event).__name__ async for event in session.events()])

        nursery.start_soon(read)
        await speak(session, "iterate me")
    assert seen[0] == "Connected" and seen[-1] == "Closed"
    assert "Transcript" in seen


async def test_handlers_sync_async_and_failing(autojump_clock: Any, caplog: Any) -> None:
    emulator = Emulator()
    seen: list[str] = []
    async with session_with(emulator) as (session, _):

        @session.event_handler("on_final_transcript")
        async def on_final(event: Transcript) -> None:
            await trio.sleep(0)
            seen.append("final:" + event.text)

        @session.event_handler("on_interim_transcript")
        def on_interim(event: Transcript) -> None:
            assert not event.is_final
            seen.append("interim")

        @session.event_handler("on_connected")
        def broken(event: Connected) -> None:
            raise RuntimeError("handler bug")

        with pytest.raises(ValueError, match="unknown event handler"):
            session.event_handler("on_nothing")
        await speak(session, "handled")
        await session.speech_stopped()
    assert "final:handled" in seen and "interim" in seen
    assert any("handler bug" in r.exc_text for r in caplog.records if r.exc_text)


async def test_plain_handlers_are_called_as_the_message_is_read(autojump_clock: Any) -> None:
    # A transcript reaches a plain function's handler from the task that read
    # it, with no wait for the forwarder task to be scheduled.
    emulator = Emulator()
    callers: list[trio.lowlevel.Task] = []
    async with session_with(emulator) as (session, _):
        session.event_handler("on_transcript")(
            lambda event: callers.append(trio.lowlevel.current_task())
        )
        await speak(session, "read and handled")
        await session.speech_stopped()
        forwarder = session._forwarder_task
    assert len(callers) >= 2
    assert forwarder is not None and forwarder not in callers


async def test_an_awaitable_from_a_plain_handler_is_awaited_before_anything_after_it(
    autojump_clock: Any,
) -> None:
    # A plain function that returns a coroutine: the reader hands it to the
    # forwarder, and neither the next handler nor the next event's handlers
    # run before it is done, while transcripts keep arriving meanwhile, some
    # of them together (read before the forwarder has run at all).
    emulator = Emulator()
    for n in range(4):
        emulator.faults.malformed(
            f'{{"type":"transcription","is_final":false,"transcript":"burst {n}"}}'
        )
    seen: list[tuple[str, str]] = []

    async def slow(event: Transcript) -> None:
        seen.append(("start", event.text))
        await trio.sleep(0.3)
        seen.append(("end", event.text))

    async with session_with(emulator) as (session, _):
        # A plain function that returns a coroutine, on purpose (not `slow` itself).
        session.event_handler("on_transcript")(lambda event: slow(event))  # noqa: PLW0108
        session.event_handler("on_transcript")(lambda event: seen.append(("after", event.text)))
        await speak(session, "one two three four five six")
        await session.speech_stopped()
    assert [text for step, text in seen if step == "after"][:4] == [f"burst {n}" for n in range(4)]
    assert len(seen) >= 18
    for at in range(0, len(seen), 3):
        (start, text), (end, same), (after, again) = seen[at : at + 3]
        assert (start, end, after) == ("start", "end", "after")
        assert text == same == again


async def test_aclose_is_idempotent_and_exit_after_it_is_fine(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with session_with(emulator) as (session, events):
        await speak(session, "closing twice")
        await session.aclose()
        await session.aclose()
    assert kinds(events).count("Closed") == 1


async def test_cancellation_leaves_promptly(autojump_clock: Any) -> None:
    emulator = Emulator()
    emulator.faults.stall(at_seconds=0.0)
    with trio.move_on_after(2) as scope:
        async with session_with(emulator) as (session, _):
            await speak(session, "never answered")
            await trio.sleep(1000)
    assert scope.cancelled_caught
    assert trio.current_time() < 10


async def test_an_error_in_the_block_is_raised_as_itself(autojump_clock: Any) -> None:
    emulator = Emulator()
    with pytest.raises(KeyError, match="mine"):
        async with session_with(emulator) as (session, _):
            await speak(session, "then a bug")
            raise KeyError("mine")


async def test_the_key_is_never_logged(autojump_clock: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="pulse_trio")
    emulator = Emulator()
    emulator.faults.drop(at_seconds=0.2)
    async with session_with(emulator) as (session, _):
        await speak(session, "log everything")
    records = [r for r in caplog.records if r.name.startswith("pulse_trio")]
    assert records
    for record in records:  # the emulator's (pulse_trio.emulator) too
        assert KEY not in record.getMessage()
        if record.name == "pulse_trio":
            assert getattr(record, "session_id", None) == session.id


async def test_server_text_echoing_the_key_is_logged_redacted(
    autojump_clock: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="pulse_trio")
    emulator = Emulator()
    emulator.faults.malformed(f"{{not json, your key was {KEY}", after_bytes=1)
    async with session_with(emulator) as (session, events):
        await speak(session, "echo")
    assert kinds(events, MalformedMessage) == ["MalformedMessage"]
    problems = [r.getMessage() for r in caplog.records if "server problem" in r.getMessage()]
    assert problems and all("<redacted>" in text and KEY not in text for text in problems)


async def test_send_audio_waits_when_the_outgoing_buffer_is_full(autojump_clock: Any) -> None:
    emulator = Emulator()
    waits: list[float] = []
    async with session_with(emulator, outgoing_buffer=4096, max_chunk_delay=0) as (session, _):
        await trio.sleep(0.1)
        chunk = encode(["x"], trail=1.0)[:3200]
        for _ in range(50):
            before = trio.current_time()
            await session.send_audio(chunk)
            waits.append(trio.current_time() - before)
            assert session._outgoing_bytes <= 4096 + len(chunk)
        await session.speech_stopped()


def _unused(_: Callable[..., Any]) -> None:  # keeps the import list honest for mypy
    pass


async def test_send_audio_takes_all_or_nothing_and_yields_only_when_behind(
    autojump_clock: Any,
) -> None:
    emulator = Emulator()
    async with session_with(emulator, chunk_bytes=640) as (session, events):
        with trio.testing.assert_checkpoints():
            await session.send_audio(bytes(640))  # connecting: other tasks run
        await trio.sleep(0.1)  # connected: whole frames are written at once
        taken = session.engine.summary().audio_seconds_sent
        with trio.CancelScope() as scope:
            scope.cancel()
            await session.send_audio(bytes(640))  # a cancel point: raises, takes nothing
        assert scope.cancelled_caught
        await trio.sleep(0.1)
        assert session.engine.summary().audio_seconds_sent == taken

        # A cancel point and a schedule point both (trio.testing's "checkpoint")
        # only while connecting or while audio sent before is still unwritten; with
        # nothing behind, a cancel point only (trio counts it), no schedule point.
        with (
            pytest.raises(AssertionError, match="did not yield"),
            trio.testing.assert_checkpoints(),
        ):
            await session.send_audio(bytes(640))
        with trio.testing.assert_checkpoints():
            await session.send_audio(bytes(640))  # the first is not written yet
        with trio.CancelScope() as scope:
            await session.send_audio(bytes(640))
            scope.cancel()  # taken: the cancellation comes at the next checkpoint
            await trio.sleep(0)
        await trio.sleep(0.1)
        assert session.engine.summary().audio_seconds_sent == taken + 3 * 0.02
    assert kinds(events, Closed) == ["Closed"]
