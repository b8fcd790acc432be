"""How a socket is lost, on its own: the words each event uses.

Invariants checked (pulse_core/_losses.py):

* the server's close keeps its code and reason for ``Disconnected`` (a
  missing reason is said plainly) and says in a line how it closed; without a
  close frame there is no code;
* a protocol violation and a silent or stalled server are closed by this side
  (``local``); only the silent and stalled ones need the engine to close the
  socket, with 1011;
* a fault during the handshake is worded as what ended it, with the reason
  if there is one.
"""

from __future__ import annotations

import pytest

from pulse_core import CloseConnection
from pulse_core._losses import (
    STALLED,
    Loss,
    broke_protocol,
    closed_by_server,
    handshake,
    silent,
)


@pytest.mark.parametrize(
    ("code", "reason", "loss"),
    [
        (1000, "bye", Loss(1000, "bye", "closed by the server with code 1000: bye")),
        (1008, "", Loss(1008, "closed by the server", "closed by the server with code 1008")),
        (None, "", Loss(None, "closed by the server", "closed by the server")),
        (None, "reset", Loss(None, "reset", "closed by the server: reset")),
    ],
)
def test_a_close_by_the_server(code: int | None, reason: str, loss: Loss) -> None:
    assert closed_by_server(code, reason) == loss
    assert not loss.local and loss.close is None


def test_a_protocol_violation_is_closed_by_this_side_already() -> None:
    loss = broke_protocol(1007, "invalid UTF-8")
    assert loss == Loss(
        1007,
        "invalid UTF-8",
        "closed with code 1007: the server broke the protocol (invalid UTF-8)",
        local=True,
    )
    assert loss.close is None  # the transport failed the socket itself


def test_a_silent_server_is_closed_with_1011() -> None:
    loss = silent(10.04)
    assert loss.summary == "no answer from the server for 10.0 s, not even to a ping"
    assert (loss.code, loss.reason, loss.local) == (1011, "server stopped answering", True)
    assert loss.close == CloseConnection(code=1011, reason="server stopped answering")


def test_a_stalled_server_is_closed_with_1011() -> None:
    assert (STALLED.code, STALLED.reason, STALLED.summary, STALLED.local) == (
        1011,
        "server stopped answering",
        "server stopped answering",
        True,
    )
    assert STALLED.close == CloseConnection(code=1011, reason="server stopped answering")


@pytest.mark.parametrize(
    ("what", "reason", "said"),
    [
        ("closed", "going away", "closed during handshake: going away"),
        ("closed", "", "closed during handshake"),
        ("protocol error", "bad frame", "protocol error during handshake: bad frame"),
    ],
)
def test_a_fault_during_the_handshake(what: str, reason: str, said: str) -> None:
    assert handshake(what, reason) == said
