"""The events on their way to handlers and ``events()``: bounded in count and bytes.

Against the emulator over in-memory streams on trio's virtual clock. Large
interims are injected with the emulator's ``malformed`` fault, which sends any
text as it is (here: valid interims, numbered so their order shows).
"""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from typing import Any

import pytest
import trio
import trio.testing

from pulse_core import (
    Closed,
    ConfigurationError,
    Connected,
    ConnectionConfig,
    Event,
    LocalProtocolError,
    MalformedMessage,
    PulseConnection,
    ServerError,
    Settings,
    Transcript,
    UnhandledMessage,
)
from pulse_trio import Session, open_session
from pulse_trio._session import _EVENT_BYTES, _message_bytes
from pulse_trio.emulator import Emulator
from pulse_trio.emulator.token_audio import encode

KEY = "sk_event_buffer_test_key_0123456789"
URL = "ws://127.0.0.1:8765"  # reached in memory, never dialled


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def interim(number: int, size: int) -> str:
    """An interim transcription of ``size`` characters whose text starts with ``number``."""
    head = f'{{"type":"transcription","is_final":false,"transcript":"#{number} '
    return head + "x" * (size - len(head) - 2) + '"}'


def number(event: Event) -> int | None:
    """The number of an injected interim, or None for any other event."""
    if isinstance(event, Transcript) and event.text.startswith("#"):
        return int(event.text[1:].split(" ", 1)[0])
    return None


def inject(emulator: Emulator, count: int, size: int) -> None:
    """``count`` interims of ``size`` characters, sent at once when audio first arrives."""
    for n in range(count):
        emulator.faults.malformed(interim(n, size))


def held(session: Session) -> tuple[int, int]:
    """(events, bytes) the session holds for handlers and events() together."""
    return (
        len(session._events) + len(session._kept),
        session._events.bytes + session._kept_bytes,
    )


def cost(size: int) -> int:
    """What one injected interim of ``size`` characters counts for."""
    return _EVENT_BYTES + _message_bytes(interim(0, size))


async def test_a_handler_only_session_keeps_no_more_than_the_bounds(
    autojump_clock: Any,
) -> None:
    # 40 interims of 64 KB: 2.5 MB of events, none of them ever read from events().
    emulator = Emulator()
    inject(emulator, 40, 64_000)
    bound = 300_000
    seen: list[int] = []
    most = (0, 0)
    async with open_session(
        KEY,
        base_url=URL,
        connector=emulator.memory_connector(),
        event_buffer_bytes=bound,
        unread_event_bytes=bound,
    ) as session:

        def watch(event: Event) -> None:
            nonlocal most
            count, size = held(session)
            most = (max(most[0], count), max(most[1], size))
            if (n := number(event)) is not None:
                seen.append(n)

        session.event_handler("on_event")(watch)
        await session.send_audio(encode(["go"], trail=0.1))
        with trio.fail_after(5):
            while len(seen) < 40:
                await trio.sleep(0.01)
        assert held(session)[1] <= bound
        with pytest.raises(LocalProtocolError, match="event_buffer_bytes"):
            async for _ in session.events():
                pass
    assert seen == list(range(40))  # handlers got every one, in order
    # At most one server message's events beyond the bound, at any moment.
    assert most[1] <= bound + cost(64_000)
    assert held(session) == (0, 0)


async def test_a_handler_only_session_keeps_little_for_an_iterator_it_never_opens(
    autojump_clock: Any,
) -> None:
    # 60 interims of 2,000 characters, about 190 KiB as the session counts
    # them: with the default bounds it keeps 16 KiB of them at most for an
    # events() not yet opened, then none.
    emulator = Emulator()
    inject(emulator, 60, 2_000)
    seen: list[int] = []
    most = 0
    async with open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session:

        def watch(event: Event) -> None:
            nonlocal most
            most = max(most, session._kept_bytes)
            if (n := number(event)) is not None:
                seen.append(n)

        session.event_handler("on_event")(watch)
        await session.send_audio(encode(["go"], trail=0.1))
        with trio.fail_after(5):
            while len(seen) < 60:
                await trio.sleep(0.01)
        assert held(session) == (0, 0)  # handlers are done: nothing is held for events()
        with pytest.raises(LocalProtocolError, match="unread_event_bytes=16384"):
            async for _ in session.events():
                pass
    assert seen == list(range(60))  # handlers got every one, in order
    assert 0 < most <= 16 << 10


async def test_the_count_bound_holds_for_small_events(autojump_clock: Any) -> None:
    emulator = Emulator()
    inject(emulator, 30, 200)
    async with open_session(
        KEY, base_url=URL, connector=emulator.memory_connector(), event_buffer=8
    ) as session:
        seen: list[Event] = []
        session.event_handler("on_event")(seen.append)
        await session.send_audio(encode(["go"], trail=0.1))
        with trio.fail_after(5):
            while sum(number(e) is not None for e in seen) < 30:
                await trio.sleep(0.01)
        assert held(session)[0] <= 8
        with pytest.raises(LocalProtocolError, match="event_buffer"):
            async for _ in session.events():
                pass


