"""The session state machine, written as data.

Rules (spec/PROTOCOL.md, "State machine"):

* A session moves through connections: it is CONNECTING, OPEN, or waiting in
  BACKOFF between them. DRAINING is an open connection that is finishing its
  turn before a settings change switches to a new one; CLOSING is an open
  connection that has been sent ``close_stream`` and awaits ``is_last``.
* CLOSED (graceful, or the close timed out) and FAILED (refused for good,
  retries exhausted, or the close timed out before any connection opened) are
  terminal. No input leaves them.
* The engine classifies every input into one of the ``Trigger`` values below
  and looks the pair up in ``TRANSITIONS``. A pair that is not in the table is
  a bug in the engine, not a runtime condition.

Running ``python -m pulse_core._state`` prints the table as Markdown; the copy
in spec/PROTOCOL.md is checked against it by the tests.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["TRANSITIONS", "State", "Trigger", "markdown_table"]


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    DRAINING = "draining"
    BACKOFF = "backoff"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class Trigger(enum.Enum):
    START = "start"
    OPENED = "opened"
    CONNECT_FAILED = "connect failed (will retry)"
    CONNECTION_LOST = "connection lost (will retry)"
    RETRY_DUE = "backoff elapsed"
    SWITCH = "settings changed, nothing pending"
    DRAIN = "settings changed mid-turn"
    DRAINED = "turn answered or timed out"
    CLOSE = "close() with audio to deliver"
    CLOSE_DONE = "is_last, or nothing left to deliver"
    CLOSE_TIMEOUT = "close timeout"
    GIVE_UP = "permanent refusal or retries exhausted"
    UNREACHABLE = "close timeout, never connected"


_S, _T = State, Trigger

#: (state, trigger) -> next state. Anything missing cannot happen.
TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (_S.IDLE, _T.START): _S.CONNECTING,
    (_S.IDLE, _T.CLOSE_DONE): _S.CLOSED,
    (_S.CONNECTING, _T.OPENED): _S.OPEN,
    (_S.CONNECTING, _T.CONNECT_FAILED): _S.BACKOFF,
    (_S.CONNECTING, _T.SWITCH): _S.CONNECTING,
    (_S.CONNECTING, _T.GIVE_UP): _S.FAILED,
    (_S.CONNECTING, _T.CLOSE_DONE): _S.CLOSED,
    (_S.CONNECTING, _T.CLOSE_TIMEOUT): _S.CLOSED,
    (_S.CONNECTING, _T.UNREACHABLE): _S.FAILED,
    (_S.OPEN, _T.CONNECTION_LOST): _S.BACKOFF,
    (_S.OPEN, _T.SWITCH): _S.CONNECTING,
    (_S.OPEN, _T.DRAIN): _S.DRAINING,
    (_S.OPEN, _T.CLOSE): _S.CLOSING,
    (_S.OPEN, _T.GIVE_UP): _S.FAILED,
    (_S.DRAINING, _T.DRAINED): _S.CONNECTING,
    (_S.DRAINING, _T.CONNECTION_LOST): _S.BACKOFF,
    (_S.DRAINING, _T.CLOSE): _S.CLOSING,
    (_S.DRAINING, _T.GIVE_UP): _S.FAILED,
    (_S.BACKOFF, _T.RETRY_DUE): _S.CONNECTING,
    (_S.BACKOFF, _T.CLOSE_DONE): _S.CLOSED,
    (_S.BACKOFF, _T.CLOSE_TIMEOUT): _S.CLOSED,
    (_S.BACKOFF, _T.UNREACHABLE): _S.FAILED,
    (_S.CLOSING, _T.CLOSE_DONE): _S.CLOSED,
    (_S.CLOSING, _T.CONNECTION_LOST): _S.BACKOFF,
    (_S.CLOSING, _T.CLOSE_TIMEOUT): _S.CLOSED,
    (_S.CLOSING, _T.GIVE_UP): _S.FAILED,
}

#: States with a WebSocket open.
SOCKET_STATES: Final = frozenset({State.OPEN, State.DRAINING, State.CLOSING})
#: States that accept no more input from the application.
TERMINAL_STATES: Final = frozenset({State.CLOSED, State.FAILED})


def markdown_table() -> str:
    """The transition table as Markdown rows: state, trigger, next state."""
    lines = ["| state | trigger | next state |", "|---|---|---|"]
    lines.extend(
        f"| {state.value} | {trigger.value} | {target.value} |"
        for (state, trigger), target in TRANSITIONS.items()
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table(), end="")
