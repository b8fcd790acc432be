"""End-to-end scenarios against the emulator, for any transport built on pulse_core.

One list, :data:`SCENARIOS`, of what a client on a real socket must get right:
words arrive as finals, a dropped connection is replaced and replayed with no
word lost, a settings change mid-turn keeps the turn's final and reaches the
server's URL, a graceful close delivers the last final, a 401 is not retried,
a silent server is found out and replaced, a server error is surfaced. Each
scenario is client *steps* (token audio, ``speech_stopped``, ``finalize``,
``update_settings``, waits, ``close``), *faults* the emulator injects, and a
*check* of what the application observed and the server saw.

A transport is tried through a *factory*: a plain synchronous function
``factory(target: Target) -> Observed`` that opens a session on
``target.base_url`` with ``target``'s key, settings and options, carries out
``target.steps`` in order, and returns what the application observed. It may
``asyncio.run``, ``trio.run`` or run a subprocess: ``Target`` and ``Observed``
round-trip through JSON (``to_json`` / ``from_json``). :func:`observe` builds
an ``Observed`` from pulse_core events. The runner serves the emulator in a
thread of its own (its own ``trio.run``) on loopback, one per scenario:

    python -m pulse_trio.emulator.scenarios                      # the Trio adapter
    python -m pulse_trio.emulator.scenarios --factory examples.asyncio_scenarios:factory

prints one line per scenario (``PASS`` or ``FAIL`` with what was wrong) and
exits 1 if any failed. docs/transports.md describes the kit.
"""

from __future__ import annotations

import argparse
import base64
import functools
import importlib
import json
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import attrs
import trio

from pulse_core import Closed, Connected, Disconnected, Event, Transcript

from ._server import Emulator
from .token_audio import encode

__all__ = [
    "SCENARIOS",
    "Factory",
    "Observed",
    "Result",
    "Scenario",
    "ServerLog",
    "Step",
    "Target",
    "main",
    "observe",
    "play",
    "run_all",
    "run_scenario",
    "serving",
    "trio_factory",
]

#: The key every scenario's client sends (the emulator accepts any).
SCENARIO_KEY = "sk_scenario_key_0123456789"


@attrs.frozen(kw_only=True)
class Step:
    """One thing the client does. ``op`` is ``audio`` (send ``audio``, token
    audio of ``words``, in chunks of ``Target.chunk_bytes``), ``speech_stopped``,
    ``finalize``, ``update_settings`` (with ``changes``), ``wait`` (``seconds``
    of real time), ``wait_connected`` (until a connection has opened, as the
    ``Connected`` event says) or ``close`` (leave gracefully; nothing follows)."""

    op: str
    words: tuple[str, ...] = ()
    audio: bytes = b""
    changes: dict[str, Any] = attrs.field(factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "words": list(self.words),
            "audio": base64.b64encode(self.audio).decode("ascii"),
            "changes": self.changes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            op=data["op"],
            words=tuple(data.get("words", ())),
            audio=base64.b64decode(data.get("audio", "")),
            changes=dict(data.get("changes", {})),
            seconds=float(data.get("seconds", 0.0)),
        )


@attrs.frozen(kw_only=True)
class Target:
    """What a factory is given: where to connect, with what, and the steps.

    ``options`` are ``pulse_core.ConnectionConfig`` fields (timeouts,
    ``reconnect``, ...), as ``open_session(**options)`` takes them.
    ``timeout`` is the real time the whole run may take: a factory stops there
    and reports ``TimeoutError`` as the error.
    """

    scenario: str
    base_url: str
    api_key: str
    settings: dict[str, Any]
    options: dict[str, Any]
    steps: tuple[Step, ...]
    encoding: str = "linear16"
    sample_rate: int = 16000
    chunk_bytes: int = 640
    timeout: float = 20.0

    def to_json(self) -> str:
        data = attrs.asdict(self, recurse=False)
        data["steps"] = [step.to_dict() for step in self.steps]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Target:
        data = json.loads(text)
        data["steps"] = tuple(Step.from_dict(step) for step in data["steps"])
        return cls(**data)


