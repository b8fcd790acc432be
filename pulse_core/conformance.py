"""The conformance kit: replay the ``spec/`` vectors against an engine and a parser.

``spec/scenarios/*.json`` are timed conversations with the engine (inputs, and
the exact commands, events and state each must produce); ``spec/messages/*.json``
are server frames and what parsing each must give. Their formats are in the
READMEs beside them. This module is the reference replayer, shared by the
project's tests and by anyone who builds on the engine or reimplements it::

    python -m pulse_core.conformance                  # every vector, this checkout's spec/
    python -m pulse_core.conformance --vectors DIR    # DIR holds scenarios/ and messages/
    python -m pulse_core.conformance -k close -v      # names containing "close", each listed

It prints one line per failing vector (every line with ``-v``), what differed,
and a count; the exit status is 0 when every vector passed, 1 when one failed,
2 for a usage error (no vectors found). From Python, :func:`replay_scenario`
and :func:`check_message` take the engine and the parser to check, so a wrapper
or a port of :class:`~pulse_core.PulseConnection` can be held to the same vectors.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._commands import CloseConnection, Connect, SendBinary, SendPing, SendText
from ._config import ConnectionConfig, ReconnectPolicy
from ._connection import PulseConnection
from ._errors import PulseError, RemoteProtocolError
from ._messages import ServerMessage, UnknownMessage, parse_server_message
from ._retry import JitterSource

__all__ = [
    "API_KEY",
    "BASE_URL",
    "DEFAULT_SPEC",
    "TOLERANCE",
    "EngineFactory",
    "Parser",
    "audio",
    "build_config",
    "check_message",
    "load",
    "main",
    "matches",
    "message_frame",
    "replay_scenario",
    "runs",
    "to_json",
]

#: The API key every scenario is configured with (its Connect headers show it).
API_KEY = "sk_test_vector_key"
#: The base URL of a scenario whose config names none.
BASE_URL = "ws://127.0.0.1:8765"
#: How far apart two numbers may be and still match.
TOLERANCE = 1e-6
#: The ``spec/`` directory of the checkout this module sits in, if it does.
DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "spec"

#: Makes the engine under test from a configuration and a jitter source.
EngineFactory = Callable[[ConnectionConfig, JitterSource | None], Any]
#: Parses one frame, given the size limit, into a server message.
Parser = Callable[..., ServerMessage]


# -- values as JSON ------------------------------------------------------------


def audio(spec: Any) -> bytes:
    """Audio written in a vector: a hex string, or runs ``[[byte_hex, count], ...]``."""
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return b"".join(bytes.fromhex(str(byte)) * int(count) for byte, count in spec)


def runs(data: bytes) -> list[list[Any]]:
    """``data`` as runs of equal bytes: ``[[byte_hex, count], ...]``."""
    found: list[list[Any]] = []
    for value in data:
        text = f"{value:02x}"
        if found and found[-1][0] == text:
            found[-1][1] += 1
        else:
            found.append([text, 1])
    return found


def to_json(value: Any) -> Any:
    """A command, event or message in the plain JSON form the vectors use."""
    if isinstance(value, SendBinary):
        return {"type": "send_binary", "audio": runs(value.data)}
    if isinstance(value, SendPing):
        return {"type": "send_ping", "payload": value.payload.hex()}
    if isinstance(value, SendText):
        return {"type": "send_text", "text": value.text}
    if isinstance(value, CloseConnection):
        return {"type": "close", "code": value.code, "reason": value.reason}
    if isinstance(value, Connect):
        return {
            "type": "connect",
            "url": value.url,
            "headers": [list(pair) for pair in value.headers],
            "attempt": value.attempt,
            "timeout": value.timeout,
        }
    if attrs.has(type(value)):
        data: dict[str, Any] = {"type": _snake(type(value).__name__)} if _typed(value) else {}
        for field in attrs.fields(type(value)):
            data[field.name] = to_json(getattr(value, field.name))
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    return value


def _snake(name: str) -> str:
    return "".join("_" + char.lower() if char.isupper() else char for char in name).lstrip("_")


#: Values nested in events and messages; they carry no ``type`` of their own.
_NESTED = frozenset({"Word", "Utterance", "LatencySummary", "SessionSummary"})


def _typed(value: Any) -> bool:
    kind = type(value)
    return (
        kind.__module__ in ("pulse_core._events", "pulse_core._messages")
        and kind.__name__ not in _NESTED
    )


def matches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """How ``actual`` differs from ``expected``, read as a subset: objects
    compare only the keys expected names, lists element by element, numbers
    within :data:`TOLERANCE`, everything else exactly (type included)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems: list[str] = []
        for key, value in expected.items():
            if key in actual:
                problems += matches(value, actual[key], f"{path}.{key}")
            else:
                problems.append(f"{path}.{key}: missing")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return [
            problem
            for index, (want, got) in enumerate(zip(expected, actual, strict=True))
            for problem in matches(want, got, f"{path}[{index}]")
        ]
    if isinstance(expected, float) or isinstance(actual, float):
        if (
            _number(expected)
            and _number(actual)
            and math.isclose(expected, actual, abs_tol=TOLERANCE)
        ):
            return []
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    if expected != actual or type(expected) is not type(actual):
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- scenarios -----------------------------------------------------------------


