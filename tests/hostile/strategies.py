"""Hypothesis strategies for misbehaviour schedules against the hostile server.

A :class:`Schedule` is plain data, and its repr is Python that builds it again:

* ``scripts``: what the server does on connections 1, 2, ... (``then`` after
  them): the answer to the upgrade (a good 101, a malformed one, a refusal with
  or without ``Retry-After``, a redirect, EOF in the middle, a stall, huge
  headers) and faults (pings and pongs at any moment, the close included;
  slow reads and slow answers; half-open; oversized, fragmented, binary and invalid frames;
  malformed text; bogus times; duplicate, split and unasked finals;
  ``is_last`` at odd moments; errors, close reasons, pings and refusal bodies
  that echo the key; close codes, hang-ups and resets);
* ``plan``: what the application does: audio in chunks, finalizes,
  pauses, a settings change, waiting for a final; leaving the block closes;
* ``knobs``: the session's timeouts and limits, all short.

The server never lies about what audio a final covers: a final that answers
nothing says ``from_finalize: false``, one sent in place of the answer to a
finalize says ``true`` (or, as older servers do, nothing) and is the only one
for it, a repeated final is an automatic one, and a final with bogus times
covers no audio (``Final(covers=False)``: the next final does). A server that
lied about those would make pulse's promises impossible to keep, for any
client, and a failure would say nothing about pulse.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs
from hypothesis import strategies as st

from tests.hostile.framing import BINARY, CLOSE, CONTINUATION, PING, encode_frame
from tests.hostile.script import (
    Action,
    AfterAudio,
    AfterSeconds,
    Close,
    Delay,
    Error,
    Fault,
    Final,
    HalfOpen,
    Handshake,
    Hangup,
    OnClientClose,
    OnCloseStream,
    OnFinalize,
    OnOpen,
    OnPing,
    Ping,
    Pong,
    Raw,
    RepeatFinal,
    Script,
    SlowRead,
    SplitFinals,
    Text,
    Together,
    Trigger,
    fragmented_text,
    invalid_utf8_text,
    oversized_text,
    redirect,
    refuse,
)

__all__ = [
    "BYTES_PER_SECOND",
    "INTERIM",
    "MAX_SECONDS",
    "AwaitFinal",
    "Finalize",
    "Knobs",
    "Pause",
    "Schedule",
    "Speak",
    "Step",
    "Switch",
    "actions_in",
    "fragmented_with_ping",
    "schedules",
    "shown",
]

BYTES_PER_SECOND = 32000  # linear16, 16 kHz, mono
#: Audio a plan gives at most: under the 4.096 s after which ``speech()`` wraps,
#: so every sample of a session is told apart.
MAX_SECONDS = 3.0

# -- the application's plan ---------------------------------------------------------


@attrs.frozen
class Speak:
    """``samples`` samples of speech (following the previous ones), given in
    ``send_audio`` calls of ``chunk`` bytes (a chunk may end mid-sample)."""

    samples: int
    chunk: int = 3200


@attrs.frozen
class Finalize:
    """``finalize()``, or ``speech_stopped()`` with ``vad=True``."""

    vad: bool = False


@attrs.frozen
class Pause:
    seconds: float


@attrs.frozen
class Switch:
    """``update_settings()``: ``diarize`` toggled, or the language swapped."""

    field: str = "diarize"


@attrs.frozen
class AwaitFinal:
    """Wait (at most ``within`` seconds) for a final that was not there yet."""

    within: float = 0.5


Step: TypeAlias = Speak | Finalize | Pause | Switch | AwaitFinal


@attrs.frozen(kw_only=True)
class Knobs:
    """The session's configuration: short timeouts, so that nothing waits on
    the real clock for long."""

    finalize_timeout: float = 0.5
    close_timeout: float = 1.0
    connect_timeout: float = 0.5
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    keepalive_interval: float = 5.0
    replay_seconds: float = 30.0
    max_message_size: int = 1 << 20
    max_attempts: int = 4
    jitter: float = 0.0

    def options(self) -> dict[str, Any]:
        """``open_session`` keyword arguments."""
        return {
            "finalize_timeout": self.finalize_timeout,
            "close_timeout": self.close_timeout,
            "connect_timeout": self.connect_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "keepalive_interval": self.keepalive_interval,
            "replay_seconds": self.replay_seconds,
            "max_message_size": self.max_message_size,
            "reconnect": {
                "base_delay": 0.01,
                "max_delay": 0.05,
                "jitter": self.jitter,
                "max_attempts": self.max_attempts,
                "concurrency_delay": 0.05,
                "max_retry_after": 1.0,
            },
        }


@attrs.frozen(kw_only=True)
class Schedule:
    """One generated case: the server's scripts, the application's plan, the knobs."""

    scripts: tuple[Script, ...] = ()
    then: Script = attrs.field(factory=Script)
    plan: tuple[Step, ...] = ()
    knobs: Knobs = Knobs()

    @property
    def waits(self) -> float:
        """Seconds the plan may spend waiting on its own."""
        return sum(
            step.seconds if isinstance(step, Pause) else step.within
            for step in self.plan
            if isinstance(step, Pause | AwaitFinal)
        )


def shown(value: object) -> str:
    """``value`` as Python that builds it again, leaving out every attrs field
    that has its default (a schedule's repr runs to pages otherwise)."""
    if attrs.has(type(value)):
        parts = []
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            if item != default:
                parts.append(f"{field.name}={shown(item)}")
        return f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, tuple | list):
        if len(value) > 3 and all(item == value[0] for item in value):
            once = shown(value[:1])
            return f"{once} * {len(value)}"
        items = ", ".join(shown(item) for item in value)
        if isinstance(value, list):
            return f"[{items}]"
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, bytes) and value in _RAW_NAMES:
        return _RAW_NAMES[value]
    return repr(value)