@attrs.frozen(kw_only=True)
class Observed:
    """What the application saw, in plain values.

    ``finals``: the text of every non-empty final transcript, in order.
    ``error``: the class name of the exception the session ended with (or
    ``None``), ``error_message`` its text. ``connected`` / ``disconnected``:
    how many connections opened and were lost; ``disconnect_reasons`` the
    reasons. ``events``: every event's type name, in order. ``is_last_missing``:
    from ``Closed`` (``None`` when no ``Closed`` came).
    """

    finals: tuple[str, ...] = ()
    error: str | None = None
    error_message: str | None = None
    connected: int = 0
    disconnected: int = 0
    disconnect_reasons: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    is_last_missing: bool | None = None

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Observed:
        data = json.loads(text)
        for name in ("finals", "disconnect_reasons", "events"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)

    @property
    def words(self) -> list[str]:
        """Every word of every final, in order."""
        return " ".join(self.finals).split()


def observe(events: Iterable[Event], error: BaseException | None = None) -> Observed:
    """The ``Observed`` of a session that gave ``events`` and ended with ``error``."""
    seen = list(events)
    closed = [event for event in seen if isinstance(event, Closed)]
    return Observed(
        finals=tuple(
            event.text
            for event in seen
            if isinstance(event, Transcript) and event.is_final and event.text
        ),
        error=type(error).__name__ if error is not None else None,
        error_message=str(error) if error is not None else None,
        connected=sum(isinstance(event, Connected) for event in seen),
        disconnected=sum(isinstance(event, Disconnected) for event in seen),
        disconnect_reasons=tuple(event.reason for event in seen if isinstance(event, Disconnected)),
        events=tuple(type(event).__name__ for event in seen),
        is_last_missing=closed[-1].is_last_missing if closed else None,
    )


# -- the server side ----------------------------------------------------------------


@attrs.define
class ServerLog:
    """What the emulator saw: each handshake's request path (with its query),
    and every text frame it sent."""

    paths: list[str] = attrs.field(factory=list)
    sent: list[str] = attrs.field(factory=list)

    @property
    def handshakes(self) -> int:
        return len(self.paths)

    @property
    def sent_is_last(self) -> bool:
        return any(json.loads(text).get("is_last") is True for text in self._json())

    def _json(self) -> Iterator[str]:
        for text in self.sent:
            if text.startswith("{"):
                yield text


class _RecordingEmulator(Emulator):
    """The emulator, noting each request path as it comes."""

    def __init__(self, log: ServerLog) -> None:
        super().__init__(on_send=lambda _session, text: log.sent.append(text))
        self.log = log

    async def handle(self, request: Any) -> None:
        self.log.paths.append(request.path)
        await super().handle(request)


@contextmanager
def serving(
    setup: Callable[[Emulator], None] = lambda _: None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[tuple[str, ServerLog]]:
    """Serve a fresh emulator on loopback in a thread of its own (its own
    ``trio.run``), with ``setup`` (its faults) applied, over TLS with
    ``ssl_context``; yields its base URL and its log, and stops it on leaving."""
    log = ServerLog()
    emulator = _RecordingEmulator(log)
    setup(emulator)
    ready = threading.Event()
    stop: list[Callable[[], None]] = []
    failed: list[BaseException] = []

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(emulator.serve, ssl_context=ssl_context))
            token = trio.lowlevel.current_trio_token()
            stop.append(lambda: token.run_sync_soon(nursery.cancel_scope.cancel))
            ready.set()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the caller, not lost in the thread
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="pulse-scenario-emulator", daemon=True)
    thread.start()
    ready.wait()
    if failed:
        raise failed[0]
    try:
        yield emulator.url(secure=ssl_context is not None), log
    finally:
        stop[0]()
        thread.join(10)


# -- the scenarios -------------------------------------------------------------------

Check: TypeAlias = Callable[[Observed, ServerLog], list[str]]


