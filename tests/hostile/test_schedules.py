"""pulse against generated misbehaviour schedules of the hostile server.

Hypothesis draws a :class:`~tests.hostile.strategies.Schedule`: what the
server does on each connection, what the application does, and the session's
timeouts (``strategies.py`` says what may be drawn). :func:`play` runs it
through ``open_session()`` over loopback sockets, on the real clock, and then
every promise pulse makes that does not depend on what the server did is
checked, end to end:

1. every sample of the audio given is in exactly one final's words or in
   exactly one ``AudioDropped`` (``checks.assert_every_sample_once``), and
   every word starts where its audio was given (``assert_words_where_given``);
2. every finalize sent, by the application or by the engine, is answered
   exactly once: a ``Transcript(finalized=True)`` or a ``FinalizeTimedOut``
   (PROTOCOL §6 rule 3; at the end of the session what will not come is timed
   out), and a late answer only follows a time-out;
3. only a ``SessionFailedError`` leaves ``open_session``, never an
   ExceptionGroup, and exactly when ``Closed.error`` says the session failed;
   ``Closed`` comes once and last; ``Connected`` and ``Disconnected`` alternate;
4. the session ends within a bound its configuration sets, under a hard
   ``trio.fail_after``; the memory it takes (``tracemalloc``'s peak, the
   server's included) stays under :data:`MEMORY`;
5. no 8-character piece of the key shows in the exception, any event (fields,
   repr, raw) or any log record at DEBUG, trio-websocket's included.

The CI run draws :data:`EXAMPLES` schedules, the same ones every time
(``derandomize``). A longer run explores new ones: ``PULSE_SCHEDULES=3000``
draws that many from the run's seed (``--hypothesis-seed``, printed in the
report header). A failing schedule is printed as Python (a ``schedule:``
note): pass it to :func:`run` in a test to replay it. Actions that trip a bug
already pinned by a strict xfail are left out of the draw (:data:`KNOWN`).
"""

from __future__ import annotations

import logging
import math
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis.control import currently_in_test_context

from pulse_core import (
    Closed,
    Connected,
    Disconnected,
    Event,
    FinalizeTimedOut,
    Transcript,
)
from pulse_trio import Session, SessionFailedError, open_session
from tests.hostile import KEY, speech
from tests.hostile.checks import (
    Outcome,
    assert_every_sample_once,
    assert_words_where_given,
    everything_said,
    key_pieces,
)
from tests.hostile.server import ConnectionRecord, HostileServer, serving
from tests.hostile.strategies import (
    BYTES_PER_SECOND,
    AwaitFinal,
    Finalize,
    Pause,
    Schedule,
    Speak,
    Step,
    Switch,
    schedules,
    shown,
)

#: Schedules in a CI run; ``PULSE_SCHEDULES`` asks for another number (drawn afresh).
EXAMPLES = 200
#: Bytes the whole process may allocate beyond what it held when a schedule began.
MEMORY = 32 << 20
#: Seconds of slack on every time bound (a loaded machine, the scheduler).
SLACK = 1.0
#: What ``Session.aclose`` waits beyond ``close_timeout + connect_timeout`` for
#: the last events, then for the sockets to close (``_session.py``).
ACLOSE_EXTRA = 1.0 + 2.0


@attrs.define
class Played:
    """What a schedule did: the session's outcome and what the test measured."""

    outcome: Outcome
    #: Bytes of audio pulse took from the application.
    given: int = 0
    #: Turns the application's finalize requests opened.
    user_turns: int = 0
    #: Turns the engine opened in all (the application's and its own).
    turns: int = 0
    #: Seconds from the end of the plan to the end of ``open_session``.
    closing: float = 0.0
    #: Log records at DEBUG, from every logger.
    records: list[logging.LogRecord] = attrs.field(factory=list)
    peak: int = 0
    #: What the server recorded of each connection.
    connections: list[ConnectionRecord] = attrs.field(factory=list)

    @property
    def ended_early(self) -> bool:
        """pulse ended the session on an ``is_last`` that the server sent
        before it had read a ``close_stream``: pulse had sent its own by the
        time it read it, and nothing tells the two apart (PROTOCOL §6 rule 6
        takes it as the answer)."""
        lasts = [e for e in self.outcome.of(Transcript) if e.is_last]
        if not lasts:
            return False
        source = lasts[-1].raw.get("session_id")  # "hostile-<connection>"
        read = sum(1 for e in lasts if e.raw.get("session_id") == source)
        for record in self.connections:
            if source == f"hostile-{record.number}":
                sent = [final for final in record.finals if final.is_last]
                return len(sent) >= read and not sent[read - 1].close_streams
        return False