# -- the upgrade --------------------------------------------------------------------------

RETRY_AFTER = [
    None,
    "0",
    "0.05",
    "soon, please",
    "-5",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "86400",
    "inf",
    "1e400",
]
ECHOING_BODIES = [
    b"",
    b"busy",
    b"unknown key {key}",
    b"unknown key {key_head}...",
    b"{authorization}",
]

broken_handshakes = st.sampled_from(
    [
        Handshake(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Handshake(accept=""),
        Handshake(upgrade=False),
        Handshake(status_line=b"HTTP/1.0 garbage"),
        Handshake(status=200),
        Handshake(padding=12_000),
        Handshake(padding=32_000),
        Handshake(hang_up_at_once=True),
        Handshake(cut_after=0),
        Handshake(cut_after=20),
        Handshake(cut_after=80),
        Handshake(stall=True),
        Handshake(headers=(("Sec-WebSocket-Extensions", "permessage-deflate"),)),
        Handshake(headers=(("Sec-WebSocket-Protocol", "chat"),)),
    ]
)
refusals = st.builds(
    refuse,
    st.sampled_from([400, 401, 403, 404, 408, 429, 500, 502, 503]),
    retry_after=st.sampled_from(RETRY_AFTER),
    body=st.sampled_from(ECHOING_BODIES),
    body_size=st.sampled_from([0, 0, 0, 200_000]),
)
redirects = st.builds(
    redirect,
    st.sampled_from(["ws://127.0.0.1:1/elsewhere", "wss://example.com/stt?token={key}"]),
    status=st.sampled_from([301, 302, 307, 308]),
)
#: Mostly a good 101: a session needs connections that work to get anywhere.
handshakes = st.one_of(
    *[st.just(Handshake())] * 10, *[broken_handshakes] * 3, *[refusals] * 2, redirects
)

# -- what the server sends --------------------------------------------------------------

INTERIM = '{"type":"transcription","is_final":false,"transcript":"piece by piece"}'
TEXTS = [
    "not json: {key_head}",
    "",
    "[]",
    "null",
    INTERIM,
    '{"type":"who_knows","detail":"{key}"}',
    '{"type":"who_knows","detail":"{key_escaped}"}',
    '{"type":"speech_started","timestamp":0.0}',
    '{"type":"speech_started","timestamp":-100.0}',
    '{"type":"speech_ended","timestamp":1e305}',
    '{"type":"transcription","is_final":true,"from_finalize":false,"transcript":""}',
    '{"type":"transcription","is_final":true,"from_finalize":false,"transcript":"x",'
    '"words":[{"word":"x","start":"soon","end":1}]}',
    '{"type":"transcription","is_final":true,"from_finalize":false,"transcript":"x",'
    '"words":[{"word":"x","start":NaN,"end":Infinity}]}',
]
#: Word times no audio can have: the final that carries them is malformed.
BOGUS_TIMES = [
    ((-5.0, -4.0),),
    ((0.0, 1e305),),
    ((1e305, 1e305),),
    ((0.0, 0.5), (0.5, 10_000.0)),
]
PAYLOADS = [b"", b"x", b"{key}", b"p" * 125]


def fragmented_with_ping() -> bytes:
    """An interim in three frames with a ping between the first two (RFC 6455
    5.4 lets control frames come between the fragments of a message)."""
    frames = fragmented_text(INTERIM, pieces=2)
    first = 2 + len(INTERIM.encode()) // 2 + (len(INTERIM.encode()) % 2)
    return frames[:first] + encode_frame(PING, b"mid") + frames[first:]


#: Hand-made frames, by the Python that makes them (``shown`` prints that).
RAWS = {
    "fragmented_text(INTERIM, pieces=3)": fragmented_text(INTERIM, pieces=3),
    "fragmented_with_ping()": fragmented_with_ping(),
    "invalid_utf8_text()": invalid_utf8_text(),
    "oversized_text(70_000)": oversized_text(70_000),
    "oversized_text(1_100_000)": oversized_text(1_100_000),
    "encode_frame(BINARY, b'\\x00\\x01')": encode_frame(BINARY, b"\x00\x01"),
    "b'\\x83\\x00'": b"\x83\x00",  # a reserved opcode
    "b'\\xc1\\x01x'": b"\xc1\x01x",  # a reserved bit set
    "encode_frame(CONTINUATION, b'x')": encode_frame(CONTINUATION, b"x"),  # nothing to continue
    "encode_frame(PING, b'x' * 126)": encode_frame(PING, b"x" * 126),  # a control frame too long
    "encode_frame(PING, b'x', fin=False)": encode_frame(PING, b"x", fin=False),  # one in pieces
    "encode_frame(CLOSE, b'\\x03')": encode_frame(CLOSE, b"\x03"),  # a one-byte close payload
    "encode_frame(CLOSE, b'\\x03\\xe8\\xff')": encode_frame(CLOSE, b"\x03\xe8\xff"),  # not UTF-8
    "b'\\x8a\\x03abc'": b"\x8a\x03abc",  # an unsolicited pong, by hand
}
_RAW_NAMES = {data: name for name, data in RAWS.items()}

pings = st.builds(Ping, st.sampled_from(PAYLOADS))
talk: st.SearchStrategy[Action] = st.one_of(
    pings,
    st.builds(Pong, st.sampled_from(PAYLOADS)),
    st.builds(Text, st.sampled_from(TEXTS)),
    st.builds(Raw, st.sampled_from(list(RAWS.values()))),
    st.just(Together([Text(INTERIM)] * 300)),
    st.builds(
        Error,
        shape=st.sampled_from([1, 2, 3]),
        message=st.sampled_from(
            ["something went wrong", "invalid key {key}", "bad {key_head}", "{key_escaped}"]
        ),
        code=st.sampled_from([None, "ERROR", "LANGUAGE_NOT_ENABLED_IN_REGION"]),
    ),
)
#: Finals nobody asked for: automatic ones, is_last mid-session, a duplicate,
#: finals split and sent latest first, bogus times.
unasked_finals: st.SearchStrategy[Action] = st.one_of(
    st.just(Final(from_finalize=False)),
    st.just(Final(is_last=True, from_finalize=False)),
    st.just(Together([Final(from_finalize=False), RepeatFinal()])),
    st.builds(SplitFinals, pieces=st.integers(2, 4), from_finalize=st.just(False)),
    st.builds(
        Final,
        from_finalize=st.just(False),
        words=st.sampled_from(BOGUS_TIMES),
        covers=st.just(False),
    ),
)
endings: st.SearchStrategy[Action] = st.one_of(
    st.builds(
        Close,
        code=st.sampled_from([1000, 1001, 1008, 1011, 3000, 4000, None, 1005, 1006, 999, 5000]),
        reason=st.sampled_from(["", "odd", "bye {key}", "bye {key_tail}{key_head}"]),
    ),
    st.builds(Hangup, reset=st.booleans()),
    st.just(HalfOpen()),
    st.builds(SlowRead, st.sampled_from([4000.0, 40_000.0])),
    st.builds(Delay, st.sampled_from([0.05, 0.3])),
)
noise = st.one_of(talk, talk, unasked_finals)


def _together(actions: st.SearchStrategy[Action]) -> st.SearchStrategy[Action]:
    return st.builds(Together, st.lists(actions, min_size=1, max_size=4))


def _actions(min_size: int = 1) -> st.SearchStrategy[list[Action]]:
    one = st.one_of(noise, noise, endings, _together(noise))
    return st.lists(one, min_size=min_size, max_size=3)


#: The answer to a finalize: the one final for it (from_finalize true, or
#: absent as older servers send it), none at all, bogus times, or automatic
#: finals sent latest first just before it.
finalize_answers: st.SearchStrategy[list[Action]] = st.sampled_from(
    [
        [Final(from_finalize=True)],
        [Final(from_finalize=None)],
        [Delay(0.1), Final(from_finalize=True)],
        [Delay(0.4), Final(from_finalize=True)],
        [Delay(0.4), Final(from_finalize=None)],
        [],
        [Final(from_finalize=True, words=BOGUS_TIMES[0], covers=False)],
        [Final(from_finalize=True, words=BOGUS_TIMES[1], covers=False)],
        [Together([SplitFinals(pieces=2, from_finalize=False), Final(from_finalize=True)])],
        [Together([Final(from_finalize=True), *(Ping(b"p%d" % i) for i in range(4))])],
    ]
)
#: The answer to close_stream: is_last (or not), maybe with pings in the same
#: write, maybe followed by a close or a hang-up, or nothing at all.
close_answers: st.SearchStrategy[list[Action]] = st.sampled_from(
    [
        [Final(is_last=True, from_finalize=False)],
        [Final(is_last=True, from_finalize=False), Close(code=1000)],
        [Final(is_last=True, from_finalize=False), Hangup()],
        [Final(is_last=False, from_finalize=False)],
        [Final(is_last=True)],
        [Delay(0.3), Final(is_last=True, from_finalize=False)],
        [Delay(1.5), Final(is_last=True, from_finalize=False)],
        [],
        [Hangup(reset=True)],
        [
            Together(
                [Final(is_last=True, from_finalize=False), *(Ping(b"p%d" % i) for i in range(8))]
            )
        ],
    ]
)


@st.composite
def faults(draw: st.DrawFn, audio_bytes: int) -> Fault:
    """One fault: something sent (or done) when a trigger holds, or an answer
    to a finalize, close_stream or ping put in place of the server's own."""
    kind = draw(st.sampled_from(["noise"] * 4 + ["finalize", "close_stream", "pong"]))
    if kind == "pong":  # the client's pings go unanswered (or answered late)
        return Fault(OnPing(), draw(st.lists(noise, max_size=1)), replace=draw(st.booleans()))
    if kind == "finalize":
        before = draw(st.lists(noise, max_size=2))
        after = draw(st.lists(st.one_of(noise, endings), max_size=1))
        nth = draw(st.integers(0, 3))
        return Fault(OnFinalize(nth), [*before, *draw(finalize_answers), *after], replace=True)
    if kind == "close_stream":
        before = draw(st.lists(noise, max_size=2))
        return Fault(OnCloseStream(), [*before, *draw(close_answers)], replace=True)
    trigger: Trigger = draw(
        st.one_of(
            st.just(OnOpen()),
            st.builds(AfterAudio, st.integers(1, max(1, audio_bytes))),
            st.builds(AfterAudio, st.integers(1, max(1, audio_bytes))),
            st.builds(OnFinalize, st.integers(0, 3)),
            st.just(OnCloseStream()),
            st.just(OnClientClose()),
            st.just(OnPing()),
            st.builds(AfterSeconds, st.sampled_from([0.0, 0.01, 0.05, 0.2])),
        )
    )
    return Fault(trigger, draw(_actions()))


@st.composite
def scripts(draw: st.DrawFn, audio_bytes: int) -> Script:
    """One connection's script."""
    handshake = draw(handshakes)
    if handshake != Handshake():
        return Script(handshake=handshake)
    flags = draw(
        st.sampled_from(
            [(True, True, True)] * 6
            + [(False, True, True), (True, False, True), (True, True, False)]
        )
    )
    answer_close_stream, send_is_last, close_after_is_last = flags
    return Script(
        faults=draw(st.lists(faults(audio_bytes), max_size=3)),
        answer_close_stream=answer_close_stream,
        send_is_last=send_is_last,
        close_after_is_last=close_after_is_last,
        max_frame=draw(st.sampled_from([1 << 22] * 9 + [1000])),
    )


# -- the plan and the knobs ----------------------------------------------------------------


@st.composite
def plans(draw: st.DrawFn) -> tuple[Step, ...]:
    steps: list[Step] = []
    room = int(MAX_SECONDS * 16000)
    for _ in range(draw(st.integers(1, 7))):
        kind = draw(
            st.sampled_from(["speak"] * 4 + ["finalize"] * 2 + ["pause", "switch", "await"])
        )
        if kind == "speak" and room > 0:
            samples = draw(st.integers(1, min(room, 16000)))
            room -= samples
            steps.append(Speak(samples, draw(st.sampled_from([101, 640, 3200, 4096, 8191, 65536]))))
        elif kind == "finalize":
            steps.append(Finalize(vad=draw(st.booleans())))
        elif kind == "pause":
            steps.append(Pause(draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.4]))))
        elif kind == "switch":
            steps.append(Switch(draw(st.sampled_from(["diarize", "language"]))))
        elif kind == "await":
            steps.append(AwaitFinal(draw(st.sampled_from([0.1, 0.3, 0.6]))))
    return tuple(steps)


