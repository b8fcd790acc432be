"""Replay JSON conversation vectors (spec/scenarios/) against PulseConnection.

The format is documented in spec/scenarios/README.md and spec/scenarios/schema.json.
This module is the reference replayer; transports in other languages follow the
same rules.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

import pulse_core
from pulse_core import (
    CloseConnection,
    Connect,
    ConnectionConfig,
    PulseConnection,
    ReconnectPolicy,
    SendBinary,
    SendPing,
    SendText,
)

SPEC = Path(__file__).resolve().parents[2] / "spec"
SCENARIOS = SPEC / "scenarios"
MESSAGES = SPEC / "messages"
API_KEY = "sk_test_vector_key"
BASE_URL = "ws://127.0.0.1:8765"
TOLERANCE = 1e-6


def audio(spec: Any) -> bytes:
    """Audio from its vector form: a hex string or runs of ``[byte_hex, count]``."""
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return b"".join(bytes.fromhex(byte) * count for byte, count in spec)


def runs(data: bytes) -> list[list[Any]]:
    """The run-length form of ``data``: ``[[byte_hex, count], ...]``."""
    result: list[list[Any]] = []
    for value in data:
        text = f"{value:02x}"
        if result and result[-1][0] == text:
            result[-1][1] += 1
        else:
            result.append([text, 1])
    return result


def _snake(name: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in name).lstrip("_")


def to_json(value: Any) -> Any:
    """A command, event or message as plain JSON values."""
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
        data = {"type": _snake(type(value).__name__)} if _is_top_level(value) else {}
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


def _is_top_level(value: Any) -> bool:
    module = type(value).__module__
    return module in ("pulse_core._events", "pulse_core._messages") and type(
        value
    ).__name__ not in (
        "Word",
        "Utterance",
        "LatencySummary",
        "SessionSummary",
    )


def matches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Differences between an expected value (a subset) and the actual one."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems.extend(matches(value, actual[key], f"{path}.{key}"))
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        return [
            p
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for p in matches(e, a, f"{path}[{i}]")
        ]
    if isinstance(expected, float) or isinstance(actual, float):
        if (
            isinstance(expected, int | float)
            and isinstance(actual, int | float)
            and not isinstance(expected, bool)
            and not isinstance(actual, bool)
            and math.isclose(expected, actual, abs_tol=TOLERANCE)
        ):
            return []
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    if expected != actual or type(expected) is not type(actual):
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


class _Draws:
    def __init__(self, values: list[float]) -> None:
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


def build_config(spec: Mapping[str, Any]) -> ConnectionConfig:
    options = dict(spec)
    if "reconnect" in options:
        options["reconnect"] = ReconnectPolicy(**options["reconnect"])
    options.setdefault("base_url", BASE_URL)
    return ConnectionConfig(api_key=API_KEY, **options)


def _apply(conn: PulseConnection, step: Mapping[str, Any]) -> Any:
    now = step["at"]
    action = step["do"]
    if action == "send_audio":
        return conn.send_audio(now, audio(step["audio"]))
    if action == "receive_message":
        if "message" in step:
            return conn.receive_message(now, json.dumps(step["message"]))
        if "text" in step:
            return conn.receive_message(now, step["text"])
        return conn.receive_message(now, audio(step["binary"]))
    if action == "connection_failed":
        return conn.connection_failed(
            now,
            status=step.get("status"),
            reason=step.get("reason", ""),
            retry_after=step.get("retry_after"),
        )
    if action == "connection_closed":
        return conn.connection_closed(now, code=step.get("code"), reason=step.get("reason", ""))
    if action == "protocol_violation":
        return conn.protocol_violation(now, code=step["code"], reason=step.get("reason", ""))
    if action == "update_settings":
        return conn.update_settings(now, **step["changes"])
    method = getattr(conn, action)
    return method(now)


def replay(vector: Mapping[str, Any]) -> Iterator[str]:
    """Replay one vector; yield a description of every mismatch."""
    draws = vector.get("jitter")
    conn = PulseConnection(
        build_config(vector.get("config", {})), jitter=_Draws(draws) if draws is not None else None
    )
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['do']} at {step['at']})"
        expected_error = step.get("raises")
        try:
            result = _apply(conn, step)
        except pulse_core.PulseError as exc:
            if expected_error != type(exc).__name__:
                yield f"{where}: raised {type(exc).__name__}: {exc}"
                return
        else:
            if expected_error is not None:
                yield f"{where}: expected {expected_error}, nothing was raised"
            if "returns" in step and result != step["returns"]:
                yield f"{where}: returned {result!r}, expected {step['returns']!r}"
        for kind, actual in (("commands", conn.commands()), ("events", conn.events())):
            got = [to_json(item) for item in actual]
            want = step.get(kind, [])
            if len(got) != len(want) or [g["type"] for g in got] != [w["type"] for w in want]:
                yield f"{where}: {kind} {[g['type'] for g in got]} != expected {[w['type'] for w in want]}: {got}"
                continue
            for position, (w, g) in enumerate(zip(want, got, strict=True)):
                for problem in matches(w, g, f"{kind}[{position}]"):
                    yield f"{where}: {problem}"
        if "state" in step and conn.state.value != step["state"]:
            yield f"{where}: state {conn.state.value}, expected {step['state']}"
        if "next_deadline" in step:
            deadline = conn.next_deadline()
            want_deadline = step["next_deadline"]
            if (deadline is None) != (want_deadline is None) or (
                deadline is not None
                and not math.isclose(deadline, want_deadline, abs_tol=TOLERANCE)
            ):
                yield f"{where}: next_deadline {deadline}, expected {want_deadline}"


def load(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.stem, json.loads(path.read_text()))
        for path in sorted(directory.glob("*.json"))
        if path.name != "schema.json"
    ]
