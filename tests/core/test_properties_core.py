"""Stateful property tests of PulseConnection: nothing lost, nothing twice, order kept.

A Hypothesis ``RuleBasedStateMachine`` drives the engine through any
interleaving of application inputs (token-audio words in odd chunk sizes,
silence, VAD calls, finalize, settings changes, close) and faults (handshakes
refused with 5xx/429/4xx or never answered, sockets dropped with any close
code, server replies held back and delivered in bursts, error messages in the
three documented shapes, transient and permanent, malformed frames and unknown
message types slipped in among the replies, the clock jumping past every
timeout) and documented misuses. The service is ``tests.core.model_server``: a
simulated transport serving each socket with the emulator's ``ServerSession``
and token engine, so every final's words are exactly the words whose audio
reached that socket.

Words are unique (``w1``, ``w2``, ...) so that order, loss and duplication are
visible. After every step, and at teardown once the session has been driven
to ``Closed``, the machine checks the invariants below (numbers as in the
test plan; spec/PROTOCOL.md section 6 has the rules they come from):

1. Every finalize request is answered by exactly one finalized ``Transcript``
   or one ``FinalizeTimedOut``, in request order; only answers to a finalize
   are marked finalized, and an answer covers every word before its finalize.
2. The final transcripts' words are the words given, in order, none missing,
   none repeated; with ``AudioDropped``, exactly the words whose audio lies in
   the dropped ranges are missing (a word cut by a range may leave a fragment
   inside its own span, and nothing else).
3. Word times are session time: exactly where the word's audio was given, and
   never going backwards.
4. Nothing is sent without an open socket or after ``Closed``; ``close_stream``
   at most once per connection and nothing after it; keepalive silence only
   after ``keepalive_interval`` without audio.
5. After a settings change every connection opened carries the new parameters.
6. ``Connected``/``Disconnected`` alternate and balance; permanent failures are
   never retried; ``Reconnecting`` delays stay inside the policy's bounds and
   the retry does not come early.
7. ``buffered_bytes`` never exceeds the replay bound plus one frame.
8. No exception escapes the engine in correct use; each misuse (input after
   close(), invalid settings, non-bytes audio, time going backwards, start()
   twice, connection_opened() with no attempt) raises its documented exception
   and changes nothing; every interjected frame becomes exactly one
   ``ServerError``/``MalformedMessage``/``UnhandledMessage``; a transport
   following section 8 never spins on a due deadline.

What became of each word (2, 3 and the words of 1) is kept by the word ledger,
tests/word_ledger.py, which the adapter's chaos suite shares.

Reproducing a failure: Hypothesis prints the failing program of steps; the
run's seed is in the pytest header and in the failing test's report
(tests/conftest.py), and ``python -m pytest <test> --hypothesis-seed=N``
replays it. Long runs: ``python -m pytest -m slow tests/core/test_properties_core.py``
(3000 examples per machine).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pulse_core import (
    AudioDropped,
    Closed,
    ConfigurationError,
    Connected,
    ConnectionConfig,
    ConnectionFailed,
    Disconnected,
    DropReason,
    FinalizeTimedOut,
    LocalProtocolError,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SettingsApplied,
    State,
    Transcript,
    UnhandledMessage,
)
from tests.core.model_server import (
    API_KEY,
    RATE,
    WIDTH,
    Drive,
    Injected,
    Step,
    query_of,
    quiet,
    raw_delay,
    word_audio,
)
from tests.word_ledger import WordLedger

PERMANENT_STATUSES = (400, 401, 403)
EOU_VALUES = (100, 300, 800, 2000)
MOST_CHUNKS = 12  # a word or a silence is given in at most about this many calls
# How a handshake ends: mostly it opens; "permanent" is a 400/401/403.
CONNECT_OUTCOMES = ("open",) * 10 + ("503", "500", "429", "none", "reset") + ("permanent",)
PERMANENT_CODE = "LANGUAGE_NOT_ENABLED_IN_REGION"
# Frames a server may send besides transcripts (spec/PROTOCOL.md section 4): errors in
# the three documented shapes, frames that are not messages, message types unknown to
# this version. Each must become exactly one event; none may disturb the session.
INTERJECTIONS: dict[str, Injected] = {
    "error-1": Injected(
        '{"type": "error", "status": "error", "message": "overloaded"}', "ServerError"
    ),
    "error-2": Injected(
        '{"type": "error", "error_code": "INTERNAL_ERROR", "message": "oops"}', "ServerError"
    ),
    "error-3": Injected(
        '{"status": "error", "error": {"message": "slow down", "code": "RATE_LIMITED"}}',
        "ServerError",
    ),
    "not-json": Injected("{this is not json", "MalformedMessage"),
    "wrong-fields": Injected(
        '{"type": "transcription", "is_final": "yes", "transcript": 7}', "MalformedMessage"
    ),
    "binary": Injected(b"\x00\x01binary", "MalformedMessage"),
    "unknown-type": Injected('{"type": "usage", "seconds": 1.5}', "UnhandledMessage"),
    "permanent": Injected(
        json.dumps({"status": "error", "error": {"message": "not here", "code": PERMANENT_CODE}}),
        "ServerError",
        permanent=True,
    ),
}
INTERJECTION_EVENTS = (ServerError, MalformedMessage, UnhandledMessage)
# Misuses of the engine and the documented exception each must raise (spec section 6
# rule 8 and the methods' docstrings); ``closed`` is the exception once close() was called.
MISUSES = (
    "audio-after-close",
    "finalize-after-close",
    "settings-after-close",
    "vad-after-close",
    "invalid-settings",
    "audio-not-bytes",
    "time-backwards",
    "start-twice",
    "opened-without-attempt",
)

F = TypeVar("F", bound=Callable[..., Any])


def sizes(most: int) -> st.SearchStrategy[int]:
    """Chunk sizes from 1 to ``most`` bytes (odd ones too) that shrink towards
    ``most``: a failing example then shrinks to few, large chunks, fast to replay."""
    return st.integers(0, most - 1).map(lambda n: most - n)


def guarded(function: F) -> F:
    """Mark the machine broken when a step fails, so teardown does not mask it."""

    @functools.wraps(function)
    def wrapper(self: PulseMachine, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return wrapper  # type: ignore[return-value]


def require(problems: list[str]) -> None:
    """Fail at once on what the word ledger found (tests/word_ledger.py)."""
    assert not problems, "\n".join(problems)


class PulseMachine(RuleBasedStateMachine):
    """Sessions under arbitrary faults, with a big replay buffer (nothing overflows).

    Each example runs one session after another (``new_session`` once one has
    closed); teardown drives the last one to ``Closed`` and checks it whole.
    """

    replay_choices: tuple[float, ...] = (3600.0,)

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    # -- setup ---------------------------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        chunk_bytes=st.sampled_from([4096, 512, 1000]),
        max_chunk_delay=st.sampled_from([0.1, 0.0, 0.25]),
        close_timeout=st.sampled_from([60.0, 5.0]),
        replay_index=st.integers(0, 3),
        timeouts=st.sampled_from([(5.0, 5.0), (1.0, 1.0), (5.0, 1.0), (1.0, 5.0)]),
        max_attempts=st.sampled_from([10, 3, None]),
        pending_limit=st.sampled_from([64, 2]),
        start=st.sampled_from([True, True, True, False]),
        eou=st.sampled_from([None, None, 100, 300]),
        chatter=st.lists(
            st.sampled_from([None] * 4 + sorted(set(INTERJECTIONS) - {"permanent"})),
            max_size=12,
        ),
    )
    @guarded
    def setup(
        self,
        seed: int,
        chunk_bytes: int,
        max_chunk_delay: float,
        close_timeout: float,
        replay_index: int,
        timeouts: tuple[float, float],
        max_attempts: int | None,
        pending_limit: int,
        start: bool,
        eou: int | None,
        chatter: list[str | None],
    ) -> None:
        replay = self.replay_choices[replay_index % len(self.replay_choices)]
        self.config = ConnectionConfig(
            api_key=API_KEY,
            base_url="ws://127.0.0.1:9",
            encoding="linear16",
            sample_rate=RATE,
            chunk_bytes=chunk_bytes,
            max_chunk_delay=max_chunk_delay,
            close_timeout=close_timeout,
            replay_seconds=replay,
            finalize_timeout=timeouts[0],
            keepalive_interval=timeouts[1],
            reconnect={"max_attempts": max_attempts},
            max_pending_finalizes=pending_limit,
            # A short end-of-utterance timeout makes automatic finals common: they
            # confirm audio up to a word's end, mid-frame, which replay must respect.
            settings={} if eou is None else {"eou_timeout_ms": eou},
        )
        self.initial_eou = eou
        self.jitter = random.Random(seed)
        # Frames the server slips in after its replies, in turn (see INTERJECTIONS).
        self.chatter = [None if kind is None else INTERJECTIONS[kind] for kind in chatter]
        self.chatter_turn = 0
        self.begin_session(start)

    def begin_session(self, start: bool) -> None:
        self.drive = Drive(
            self.config, jitter=self.jitter, observer=self.observe, chatter=self.next_chatter
        )
        # What the application gave; the ledger also follows what became of each word.
        self.ledger = WordLedger(RATE)
        self.given_bytes = 0
        self.current: bytes | None = None  # rest of the word (and its gap) being given
        self.current_since = 0.0
        self.last_finalize_tick = 0
        self.close_requested = False
        self.diarize: bool | None = None
        self.eou: int | None = self.initial_eou
        # What the engine reported.
        self.turn_positions: list[int] = []  # session tick of each turn's finalize
        self.answered: list[int] = []  # turns, finalized or timed out, in event order
        self.timed_out: set[int] = set()
        self.finalized = 0
        self.late = 0
        self.connection: int | None = None  # the connection between Connected and Disconnected
        self.connections = 0
        self.disconnections = 0
        self.failures = 0  # consecutive failed attempts, as the policy counts them
        self.retry_not_before: float | None = None
        self.permanent = False
        self.closed: Closed | None = None
        self.reconnects = 0
        self.interjections = 0
        if start:  # otherwise the rule start() does it, after some audio perhaps
            self.drive.call("start")

    # -- helpers --------------------------------------------------------------------------

    def next_chatter(self) -> Injected | None:
        if not self.chatter:
            return None
        self.chatter_turn += 1
        return self.chatter[self.chatter_turn % len(self.chatter)]

    @property
    def engine(self) -> Any:
        return self.drive.engine

    @property
    def given_ticks(self) -> int:
        return self.given_bytes // WIDTH

    def accepting(self) -> bool:
        return not self.close_requested and not self.drive.finished

    def at_boundary(self) -> bool:
        return self.accepting() and self.current is None

    def give(self, data: bytes) -> None:
        self.given_bytes += len(data)
        self.drive.call("send_audio", data)
        self.drive.pump()

    def begin_word(self, gap: int) -> None:
        audio = self.ledger.give(self.given_ticks, word_audio)
        self.current = audio + quiet(gap)
        self.current_since = self.drive.now

    def give_part(self, size: int) -> None:
        assert self.current is not None
        part, rest = self.current[:size], self.current[size:]
        self.current = rest or None
        self.give(part)

    def advance(self, seconds: float) -> None:
        if self.current is not None:
            # Mid-word the clock stays well inside keepalive_interval of the word's
            # start: keepalive silence inside a word would split it in two for the
            # token decoder (a property of token audio, not of the engine).
            limit = self.current_since + 0.4 * self.config.keepalive_interval
            seconds = min(seconds, max(0.0, limit - self.drive.now))
        self.drive.advance(seconds)

    def request_finalize(self, kind: str) -> None:
        expect = 1 if self.given_ticks > self.last_finalize_tick else 0
        result = self.drive.call(
            kind, detail={"expect_created": expect, "position": self.given_ticks}
        )
        if kind == "finalize":
            assert result is bool(expect), (
                f"invariant 1: finalize() returned {result} with "
                f"{'new' if expect else 'no new'} audio since the last finalize"
            )
        if expect:
            self.last_finalize_tick = self.given_ticks
        self.drive.pump()

    # -- rules: the application ---------------------------------------------------------------

    @precondition(lambda self: self.engine.state is State.IDLE and not self.close_requested)
    @rule()
    @guarded
    def start(self) -> None:
        self.drive.call("start")
        self.drive.pump()

    @precondition(lambda self: self.accepting())
    @rule(
        chunks=st.lists(sizes(2400), min_size=1, max_size=6),
        gap=st.sampled_from([160, 400, 800, 1600]),
        spread=st.sampled_from([0.0, 0.0, 0.02, 0.07]),
        count=st.integers(1, 4),
        vad=st.booleans(),
    )
    @guarded
    def send_words(self, chunks: list[int], gap: int, spread: float, count: int, vad: bool) -> None:
        """Whole words (first the rest of one in progress), each with its gap, in the
        given chunk sizes; ``spread`` seconds pass between chunks. With ``vad`` the
        local VAD calls speech_started() as a word begins (bookkeeping only)."""
        turn = 0
        for _ in range(count):
            if self.current is None:
                if vad:
                    self.drive.call("speech_started")
                self.begin_word(gap)
            assert self.current is not None
            floor = -(-len(self.current) // MOST_CHUNKS)
            while self.current is not None and self.accepting():
                size = chunks[turn % len(chunks)]
                # Each drawn size is used once as it is; after that a floor keeps
                # the number of calls per word bounded (the test's running time).
                self.give_part(size if turn < len(chunks) else max(size, floor))
                turn += 1
                if spread and self.current is not None:
                    self.advance(spread)

    @precondition(lambda self: self.accepting())
    @rule(size=sizes(1500), gap=st.sampled_from([160, 800]))
    @guarded
    def send_word_part(self, size: int, gap: int) -> None:
        """Part of a word: faults can then strike between its pieces."""
        if self.current is None:
            self.begin_word(gap)
        self.give_part(size)

    @precondition(lambda self: self.at_boundary())
    @rule(
        samples=st.sampled_from([80, 800, 4000, 12000]),
        chunk=sizes(3001),
    )
    @guarded
    def send_silence(self, samples: int, chunk: int) -> None:
        data = quiet(samples)
        chunk = max(chunk, -(-len(data) // MOST_CHUNKS))
        for offset in range(0, len(data), chunk):
            if not self.accepting():
                break
            self.give(data[offset : offset + chunk])

    @precondition(lambda self: self.at_boundary())
    @rule(by=st.sampled_from(["finalize", "speech_stopped"]))
    @guarded
    def end_turn(self, by: str) -> None:
        """finalize(), or the local VAD's speech_stopped() (which finalizes too)."""
        self.request_finalize(by)

    @precondition(lambda self: self.at_boundary())
    @rule(change=st.sampled_from(["diarize", *EOU_VALUES]), flush=st.booleans())
    @guarded
    def update_settings(self, change: str | int, flush: bool) -> None:
        """Toggle diarize or change eou_timeout_ms. With ``flush`` the coalescing
        delay passes first; without it the turn may still be held for coalescing
        (the engine must frame and finalize it all the same)."""
        if flush:
            self.drive.advance(self.config.max_chunk_delay)
            if not self.accepting():
                return
        if change == "diarize":
            self.diarize = not self.diarize
            changes: dict[str, Any] = {"diarize": self.diarize}
        else:
            assert isinstance(change, int)
            if change == self.eou:
                change = next(value for value in EOU_VALUES if value != change)
            self.eou = change
            changes = {"eou_timeout_ms": change}
        mid_turn = self.given_ticks > self.last_finalize_tick
        expect = 1 if self.engine.state is State.OPEN and mid_turn else 0
        self.drive.call(
            "update_settings",
            detail={"expect_created": expect, "position": self.given_ticks},
            **changes,
        )
        if expect:
            self.last_finalize_tick = self.given_ticks
        self.drive.pump()

    @precondition(lambda self: self.at_boundary())
    @rule(chance=st.integers(0, 3))
    @guarded
    def close(self, chance: int) -> None:
        """close(), one time in four it is chosen (the session goes on being driven)."""
        if chance:
            return
        self.close_requested = True
        self.drive.call("close")
        self.drive.pump()

    @precondition(lambda self: self.drive.finished)
    @rule()
    @guarded
    def new_session(self) -> None:
        """The session is over: check all of it, then begin the next one."""
        self.check_the_whole_run()
        self.begin_session(start=True)

    # -- rules: time and the network ------------------------------------------------------------

    @rule(
        seconds=st.one_of(
            st.sampled_from([0.01, 0.1, 0.3, 1.0, 2.5, 5.0, 8.0, 12.0]),
            st.floats(0.0, 15.0, allow_nan=False),
        )
    )
    @guarded
    def advance_clock(self, seconds: float) -> None:
        # (Always enabled, so that the machine can go on after Closed.)
        if not self.drive.finished:
            self.advance(seconds)

    @precondition(lambda self: self.drive.socket is not None and self.at_boundary())
    @rule(extra=st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    @guarded
    def fall_silent(self, extra: float) -> None:
        """The server answers all it owes, then the application sends nothing for
        a keepalive interval or more: the engine's keepalive silence goes out,
        and later times must skip it."""
        socket = self.drive.socket
        assert socket is not None
        self.drive.deliver(len(socket.inbox))
        self.drive.advance(self.config.keepalive_interval * (1 + extra))

    @precondition(lambda self: self.drive.socket is not None and bool(self.drive.socket.inbox))
    @rule(
        count=st.one_of(st.none(), st.integers(1, 4)),
        interject=st.sampled_from([None] * 6 + sorted(INTERJECTIONS)),
        place=st.integers(0, 6),
        rare=st.integers(0, 3),
    )
    @guarded
    def deliver(self, count: int | None, interject: str | None, place: int, rare: int) -> None:
        """Server frames arrive: a few, or every one queued (a burst). With
        ``interject`` the server slips an error, a malformed frame or an unknown
        message in among its replies first (a permanent error is drawn one time
        in four it comes up; otherwise it becomes a transient one)."""
        socket = self.drive.socket
        assert socket is not None
        if interject is not None:
            if interject == "permanent" and rare:
                interject = "error-2"
            socket.inbox.insert(min(place, len(socket.inbox)), INTERJECTIONS[interject])
        self.drive.deliver(len(socket.inbox) if count is None else count)

    @precondition(lambda self: self.drive.pending is not None)
    @rule(
        outcome=st.sampled_from(CONNECT_OUTCOMES),
        retry_after=st.sampled_from([None, 0.5, 3.0, 12.0, None, 0.5, 3.0, 45.0]),
        status=st.sampled_from(PERMANENT_STATUSES),
    )
    @guarded
    def resolve_connect(self, outcome: str, retry_after: float | None, status: int) -> None:
        drive = self.drive
        if outcome == "open":
            drive.open_pending()
        elif outcome == "none":
            drive.fail_pending(None, None)
        elif outcome == "reset":
            drive.close_during_handshake()
        elif outcome == "permanent":
            drive.fail_pending(status, None)
        else:
            code = int(outcome)
            drive.fail_pending(code, retry_after if code != 500 else None)
        drive.pump()

    @precondition(lambda self: self.drive.socket is not None)
    @rule(code=st.sampled_from([1006, 1011, 1001, 1008, None]))
    @guarded
    def drop_socket(self, code: int | None) -> None:
        self.drive.drop_socket(code)
        self.drive.pump()

    @rule(kind=st.sampled_from(MISUSES))
    @guarded
    def misuse(self, kind: str) -> None:
        """Invariant 8: a documented misuse raises its documented exception and
        changes nothing (no output, same state, buffers and deadlines)."""
        engine, now = self.engine, self.drive.now
        closed = self.close_requested or self.drive.finished
        before = (
            engine.state,
            engine.buffered_bytes,
            engine.pending_finalizes,
            engine.next_deadline(),
            engine.settings,
        )
        expected: type[Exception] = LocalProtocolError
        call: Callable[[], Any]
        if kind == "audio-after-close":
            if not closed:
                return
            call = functools.partial(engine.send_audio, now, quiet(80))
        elif kind == "finalize-after-close":
            if not closed:
                return
            call = functools.partial(engine.finalize, now)
        elif kind == "settings-after-close":
            if not closed:
                return
            call = functools.partial(engine.update_settings, now, diarize=not self.diarize)
        elif kind == "vad-after-close":
            if not closed:
                return
            call = functools.partial(engine.speech_stopped, now)
        elif kind == "invalid-settings":
            expected = LocalProtocolError if closed else ConfigurationError
            call = functools.partial(engine.update_settings, now, language="xx-nowhere")
        elif kind == "audio-not-bytes":
            expected = LocalProtocolError if closed else TypeError
            call = functools.partial(engine.send_audio, now, "not audio")
        elif kind == "time-backwards":
            if self.drive.last_input < 0.001 or self.drive.finished:
                return
            call = functools.partial(engine.handle_timer, self.drive.last_input - 0.001)
        elif kind == "start-twice":
            if engine.state is State.IDLE:
                return
            call = functools.partial(engine.start, now)
        else:
            if engine.state is State.CONNECTING:
                return
            call = functools.partial(engine.connection_opened, now)
        try:
            call()
        except expected:
            pass
        except Exception as exc:  # pragma: no cover - the failure being looked for
            raise AssertionError(
                f"invariant 8: {kind} raised {type(exc).__name__}: {exc}, "
                f"documented is {expected.__name__}"
            ) from exc
        else:
            raise AssertionError(f"invariant 8: {kind} raised nothing")
        after = (
            engine.state,
            engine.buffered_bytes,
            engine.pending_finalizes,
            engine.next_deadline(),
            engine.settings,
        )
        assert after == before, f"invariant 8: {kind} changed the engine: {before} -> {after}"
        assert engine.commands() == [] and engine.events() == [], (
            f"invariant 8: {kind} produced output"
        )

    # -- invariants after every step ---------------------------------------------------------

    @invariant()
    @guarded
    def buffer_is_bounded(self) -> None:
        if not hasattr(self, "drive"):
            return
        bound = max(1, int(self.config.replay_seconds * RATE * WIDTH)) + self.config.chunk_bytes
        assert self.engine.buffered_bytes <= bound, (
            f"invariant 7: {self.engine.buffered_bytes} bytes buffered, bound {bound}"
        )

    # -- the observer: every engine input's events, in order ---------------------------------

    def observe(self, step: Step) -> None:
        self._count_failures(step)
        self._check_turns_created(step)
        self._check_interjection(step)
        for index, item in enumerate(step.events):
            assert self.closed is None, f"invariant 4: {item!r} after Closed"
            if isinstance(item, Transcript):
                if item.is_final:
                    self._on_final(item)
                else:
                    assert not item.finalized and item.turn is None, (
                        f"invariant 1: an interim marked as an answer: {item!r}"
                    )
            elif isinstance(item, FinalizeTimedOut):
                self._on_answer(item.turn)
                self.timed_out.add(item.turn)
            elif isinstance(item, AudioDropped):
                self._on_drop(item)
            elif isinstance(item, Connected):
                self._on_connected(step, item)
            elif isinstance(item, Disconnected):
                assert self.connection == item.connection, (
                    f"invariant 6: Disconnected({item.connection}) while the open connection "
                    f"is {self.connection}"
                )
                self.connection = None
                self.disconnections += 1
            elif isinstance(item, Reconnecting):
                self._on_reconnecting(step, item)
            elif isinstance(item, ConnectionFailed):
                self._on_connection_failed(step, item)
            elif isinstance(item, SettingsApplied):
                self._check_settings(item.settings.diarize, item.settings.eou_timeout_ms)
            elif isinstance(item, INTERJECTION_EVENTS):
                pass  # counted by _check_interjection
            elif isinstance(item, Closed):
                assert index == len(step.events) - 1, "invariant 4: events after Closed"
                assert self.connection is None, "invariant 6: Closed with a connection open"
                assert not step.connects, "invariant 4: Connect in the step that closed"
                self.closed = item
            else:
                # SpeechStarted/SpeechEnded need vad_events, which the machine
                # does not ask for.
                raise AssertionError(f"unexpected event from the model server: {item!r}")
        for connect in step.connects:
            assert not self.permanent, "invariant 6: a Connect after a permanent failure"
            if self.retry_not_before is not None:
                assert step.now >= self.retry_not_before - 1e-9, (
                    f"invariant 6: reconnected at {step.now:g}, before the announced "
                    f"{self.retry_not_before:g}"
                )
                self.retry_not_before = None
            del connect

    def _check_interjection(self, step: Step) -> None:
        """Each interjected frame is exactly one event of its kind; nothing else is."""
        seen = [item for item in step.events if isinstance(item, INTERJECTION_EVENTS)]
        injected = step.detail.get("injected")
        if injected is None:
            assert not seen, f"invariant 8: {seen} from the model server's own replies"
            return
        assert [type(item).__name__ for item in seen] == [injected.kind], (
            f"{injected.data!r} became {seen}, not one {injected.kind}"
        )
        if isinstance(seen[0], ServerError):
            assert seen[0].permanent == injected.permanent, f"wrong permanence: {seen[0]!r}"
        self.interjections += 1

    def _check_turns_created(self, step: Step) -> None:
        answers = sum(
            1
            for item in step.events
            if (isinstance(item, Transcript) and item.finalized)
            or isinstance(item, FinalizeTimedOut)
        )
        created = step.pending_after - step.pending_before + answers
        assert created >= 0, (
            f"invariant 1: {step.kind} made {-created} finalize request(s) vanish "
            "without a finalized Transcript or FinalizeTimedOut"
        )
        if "expect_created" in step.detail:
            assert created == step.detail["expect_created"], (
                f"invariant 1: {step.kind} created {created} finalize requests, "
                f"expected {step.detail['expect_created']}"
            )
            position = step.detail["position"]
        elif step.kind == "connection_opened":
            # A turn whose finalize went unanswered is asked again after its replay.
            assert created <= 1, f"invariant 1: {created} new finalizes on one open"
            position = self.last_finalize_tick
        else:
            assert created == 0, f"invariant 1: {step.kind} created {created} finalize requests"
            position = 0
        self.turn_positions.extend([position] * created)

    def _count_failures(self, step: Step) -> None:
        """Mirror the policy's count of consecutive failures (spec rule 5)."""
        stable_after = self.config.reconnect.stable_after
        detail = step.detail
        if step.kind == "connection_failed" or detail.get("handshake"):
            self.failures += 1
        elif step.kind == "connection_closed" and "opened_at" in detail:
            if detail["opened_at"] + stable_after <= step.now:
                self.failures = 0
            self.failures += 1
        for _, code, opened_at in step.closed_sockets:
            if opened_at + stable_after <= step.now:
                self.failures = 0
            if code == 1011:  # replaced as stalled: a lost connection
                self.failures += 1
        if step.abandoned_connect and any(isinstance(e, ConnectionFailed) for e in step.events):
            self.failures += 1  # the handshake took longer than connect_timeout

    def _on_connected(self, step: Step, item: Connected) -> None:
        assert step.kind == "connection_opened", f"invariant 6: Connected on {step.kind}"
        assert self.connection is None, (
            f"invariant 6: Connected({item.connection}) while {self.connection} is open"
        )
        self.connections += 1
        assert item.connection == self.connections, "invariant 6: connections out of sequence"
        self.connection = item.connection
        self.reconnects += item.reconnect
        url = step.detail["url"]
        assert item.url == url, "invariant 5: Connected.url is not the URL connected to"
        query = query_of(url)
        self._check_settings(
            None if "diarize" not in query else query["diarize"] == "true",
            None if "eou_timeout_ms" not in query else int(query["eou_timeout_ms"]),
            where=f"URL {url}",
        )
        assert query.get("word_timestamps") == "true", "replay alignment needs word timestamps"
        self._check_settings(item.settings.diarize, item.settings.eou_timeout_ms)

    def _check_settings(self, diarize: bool | None, eou: int | None, where: str = "") -> None:
        assert (diarize, eou) == (self.diarize, self.eou), (
            f"invariant 5: connection opened with diarize={diarize}, eou_timeout_ms={eou} "
            f"{where}; the latest settings are diarize={self.diarize}, eou_timeout_ms={self.eou}"
        )

    def _on_reconnecting(self, step: Step, item: Reconnecting) -> None:
        assert not self.permanent
        assert item.attempt == self.failures + 1, (
            f"invariant 6: Reconnecting(attempt={item.attempt}) after {self.failures} "
            "consecutive failures"
        )
        raw = raw_delay(self.config, self.failures)
        low, high = raw * (1 - self.config.reconnect.jitter), raw
        floor = step.detail.get("retry_after")
        if step.detail.get("code") == 1008:
            floor = self.config.reconnect.concurrency_delay
        if floor is not None:
            low, high = max(low, floor), max(high, floor)
        assert low - 1e-9 <= item.delay <= high + 1e-9, (
            f"invariant 6: Reconnecting delay {item.delay:g} outside [{low:g}, {high:g}] "
            f"for attempt {item.attempt}"
        )
        self.retry_not_before = step.now + item.delay

    def _on_connection_failed(self, step: Step, item: ConnectionFailed) -> None:
        injected = step.detail.get("injected")
        if injected is not None:
            assert injected.permanent and item.permanent, (
                f"invariant 6: ConnectionFailed {item!r} on {injected.data!r}"
            )
            self.permanent = True
            return
        policy = self.config.reconnect
        status = step.detail.get("status")
        retry_after = step.detail.get("retry_after")
        # A Retry-After beyond the bound is a refusal whatever the status (PROTOCOL §6 rule 5).
        refused = status in PERMANENT_STATUSES or (
            retry_after is not None and retry_after > policy.max_retry_after
        )
        exhausted = policy.max_attempts is not None and self.failures >= policy.max_attempts
        assert item.permanent == (refused or exhausted), (
            f"invariant 6: ConnectionFailed(permanent={item.permanent}) for status {status}, "
            f"retry_after {retry_after}, after {self.failures} consecutive failures"
        )
        if item.permanent:
            self.permanent = True

    def _on_drop(self, item: AudioDropped) -> None:
        if item.reason is DropReason.PARTIAL_SAMPLE:
            # Only when the session ends in the middle of a word the machine was giving.
            assert self.current is not None, f"invariant 2: {item!r} with no word being given"
        require(self.ledger.dropped(item))

    def _on_answer(self, turn: int | None) -> None:
        assert turn is not None
        assert turn not in self.answered, f"invariant 1: turn {turn} answered twice"
        assert not self.answered or turn > self.answered[-1], (
            f"invariant 1: turn {turn} answered after turn {self.answered[-1]}"
        )
        assert 1 <= turn <= len(self.turn_positions), (
            f"invariant 1: an answer to turn {turn}; only {len(self.turn_positions)} requested"
        )
        self.answered.append(turn)

    def _on_final(self, item: Transcript) -> None:
        raw_from_finalize = item.raw.get("from_finalize")
        if item.finalized:
            assert raw_from_finalize is True, f"invariant 1: an automatic final answered: {item!r}"
            assert item.turn is not None and not item.late
            self._on_answer(item.turn)
            self.finalized += 1
        elif raw_from_finalize is True:
            assert item.late and item.turn in self.timed_out, (
                f"invariant 1: an answer to a finalize that is neither finalized nor late: {item!r}"
            )
            self.late += 1
        else:
            assert item.turn is None and not item.late, f"invariant 1: {item!r}"
        position = None
        if item.finalized:
            assert item.turn is not None
            position = self.turn_positions[item.turn - 1]
        require(self.ledger.final(item, answers=position))

    # -- teardown: drive the session to its end, then check the whole run ---------------------

    def teardown(self) -> None:
        if self.broken or not hasattr(self, "drive"):
            return
        drive = self.drive
        if not drive.finished:
            if self.engine.state is State.IDLE and not self.close_requested:
                drive.call("start")
            while self.current is not None and self.accepting():
                self.give_part(len(self.current))
            if self.accepting():
                self.close_requested = True
                drive.call("close")
            drive.pump()
        for _ in range(5000):
            if drive.finished:
                break
            self.drive_once()
        assert drive.finished and self.closed is not None, "the session never closed"
        self.check_the_whole_run()

    def drive_once(self) -> None:
        """Move the session on without faults: open, deliver, or wait for the next deadline."""
        drive = self.drive
        if drive.pending is not None:
            drive.open_pending()
            drive.pump()
        elif drive.socket is not None and drive.socket.inbox:
            drive.deliver(len(drive.socket.inbox))
        else:
            deadline = self.engine.next_deadline()
            assert deadline is not None, (
                f"invariant 8: the session waits forever in state {self.engine.state.value}"
            )
            drive.advance(max(0.0, deadline - drive.now))

    def check_the_whole_run(self) -> None:
        drive, closed = self.drive, self.closed
        assert closed is not None
        # 4: nothing after Closed.
        assert self.engine.next_deadline() is None
        self.engine.handle_timer(drive.now + 100.0)
        self.engine.receive_message(drive.now + 100.0, '{"is_final": true, "transcript": "x"}')
        assert self.engine.commands() == [] and self.engine.events() == [], (
            "invariant 4: output after Closed"
        )
        # 6: connections balance.
        assert self.connection is None and self.connections == self.disconnections, (
            f"invariant 6: {self.connections} Connected, {self.disconnections} Disconnected"
        )
        assert drive.socket is None and drive.pending is None, (
            "invariant 6: a connection outlived Closed"
        )
        # 1: every turn answered once, in order.
        turns = len(self.turn_positions)
        assert self.answered == list(range(1, turns + 1)), (
            f"invariant 1: {turns} finalize requests, answers for turns {self.answered}"
        )
        assert self.engine.pending_finalizes == 0
        assert self.finalized <= drive.finalizes_sent, (
            f"invariant 1: {self.finalized} answers to {drive.finalizes_sent} finalizes sent"
        )
        summary = closed.summary
        assert summary.finalized_turns == self.finalized
        assert summary.timed_out_turns == len(self.timed_out)
        assert summary.dropped_bytes == self.ledger.dropped_bytes
        assert summary.connections == self.connections
        # 2: every word whose audio was not dropped, exactly once (one cut short
        # only when the session failed while it was being given).
        require(self.ledger.end(self.given_ticks, failed=closed.error is not None))
        # Statistics of what the run exercised (shown by --hypothesis-show-statistics).
        event(f"words: {min(len(self.ledger.words) // 5 * 5, 20)}+")
        event(f"reconnects: {min(self.reconnects, 3)}+")
        event(f"dropped audio: {bool(self.ledger.drops)}")
        event(f"timed-out turns: {bool(self.timed_out)}")
        event(f"late answers: {bool(self.late)}")
        event(f"keepalives: {bool(drive.keepalives)}")
        event(f"interjections: {min(self.interjections, 2)}+")
        event(f"closed with: {closed.error.split(':')[0] if closed.error else 'no error'}")


class SmallReplayMachine(PulseMachine):
    """The same session with a replay bound a few words long: overflow is reported exactly."""

    replay_choices = (0.25, 0.5, 1.0, 2.0)


FAST = settings(
    max_examples=200,
    stateful_step_count=80,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SLOW = settings(
    FAST,
    max_examples=3000,
    stateful_step_count=120,
)


def test_no_transcript_or_audio_is_lost_under_faults() -> None:
    run_state_machine_as_test(PulseMachine, settings=FAST)


def test_replay_overflow_is_reported_exactly() -> None:
    run_state_machine_as_test(SmallReplayMachine, settings=FAST)


@pytest.mark.slow
def test_no_transcript_or_audio_is_lost_under_faults_long() -> None:
    run_state_machine_as_test(PulseMachine, settings=SLOW)


@pytest.mark.slow
def test_replay_overflow_is_reported_exactly_long() -> None:
    run_state_machine_as_test(SmallReplayMachine, settings=SLOW)


# -- engine bugs the machine found, pinned as exact input sequences --------------------------


def _finals(events: list[Any]) -> list[tuple[str, int, int]]:
    return [
        (word.word, round((word.start or 0) * RATE), round((word.end or 0) * RATE))
        for item in events
        if isinstance(item, Transcript) and item.is_final
        for word in item.words
    ]


def test_close_while_draining_after_overflow() -> None:
    events: list[Any] = []
    config = ConnectionConfig(
        api_key=API_KEY,
        base_url="ws://127.0.0.1:9",
        encoding="linear16",
        sample_rate=RATE,
        replay_seconds=0.25,  # 2000 ticks
        max_chunk_delay=0.0,
    )
    drive = Drive(config, jitter=None, observer=lambda step: events.extend(step.events))
    drive.call("start")
    drive.call("update_settings", eou_timeout_ms=100)
    drive.open_pending()
    drive.call("send_audio", word_audio("w1") + quiet(160))  # w1 at ticks 0-320
    drive.call("update_settings", diarize=True)  # finalize sent: draining, audio held
    drive.call("send_audio", quiet(1600))  # held audio overflows: ticks 480-2080 dropped
    drive.call("send_audio", word_audio("w2") + quiet(1600))  # w2 at ticks 2080-2400
    drive.call("close")  # the held audio goes out on the draining socket
    drive.deliver(4)  # interim w1, final w1, interim w2, automatic final w2
    drive.drop_socket(1006)  # before is_last
    drive.advance(1.0)
    drive.open_pending()
    assert drive.socket is not None
    drive.deliver(len(drive.socket.inbox))
    assert [item.reason for item in events if isinstance(item, AudioDropped)] == [
        DropReason.REPLAY_OVERFLOW
    ]
    # Before the fix: [("w1", 0, 320), ("w2", 480, 800), ("w2", 2080, 2400)]
    assert _finals(events) == [("w1", 0, 320), ("w2", 2080, 2400)]


def test_settings_change_finalizes_held_audio() -> None:
    events: list[Any] = []
    config = ConnectionConfig(
        api_key=API_KEY, base_url="ws://127.0.0.1:9", encoding="linear16", sample_rate=RATE
    )
    drive = Drive(config, jitter=None, observer=lambda step: events.extend(step.events))
    drive.call("start")
    drive.open_pending()
    drive.call("send_audio", word_audio("w1") + quiet(160))  # 960 bytes: below one frame
    drive.call("update_settings", diarize=True)
    assert drive.finalizes_sent == 1
    assert drive.engine.state is State.DRAINING