@attrs.frozen(kw_only=True)
class Scenario:
    """One end-to-end scenario: what the client does, what the server does
    wrong, and what must come of it (``check`` lists what was wrong)."""

    name: str
    description: str
    steps: tuple[Step, ...]
    check: Check
    faults: Callable[[Emulator], None] = lambda _: None
    settings: dict[str, Any] = attrs.field(factory=dict)
    options: dict[str, Any] = attrs.field(factory=dict)
    timeout: float = 20.0

    def target(self, base_url: str) -> Target:
        return Target(
            scenario=self.name,
            base_url=base_url,
            api_key=SCENARIO_KEY,
            settings=self.settings,
            options=self.options,
            steps=self.steps,
            timeout=self.timeout,
        )


def _audio(words: str) -> Step:
    return Step(op="audio", words=tuple(words.split()), audio=encode(words, trail=0.3))


_STOP = Step(op="speech_stopped")
_CLOSE = Step(op="close")
#: Reconnect at once on loopback: these scenarios test what happens, not how long it waits.
_QUICK = {"reconnect": {"base_delay": 0.05, "max_delay": 0.2}}


def _expect(
    words: str | None = None,
    *,
    error: str | None = None,
    connected: int | None = None,
    at_least_connected: int | None = None,
    events: Sequence[str] = (),
    no_events: Sequence[str] = ("AudioDropped",),
    handshakes: int | None = None,
    extra: Callable[[Observed, ServerLog], list[str]] = lambda _o, _s: [],
) -> Check:
    """A check: the words of the finals, the error, connections, events."""

    def check(observed: Observed, server: ServerLog) -> list[str]:
        wrong = []
        if observed.error != error:
            got = observed.error and f"{observed.error}: {observed.error_message}"
            wrong.append(f"the session should end with {error or 'no error'}, not {got or 'none'}")
        if words is not None and observed.words != words.split():
            wrong.append(f"the finals should hold exactly {words!r}, not {observed.finals!r}")
        if connected is not None and observed.connected != connected:
            wrong.append(f"{connected} connection(s) should open, not {observed.connected}")
        if at_least_connected is not None and observed.connected < at_least_connected:
            wrong.append(
                f"at least {at_least_connected} connections should open, not {observed.connected}"
            )
        if "Closed" not in observed.events:
            wrong.append("no Closed event was delivered")
        wrong += [
            f"no {name} event was delivered" for name in events if name not in observed.events
        ]
        wrong += [f"a {name} event was delivered" for name in no_events if name in observed.events]
        if handshakes is not None and server.handshakes != handshakes:
            wrong.append(
                f"the server should see {handshakes} handshake(s), not {server.handshakes}"
            )
        return wrong + extra(observed, server)

    return check


def _settings_reached_the_server(_observed: Observed, server: ServerLog) -> list[str]:
    if len(server.paths) < 2 or "diarize=true" in server.paths[0]:
        return ["the first connection should be made without diarize=true, and a second follow"]
    if "diarize=true" not in server.paths[-1]:
        return [f"the new settings should reach the server's URL; it saw {server.paths[-1]!r}"]
    return []


def _last_final(observed: Observed, server: ServerLog) -> list[str]:
    wrong = []
    if not server.sent_is_last:
        wrong.append("the server never sent is_last (close_stream was not sent)")
    if observed.is_last_missing is not False:
        wrong.append(f"Closed.is_last_missing should be False, not {observed.is_last_missing}")
    return wrong