async def test_the_default_bound_holds_what_handlers_leave_behind(autojump_clock: Any) -> None:
    # 24 interims of 900 KB (20 MiB in all) with the default bounds: the
    # session keeps at most 8 MiB of them for an events() that never comes.
    emulator = Emulator()
    inject(emulator, 24, 900_000)
    seen: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        async with open_session(
            KEY, base_url=URL, connector=emulator.memory_connector()
        ) as session:
            session.event_handler("on_event")(
                lambda event: seen.append(n) if (n := number(event)) is not None else None
            )
            start = tracemalloc.get_traced_memory()[0]
            await session.send_audio(encode(["go"], trail=0.1))
            with trio.fail_after(5):
                while len(seen) < 24:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert seen == list(range(24))
    assert kept < 8 << 20, f"the session kept {kept / 2**20:.1f} MiB of events"


async def test_a_slow_iterator_gets_every_event_in_order_under_back_pressure(
    autojump_clock: Any,
) -> None:
    emulator = Emulator()
    inject(emulator, 30, 64_000)
    bound = 300_000
    handled: list[Event] = []
    iterated: list[Event] = []
    most = 0
    async with (
        trio.open_nursery() as nursery,
        open_session(
            KEY,
            base_url=URL,
            connector=emulator.memory_connector(),
            event_buffer_bytes=bound,
            # The engine refuses any input while it holds undrained output: the
            # session must keep draining it while it stops reading the server.
            max_pending_outputs=1,
        ) as session,
    ):
        session.event_handler("on_event")(handled.append)

        async def read() -> None:
            nonlocal most
            async for event in session.events():
                most = max(most, held(session)[1])
                iterated.append(event)
                await trio.sleep(0.1)  # 3 s for the interims: a slow reader

        nursery.start_soon(read)
        await session.send_audio(encode(["go"], trail=0.1))
        with trio.fail_after(10):
            while sum(number(e) is not None for e in iterated) < 30:
                await trio.sleep(0.01)
                # The reader is held back: the interims arrive as they are read.
                unread = sum(number(e) is not None for e in handled) - sum(
                    number(e) is not None for e in iterated
                )
                assert unread <= bound // 64_000 + 1
    assert [type(e) for e in iterated] == [type(e) for e in handled]
    assert [number(e) for e in iterated if number(e) is not None] == list(range(30))
    assert isinstance(iterated[0], Connected) and isinstance(iterated[-1], Closed)
    assert most <= bound + cost(64_000)


async def test_a_late_iterator_gets_every_event_kept_so_far_then_the_rest(
    autojump_clock: Any,
) -> None:
    emulator = Emulator()
    inject(emulator, 3, 2_000)  # about 9 KiB as the session counts them: all kept
    handled: list[Event] = []
    iterated: list[Event] = []
    async with (
        trio.open_nursery() as nursery,
        open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session,
    ):
        session.event_handler("on_event")(handled.append)
        await session.send_audio(encode(["early"], trail=0.1))
        with trio.fail_after(5):
            while sum(number(e) is not None for e in handled) < 3:
                await trio.sleep(0.01)
        await trio.sleep(1)

        async def read() -> None:
            iterated.extend([event async for event in session.events()])

        nursery.start_soon(read)  # opened late: nothing was read until now
        await session.send_audio(encode(["later", "words"], trail=0.2))
        await session.speech_stopped()
    assert isinstance(iterated[0], Connected)
    assert iterated == handled
    assert isinstance(iterated[-1], Closed)
    assert any(isinstance(e, Transcript) and e.is_final and "later" in e.text for e in iterated)


async def test_a_late_iterator_after_the_bounds_were_passed_raises_at_once(
    autojump_clock: Any,
) -> None:
    emulator = Emulator()
    inject(emulator, 10, 64_000)
    handled: list[Event] = []
    async with open_session(
        KEY, base_url=URL, connector=emulator.memory_connector(), event_buffer_bytes=200_000
    ) as session:
        session.event_handler("on_event")(handled.append)
        await session.send_audio(encode(["early"], trail=0.1))
        with trio.fail_after(5):
            while sum(number(e) is not None for e in handled) < 10:
                await trio.sleep(0.01)
        with pytest.raises(LocalProtocolError, match="went unread") as info:
            async for _ in session.events():
                pytest.fail("no event may come after the session stopped keeping them")
        assert KEY not in str(info.value)
        await session.send_audio(encode(["later"], trail=0.2))  # the session goes on
    assert isinstance(handled[-1], Closed) and handled[-1].error is None
    assert any(isinstance(e, Transcript) and e.is_final and "later" in e.text for e in handled)


async def test_events_are_kept_for_one_iterator(autojump_clock: Any) -> None:
    emulator = Emulator()
    async with open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session:
        first = session.events()
        with trio.fail_after(5):
            assert isinstance(await first.__anext__(), Connected)
            with pytest.raises(LocalProtocolError, match="already being iterated"):
                await session.events().__anext__()
            await first.aclose()  # left early: the session stops keeping events
            assert held(session) == (0, 0)
            with pytest.raises(LocalProtocolError, match="already iterated"):
                await session.events().__anext__()
        await session.send_audio(encode(["still", "fine"], trail=0.1))