class _Records(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: Loggers kept from pytest's own capture while a schedule runs (they log every
#: frame at DEBUG); their records still reach the check.
CHATTY = ("trio-websocket", "pulse_trio")


@contextmanager
def debug_logs(records: list[logging.LogRecord]) -> Iterator[None]:
    """Every log record at DEBUG, from any logger, into ``records``."""
    handler = _Records(records)
    loggers = [logging.getLogger(), *map(logging.getLogger, CHATTY)]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        if logger.name in CHATTY:
            logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


@contextmanager
def _tracing() -> Iterator[None]:
    """Trace allocations (the peak counts from here), unless already tracing."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def opened_turns(session: Session) -> int:
    """Turns the engine has opened so far: answered, timed out or pending."""
    engine = session.engine
    summary = engine.summary()
    return summary.finalized_turns + summary.timed_out_turns + engine.pending_finalizes


def limit(schedule: Schedule) -> float:
    """Seconds the whole schedule may take: the plan's own waits, then the
    close (``close_timeout``, a handshake's ``connect_timeout`` and what
    ``aclose`` adds)."""
    knobs = schedule.knobs
    plan = schedule.waits + 0.05 * len(schedule.plan)
    return plan + knobs.close_timeout + knobs.connect_timeout + ACLOSE_EXTRA + SLACK


async def _step(session: Session, step: Step, played: Played, finals: list[Transcript]) -> None:
    if isinstance(step, Speak):
        start = played.given // 2
        audio = speech(step.samples / 16000, offset=start / 16000)
        for offset in range(0, len(audio), step.chunk):
            chunk = audio[offset : offset + step.chunk]
            await session.send_audio(chunk)
            played.given += len(chunk)
    elif isinstance(step, Finalize):
        before = opened_turns(session)
        if step.vad:
            await session.speech_stopped()
        else:
            await session.finalize()
        played.user_turns += opened_turns(session) - before
    elif isinstance(step, Pause):
        await trio.sleep(step.seconds)
    elif isinstance(step, Switch):
        if step.field == "diarize":
            await session.update_settings(diarize=not session.settings.diarize)
        else:
            language = "hi" if session.settings.language == "en" else "en"
            await session.update_settings(language=language)
    elif isinstance(step, AwaitFinal):
        seen = len(finals)
        with trio.move_on_after(step.within):
            while len(finals) == seen:
                await trio.sleep(0.005)


async def _session(server: HostileServer, schedule: Schedule, played: Played) -> None:
    events = played.outcome.events
    finals: list[Transcript] = []

    def keep(event: Event) -> None:
        events.append(event)
        if isinstance(event, Transcript) and event.is_final:
            finals.append(event)

    ended = math.inf
    opened: Session | None = None
    try:
        async with open_session(
            KEY, base_url=server.url, settings={"language": "en"}, **schedule.knobs.options()
        ) as session:
            opened = session
            session.event_handler("on_event")(keep)
            try:
                for step in schedule.plan:
                    await _step(session, step, played, finals)
            finally:
                ended = trio.current_time()
    except Exception as exc:  # an ExceptionGroup too: check() looks for it
        played.outcome.error = exc
    played.closing = trio.current_time() - ended if ended != math.inf else 0.0
    if opened is not None:
        played.turns = opened_turns(opened)


async def play(schedule: Schedule) -> Played:
    """Run ``schedule``: the hostile server plays its scripts while the
    application follows its plan; everything is recorded, nothing raised
    (but a run over its time limit)."""
    played = Played(Outcome([], None))
    bound = limit(schedule)
    with debug_logs(played.records), _tracing():
        base = tracemalloc.get_traced_memory()[0]
        async with serving(*schedule.scripts, then=schedule.then, limit=bound + 5.0) as server:
            with trio.fail_after(bound):
                await _session(server, schedule, played)
            played.connections = list(server.connections)
        played.peak = tracemalloc.get_traced_memory()[1] - base
    return played


def check(schedule: Schedule, played: Played) -> None:
    """Everything pulse promises, whatever the server did (the module docstring)."""
    outcome = played.outcome
    error = outcome.error
    # 3. Only documented exceptions, exactly when the session failed.
    assert error is None or (
        isinstance(error, SessionFailedError) and not isinstance(error, BaseExceptionGroup)
    ), f"open_session raised {error!r}"
    closed = outcome.of(Closed)
    assert len(closed) == 1 and outcome.events[-1] is closed[0], (
        f"Closed must come once, last: {[type(e).__name__ for e in outcome.events]}"
    )
    assert (error is None) == (closed[0].error is None), (
        f"open_session raised {error!r}, Closed.error is {closed[0].error!r}"
    )
    links = [e for e in outcome.events if isinstance(e, Connected | Disconnected)]
    assert [type(e) for e in links] == [Connected, Disconnected] * (len(links) // 2), (
        f"Connected and Disconnected must alternate and balance: {links}"
    )
    # 1. Every sample once. An is_last the server sent before it read
    # close_stream may end the session early: the audio after it is then lost
    # unreported, as pulse's rule says, and only there.
    given = played.given / BYTES_PER_SECOND
    assert_every_sample_once(outcome, 0.0 if played.ended_early else given)
    assert_words_where_given(outcome, played.connections)
    # 2. Every finalize answered once.
    answers: dict[int, list[str]] = {}
    for event in outcome.events:
        if isinstance(event, FinalizeTimedOut):
            answers.setdefault(event.turn, []).append("timed out")
        elif isinstance(event, Transcript) and event.turn is not None:
            assert event.is_final, f"an interim answers turn {event.turn}"
            assert event.from_finalize is not False, f"an automatic final answers: {event}"
            answers.setdefault(event.turn, []).append("late" if event.late else "answered")
    assert played.turns >= played.user_turns, (
        f"the application opened {played.user_turns} turns, the engine counts {played.turns}"
    )
    for turn in range(1, played.turns + 1):
        got = answers.pop(turn, [])
        assert got in (["answered"], ["timed out"], ["timed out", "late"]), (
            f"finalize {turn} of {played.turns} was answered {got or 'never'}"
        )
    assert not answers, f"answers to finalizes never sent: {answers}"
    # 4. Time and memory.
    knobs = schedule.knobs
    most = knobs.close_timeout + knobs.connect_timeout + ACLOSE_EXTRA + SLACK
    assert played.closing <= most, f"closing took {played.closing:.2f} s (at most {most:.2f})"
    assert played.peak <= MEMORY, f"the session took {played.peak / (1 << 20):.1f} MiB"
    # 5. The key never shows.
    leaks = key_pieces(everything_said(outcome, played.records))
    assert leaks == [], f"the key shows: {leaks}"


def _note(text: str) -> None:
    if currently_in_test_context():  # run() also replays a schedule outside @given
        note(text)


def run(schedule: Schedule) -> Played:
    """Play ``schedule`` and check it (a failing schedule, pasted, replays here)."""
    _note(f"schedule: {shown(schedule)}")
    played = trio.run(play, schedule)
    _note(f"events: {played.outcome.events!r}")
    _note(f"error: {played.outcome.error!r}")
    check(schedule, played)
    return played


_COUNT = os.environ.get("PULSE_SCHEDULES")
SCHEDULES = settings(
    max_examples=int(_COUNT) if _COUNT else EXAMPLES,
    derandomize=not _COUNT,
    database=None,
    deadline=None,
    print_blob=True,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: Actions that trip a known bug, left out of the draw until it is fixed (each
#: has its strict xfail in test_hostile_today.py, the fix takes it off this list).
KNOWN: frozenset[type] = frozenset()


@SCHEDULES
@given(schedule=schedules(leave_out=KNOWN))
def test_generated_schedules(schedule: Schedule) -> None:
    run(schedule)