def _silent(observed: Observed, _server: ServerLog) -> list[str]:
    if not any("stopped answering" in reason for reason in observed.disconnect_reasons):
        return [
            f"the silent server should be reported as such; reasons {observed.disconnect_reasons!r}"
        ]
    return []


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="finalize",
        description="words, then speech_stopped: they arrive as a final",
        steps=(_audio("every word arrives as a final"), _STOP, _CLOSE),
        check=_expect("every word arrives as a final", connected=1, events=["Transcript"]),
    ),
    Scenario(
        name="reconnect_replay",
        description="the server drops the connection mid-audio: a new one replays, no word lost",
        steps=(_audio("one two three four five six seven eight"), _STOP, _CLOSE),
        faults=lambda emulator: emulator.faults.drop(after_bytes=30_000),
        # The close gives up before anything else would replace a socket nobody
        # reported lost: a transport that forgets to report it fails here.
        options={**_QUICK, "close_timeout": 8.0, "finalize_timeout": 20.0, "ping_interval": 20.0},
        check=_expect(
            "one two three four five six seven eight",
            at_least_connected=2,
            events=["Disconnected", "Reconnecting"],
        ),
    ),
    Scenario(
        name="settings_change_mid_turn",
        description="update_settings mid-turn: the turn's final is kept, the new URL is used",
        steps=(
            Step(op="wait_connected"),  # the change is mid-turn on an open socket
            _audio("before the change"),
            Step(op="update_settings", changes={"diarize": True}),
            _audio("after the change"),
            _STOP,
            # A close while the switch waits for the turn's final abandons the switch
            # (nothing left to send on a new socket): wait for it to happen.
            Step(op="wait", seconds=0.5),
            _CLOSE,
        ),
        options=_QUICK,
        check=_expect(
            "before the change after the change",
            connected=2,
            events=["SettingsApplied"],
            extra=_settings_reached_the_server,
        ),
    ),
    Scenario(
        name="graceful_close",
        description="close with no finalize: close_stream is sent, the last final has is_last",
        steps=(_audio("the last words still arrive"), _CLOSE),
        check=_expect("the last words still arrive", connected=1, extra=_last_final),
    ),
    Scenario(
        name="refused_401",
        description="the key is refused (HTTP 401): one attempt, the documented error",
        steps=(_audio("nobody hears this"), _CLOSE),
        faults=lambda emulator: emulator.faults.refuse(3, status=401),
        options=_QUICK,
        check=_expect(
            error="AuthenticationError",
            connected=0,
            handshakes=1,
            events=["ConnectionFailed"],
            no_events=("Connected",),
        ),
    ),
    Scenario(
        name="silent_server",
        description="the server stops reading and answering (pings too): found out, replaced",
        steps=(
            _audio("spoken before the silence"),
            Step(op="wait", seconds=3.0),  # found out within ping_interval + ping_timeout
            _audio("and after it"),
            _STOP,
            _CLOSE,
        ),
        faults=lambda emulator: emulator.faults.silence(after_bytes=3_000),
        options={
            **_QUICK,
            "ping_interval": 1.0,
            "ping_timeout": 1.0,
            "keepalive_interval": 0.2,
            "max_chunk_delay": 0.0,
        },
        check=_expect(
            "spoken before the silence and after it",
            at_least_connected=2,
            events=["Disconnected"],
            extra=_silent,
        ),
    ),
    Scenario(
        name="server_error",
        description="the server sends an error message: it is surfaced as an event",
        steps=(_audio("an error is reported"), _STOP, _CLOSE),
        faults=lambda emulator: emulator.faults.error(1, code="INTERNAL_ERROR", after_bytes=2_000),
        options=_QUICK,
        check=_expect(events=["ServerError"]),
    ),
)

#: How a transport is tried: run the steps of a ``Target``, say what was observed.
Factory: TypeAlias = Callable[[Target], Observed]