class _Draws:
    """A jitter source that returns a vector's listed draws in order."""

    def __init__(self, values: Sequence[float]) -> None:
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


def build_config(options: Mapping[str, Any]) -> ConnectionConfig:
    """A scenario's ``config`` as a :class:`ConnectionConfig`."""
    fields = dict(options)
    if "reconnect" in fields:
        fields["reconnect"] = ReconnectPolicy(**fields["reconnect"])
    fields.setdefault("base_url", BASE_URL)
    return ConnectionConfig(api_key=API_KEY, **fields)


def _apply(engine: Any, step: Mapping[str, Any]) -> Any:
    """Give the engine one step's input; return what the input returned."""
    now = step["at"]
    action = step["do"]
    if action == "send_audio":
        return engine.send_audio(now, audio(step["audio"]))
    if action == "receive_message":
        if "message" in step:
            return engine.receive_message(now, json.dumps(step["message"]))
        if "text" in step:
            return engine.receive_message(now, step["text"])
        return engine.receive_message(now, audio(step["binary"]))
    if action == "connection_failed":
        return engine.connection_failed(
            now,
            status=step.get("status"),
            reason=step.get("reason", ""),
            retry_after=step.get("retry_after"),
        )
    if action == "connection_refused":
        return engine.connection_refused(
            now,
            status=step["status"],
            body=step.get("body", ""),
            retry_after=step.get("retry_after"),
        )
    if action == "connection_closed":
        return engine.connection_closed(now, code=step.get("code"), reason=step.get("reason", ""))
    if action == "protocol_violation":
        return engine.protocol_violation(now, code=step["code"], reason=step.get("reason", ""))
    if action == "update_settings":
        return engine.update_settings(now, **step["changes"])
    return getattr(engine, action)(now)


def _default_engine(config: ConnectionConfig, jitter: JitterSource | None) -> PulseConnection:
    return PulseConnection(config, jitter=jitter)


def replay_scenario(
    vector: Mapping[str, Any], engine_factory: EngineFactory = _default_engine
) -> Iterator[str]:
    """Replay one conversation vector; yield a line for every difference.

    ``engine_factory(config, jitter)`` makes the engine under test (by default
    :class:`PulseConnection`); it must take the engine's inputs and offer
    ``commands()``, ``events()``, ``state`` and ``next_deadline()``.
    """
    draws = vector.get("jitter")
    engine = engine_factory(
        build_config(vector.get("config", {})), _Draws(draws) if draws is not None else None
    )
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['do']} at {step['at']})"
        expected_error = step.get("raises")
        try:
            result = _apply(engine, step)
        except PulseError as exc:
            if expected_error != type(exc).__name__:
                yield f"{where}: raised {type(exc).__name__}: {exc}"
                return
        else:
            if expected_error is not None:
                yield f"{where}: expected {expected_error}, nothing was raised"
            if "returns" in step and result != step["returns"]:
                yield f"{where}: returned {result!r}, expected {step['returns']!r}"
        for kind, outputs in (("commands", engine.commands()), ("events", engine.events())):
            got = [to_json(item) for item in outputs]
            want = step.get(kind, [])
            got_types = [item["type"] for item in got]
            want_types = [item["type"] for item in want]
            if got_types != want_types:
                yield f"{where}: {kind} {got_types} != expected {want_types}: {got}"
                continue
            for position, (expected, actual) in enumerate(zip(want, got, strict=True)):
                for problem in matches(expected, actual, f"{kind}[{position}]"):
                    yield f"{where}: {problem}"
        if "state" in step and engine.state.value != step["state"]:
            yield f"{where}: state {engine.state.value}, expected {step['state']}"
        if "next_deadline" in step:
            deadline = engine.next_deadline()
            wanted = step["next_deadline"]
            if (deadline is None) != (wanted is None) or (
                deadline is not None and not math.isclose(deadline, wanted, abs_tol=TOLERANCE)
            ):
                yield f"{where}: next_deadline {deadline}, expected {wanted}"