async def test_an_iterator_opened_after_the_block_gets_the_events_kept(
    autojump_clock: Any,
) -> None:
    emulator = Emulator()
    async with open_session(KEY, base_url=URL, connector=emulator.memory_connector()) as session:
        await session.send_audio(encode(["kept"], trail=0.1))
    with trio.fail_after(5):
        events = [event async for event in session.events()]
    assert isinstance(events[0], Connected) and isinstance(events[-1], Closed)
    assert any(isinstance(e, Transcript) and e.is_final and e.text == "kept" for e in events)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1024", None])
@pytest.mark.parametrize(
    "name", ["event_buffer", "event_buffer_bytes", "unread_event_bytes", "outgoing_buffer"]
)
async def test_buffer_sizes_are_checked_before_connecting(name: str, value: Any) -> None:
    emulator = Emulator()
    with pytest.raises(ConfigurationError) as info:
        async with open_session(
            KEY, base_url=URL, connector=emulator.memory_connector(), **{name: value}
        ):
            pytest.fail("the session must not start")
    assert info.value.field == name
    assert info.value.value == value
    assert "at least 1" in str(info.value)
    assert emulator.handshakes == 0


# -- the size of an event ---------------------------------------------------------------

_WORD = {"word": "hello", "start": 0.5, "end": 0.75, "confidence": 0.93}


def _transcription(**fields: Any) -> str:
    message = {"type": "transcription", "is_final": False, "session_id": "s1", **fields}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


#: Server messages, the event each becomes, and whether its count must also be
#: close to what it holds (junk and malformed frames are counted high: fine).
SHAPES: dict[str, tuple[str, type, bool]] = {
    "a short interim": (_transcription(transcript="hi"), Transcript, True),
    "plain text": (_transcription(transcript="hello there " * 40_000), Transcript, True),
    "word timestamps": (
        # An interim: the same final five times would be a repeat (PROTOCOL §5).
        _transcription(transcript="hello " * 3_000, words=[_WORD] * 3_000),
        Transcript,
        True,
    ),
    "words with speakers": (
        _transcription(
            transcript="hello " * 2_000,
            words=[{**_WORD, "speaker": 1, "speaker_confidence": 0.8}] * 2_000,
        ),
        Transcript,
        True,
    ),
    "utterances": (
        _transcription(
            transcript="x", utterances=[{"text": "hello there", "start": 0.1, "end": 0.2}] * 3_000
        ),
        Transcript,
        True,
    ),
    "non-ASCII text": (_transcription(transcript="ünïcødé テキスト 🎙 " * 20_000), Transcript, True),
    "junk: empty objects": (_transcription(transcript="x", junk=[{}] * 100_000), Transcript, False),
    "junk: empty lists": (_transcription(transcript="x", junk=[[]] * 100_000), Transcript, False),
    "junk: numbers": (_transcription(transcript="x", junk=[0.5] * 100_000), Transcript, False),
    "junk: short strings": (
        _transcription(transcript="x", junk=["ab"] * 100_000),
        Transcript,
        False,
    ),
    "junk: nested": (
        _transcription(transcript="x", junk=[{"a": [{"b": [1.5]}]}] * 20_000),
        Transcript,
        False,
    ),
    "an unknown message": (
        json.dumps({"type": "novel", "data": [{}] * 100_000}),
        UnhandledMessage,
        False,
    ),
    "a long error": (json.dumps({"type": "error", "message": "m" * 500_000}), ServerError, True),
    "not JSON": ("{" * 100_000, MalformedMessage, False),
}


@pytest.mark.parametrize(("text", "kind", "close"), list(SHAPES.values()), ids=list(SHAPES))
def test_an_events_size_is_never_less_than_the_memory_it_holds(
    text: str, kind: type, close: bool
) -> None:
    config = ConnectionConfig(api_key=KEY, settings=Settings(word_timestamps=True))
    engine = PulseConnection(config, jitter=random.Random(1))
    engine.start(0.0)
    engine.connection_opened(0.0)
    engine.send_audio(0.0, bytes(32000 * 600))
    engine.commands()
    engine.events()
    kept: list[list[Event]] = []
    now = 1.0
    engine.receive_message(now, text)  # the first: caches and interned strings
    kept.append(engine.events())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4):
            now += 0.01
            engine.receive_message(now, text)
            kept.append(engine.events())
        gc.collect()
        real = (tracemalloc.get_traced_memory()[0] - before) / 4
    finally:
        tracemalloc.stop()
    assert [[type(event) for event in events] for events in kept] == [[kind]] * 5
    counted = _EVENT_BYTES + _message_bytes(text)
    assert real <= counted, f"{real:.0f} bytes held, counted as {counted}"
    if close:
        assert counted <= 2 * real, f"{real:.0f} bytes held, counted as {counted}"