knobs = st.builds(
    Knobs,
    finalize_timeout=st.sampled_from([0.1, 0.25, 0.5, 2.0]),
    close_timeout=st.sampled_from([0.5, 1.0]),
    connect_timeout=st.sampled_from([0.3, 0.5]),
    ping_interval=st.sampled_from([0.2, 0.5, 5.0]),
    ping_timeout=st.sampled_from([0.2, 0.5, 5.0]),
    keepalive_interval=st.sampled_from([5.0, 5.0, 0.1]),
    replay_seconds=st.sampled_from([30.0, 30.0, 0.5]),
    max_message_size=st.sampled_from([1 << 20, 65536]),
    max_attempts=st.sampled_from([2, 3, 4, 6]),
    jitter=st.sampled_from([0.0, 0.5]),
)


def actions_in(schedule: Schedule) -> set[type]:
    """The kinds of action the schedule's scripts take (inside ``Together`` too)."""
    kinds: set[type] = set()
    todo: list[Action] = [
        action
        for script in (*schedule.scripts, schedule.then)
        for fault in script.faults
        for action in fault.do
    ]
    while todo:
        action = todo.pop()
        kinds.add(type(action))
        if isinstance(action, Together):
            todo.extend(action.do)
    return kinds


def schedules(leave_out: frozenset[type] = frozenset()) -> st.SearchStrategy[Schedule]:
    """Whole cases; none takes an action of a kind in ``leave_out``."""
    drawn = _schedules()
    if leave_out:
        drawn = drawn.filter(lambda schedule: not actions_in(schedule) & leave_out)
    return drawn


@st.composite
def _schedules(draw: st.DrawFn) -> Schedule:
    """A whole case: the plan first (the triggers fall within its audio)."""
    plan = draw(plans())
    audio = sum(2 * step.samples for step in plan if isinstance(step, Speak))
    return Schedule(
        scripts=tuple(draw(st.lists(scripts(audio), min_size=1, max_size=3))),
        then=draw(st.sampled_from([Script()] * 5 + [Script(handshake=refuse(503))])),
        plan=plan,
        knobs=draw(knobs),
    )