# -- messages ------------------------------------------------------------------


def message_frame(vector: Mapping[str, Any]) -> str | bytes:
    """The frame a message vector describes (``frame``: object, text or bytes)."""
    kind = vector.get("frame", "object")
    if kind == "text":
        return str(vector["input"]["text"])
    if kind == "bytes":
        return bytes.fromhex(vector["input"]["hex"])
    return json.dumps(vector["input"])


def check_message(vector: Mapping[str, Any], parse: Parser = parse_server_message) -> list[str]:
    """Parse one message vector's frame with ``parse``; a line for every difference."""
    options = {"max_size": vector["max_size"]} if "max_size" in vector else {}
    try:
        message = parse(message_frame(vector), **options)
    except RemoteProtocolError as exc:
        if "error" not in vector:
            return [f"rejected: {exc}"]
        mention = vector.get("error_mentions")
        if mention is not None and mention.lower() not in str(exc).lower():
            return [f"error {str(exc)!r} does not mention {mention!r}"]
        return []
    if "error" in vector:
        return [f"expected {vector['error']}, parsed {to_json(message)!r}"]
    expect = vector["expect"]
    problems = matches(expect, to_json(message))
    if (expect["type"] == "unknown_message") != isinstance(message, UnknownMessage):
        problems.append(f"parsed as {type(message).__name__}, expected type {expect['type']!r}")
    return problems


# -- the command ---------------------------------------------------------------


def load(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every vector in ``directory`` (its ``schema.json`` aside), by name, sorted."""
    return [
        (path.stem, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(directory.glob("*.json"))
        if path.name != "schema.json"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulse_core.conformance``: replay the vectors, report, and
    return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pulse_core.conformance",
        description="Replay the spec/ vectors (scenarios against PulseConnection, "
        "messages against parse_server_message) and report each difference.",
    )
    parser.add_argument(
        "--vectors",
        type=Path,
        default=DEFAULT_SPEC,
        metavar="DIR",
        help="a directory holding scenarios/ and messages/ (default: this checkout's spec/)",
    )
    parser.add_argument("-k", metavar="TEXT", default="", help="only vectors whose name has TEXT")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing vectors too")
    options = parser.parse_args(argv)
    suites: list[tuple[str, Callable[[Mapping[str, Any]], Iterator[str] | list[str]]]] = [
        ("scenarios", replay_scenario),
        ("messages", check_message),
    ]
    found = 0
    failed = 0
    for suite, check in suites:
        directory = options.vectors / suite
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
        for path in paths:
            name = path.stem
            if path.name == "schema.json" or options.k not in name:
                continue
            found += 1
            try:
                problems = list(check(json.loads(path.read_text(encoding="utf-8"))))
            except Exception as exc:  # a vector the replayer cannot read
                problems = [f"could not be replayed: {type(exc).__name__}: {exc}"]
            if problems:
                failed += 1
                print(f"FAIL {suite}/{name}")
                for problem in problems:
                    print(f"     {problem}")
            elif options.verbose:
                print(f"ok   {suite}/{name}")
    if not found:
        print(
            f"no vectors found under {options.vectors} (it should hold scenarios/ and messages/); "
            "pass --vectors DIR",
            file=sys.stderr,
        )
        return 2
    print(f"{found - failed} of {found} vectors passed" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