@attrs.frozen
class Result:
    """One scenario's outcome for one transport."""

    scenario: str
    problems: tuple[str, ...]
    observed: Observed | None

    @property
    def passed(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.passed:
            return f"PASS {self.scenario}"
        return f"FAIL {self.scenario}: " + "; ".join(self.problems)


def run_scenario(scenario: Scenario, factory: Factory) -> Result:
    """Serve a fresh emulator with the scenario's faults, run ``factory``
    against it (in a thread: one that never returns is a failure, not a hang),
    and check what it observed."""
    with serving(scenario.faults) as (url, log):
        target = scenario.target(url)
        outcome: list[Observed | BaseException] = []

        def run() -> None:
            try:
                # Through JSON, as a factory in another process would get it.
                outcome.append(factory(Target.from_json(target.to_json())))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, name=f"pulse-scenario-{scenario.name}", daemon=True)
        thread.start()
        thread.join(scenario.timeout + 10.0)
    if not outcome:
        return Result(
            scenario.name,
            (f"the factory did not return within {scenario.timeout + 10:.0f} s",),
            None,
        )
    observed = outcome[0]
    if isinstance(observed, BaseException):
        problem = f"the factory raised {type(observed).__name__}: {observed}"
        return Result(scenario.name, (problem,), None)
    observed = Observed.from_json(observed.to_json())
    return Result(scenario.name, tuple(scenario.check(observed, log)), observed)


def run_all(factory: Factory, names: Sequence[str] = ()) -> list[Result]:
    """Run every scenario (or those named) against ``factory``, in order."""
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    return [run_scenario(scenario, factory) for scenario in chosen]


# -- carrying out the steps ---------------------------------------------------------------


async def play(
    target: Target,
    session: Any,
    *,
    sleep: Callable[[float], Awaitable[object]],
    connected: Callable[[], Awaitable[object]],
) -> None:
    """Carry out ``target.steps`` on ``session``, any session with
    ``pulse_trio.Session``'s methods, whatever its event loop: ``sleep`` and
    ``connected`` (returns once a ``Connected`` event came) are that loop's.
    Returns at the ``close`` step or the last one; leaving the session is the
    caller's."""
    for step in target.steps:
        if step.op == "audio":
            for start in range(0, len(step.audio), target.chunk_bytes):
                await session.send_audio(step.audio[start : start + target.chunk_bytes])
        elif step.op == "speech_stopped":
            await session.speech_stopped()
        elif step.op == "finalize":
            await session.finalize()
        elif step.op == "update_settings":
            await session.update_settings(**step.changes)
        elif step.op == "wait":
            await sleep(step.seconds)
        elif step.op == "wait_connected":
            await connected()
        elif step.op == "close":
            return
        else:
            raise ValueError(f"unknown step {step.op!r}")


# -- the Trio adapter's factory ----------------------------------------------------------


def trio_factory(target: Target) -> Observed:
    """Run ``target`` through ``pulse_trio.open_session``."""
    from pulse_trio import open_session  # noqa: PLC0415 (the emulator's own import stays light)

    events: list[Event] = []

    async def steps() -> None:
        async with open_session(
            target.api_key,
            settings=target.settings,
            base_url=target.base_url,
            encoding=target.encoding,
            sample_rate=target.sample_rate,
            **target.options,
        ) as session:
            session.event_handler("on_event")(events.append)
            connected = trio.Event()
            session.event_handler("on_connected")(lambda _event: connected.set())
            await play(target, session, sleep=trio.sleep, connected=connected.wait)

    async def run() -> BaseException | None:
        try:
            with trio.fail_after(target.timeout):
                await steps()
        except Exception as exc:
            return exc
        return None

    error = trio.run(run)
    return observe(events, error)


def _load(spec: str) -> Factory:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--factory wants package.module:function, not {spec!r}")
    factory: Factory = getattr(importlib.import_module(module), name)
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulse_trio.emulator.scenarios [--factory M:F] [--scenario NAME]...``"""
    parser = argparse.ArgumentParser(
        prog="python -m pulse_trio.emulator.scenarios",
        description="Run the end-to-end scenarios against a transport's factory.",
    )
    parser.add_argument(
        "--factory",
        default="pulse_trio.emulator.scenarios:trio_factory",
        help="package.module:function taking a Target and returning an Observed "
        "(default: the Trio adapter)",
    )
    parser.add_argument("--scenario", action="append", default=[], help="run only this one")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name}: {scenario.description}")
        return 0
    results = run_all(_load(args.factory), args.scenario)
    for result in results:
        print(result)
    failed = sum(not result.passed for result in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
