"""``Closing`` and ``Ending`` on their own: how a session ends.

Invariants checked (pulse_core/_closing.py):

* a close, once asked for, is never withdrawn: audio, finalize and settings
  are refused from then on, and in the states that take no more input
  (closing, closed, failed) whatever was asked; the error says whether the
  session failed;
* the deadline runs ``close_timeout`` from the latest request until ``stop``;
* ``Closed`` reports an ending's error and ``is_last_missing`` with the summary;
* the clean endings abandon nothing; a failure abandons all with
  ``session_failed``; ``not_started`` with ``not_started``;
* a close timeout: with no socket ever opened it is a failure to connect that
  names the last failure and how many there were; otherwise ``Closed.error``
  is set exactly when audio was left unconfirmed (naming the last failure
  only while reconnecting), ``is_last_missing`` exactly when ``close_stream``
  was waiting, and what is left is dropped with ``close_timeout``.
"""

from __future__ import annotations

import pytest

from pulse_core import Closed, DropReason, LatencySummary, LocalProtocolError, SessionSummary
from pulse_core._closing import Closing, Ending
from pulse_core._state import SOCKET_STATES, TRANSITIONS, State, Trigger

OPEN_STATES = [State.IDLE, State.CONNECTING, State.OPEN, State.DRAINING, State.BACKOFF]


# -- the request and its deadline -------------------------------------------------------


def test_the_deadline_runs_from_the_request_until_stopped() -> None:
    closing = Closing(10.0)
    assert (closing.requested, closing.deadline, closing.due(1e9)) == (False, None, False)
    closing.request(5.0)
    assert (closing.requested, closing.deadline) == (True, 15.0)
    assert not closing.due(14.999) and closing.due(15.0)
    closing.stop()
    assert (closing.requested, closing.deadline, closing.due(1e9)) == (True, None, False)


@pytest.mark.parametrize("state", OPEN_STATES)
def test_input_is_taken_until_close(state: State) -> None:
    closing = Closing(10.0)
    closing.refuse_input("finalize()", state)  # nothing raised
    assert not closing.over(state)
    closing.request(0.0)
    with pytest.raises(LocalProtocolError, match=r"^finalize\(\) after close\(\)$"):
        closing.refuse_input("finalize()", state)


@pytest.mark.parametrize(
    ("state", "when"),
    [(State.CLOSING, "close()"), (State.CLOSED, "close()"), (State.FAILED, "the session failed")],
)
def test_a_session_closing_or_over_takes_no_input(state: State, when: str) -> None:
    closing = Closing(10.0)
    assert closing.over(state)
    with pytest.raises(LocalProtocolError) as raised:
        closing.refuse_input("send_audio()", state)
    assert str(raised.value) == f"send_audio() after {when}"


# -- what each ending means -------------------------------------------------------------


def test_clean_endings_abandon_nothing() -> None:
    clean = [Ending.clean(), Ending.clean(is_last_missing=True)]
    assert clean == [Ending(Trigger.CLOSE_DONE), Ending(Trigger.CLOSE_DONE, is_last_missing=True)]


def test_a_close_before_start_abandons_its_audio_as_not_started() -> None:
    not_started = Ending.not_started()
    assert (not_started.trigger, not_started.error, not_started.dropped) == (
        Trigger.CLOSE_DONE,
        None,
        DropReason.NOT_STARTED,
    )
    assert not_started.unanswered == "session closed before it started"
    assert TRANSITIONS[(State.IDLE, not_started.trigger)] is State.CLOSED


def test_a_failure_abandons_everything() -> None:
    assert Ending.failed("HTTP 401") == Ending(
        Trigger.GIVE_UP,
        error="HTTP 401",
        dropped=DropReason.SESSION_FAILED,
        unanswered="session failed",
    )
    assert Ending.failed("x", Trigger.UNREACHABLE).trigger is Trigger.UNREACHABLE


@pytest.mark.parametrize(
    ("failures", "last", "error"),
    [
        (0, "", "could not reach the service: no connection opened within close_timeout"),
        (1, "HTTP 503", "could not reach the service after 1 failed attempt: HTTP 503"),
        (
            3,
            "connect timed out",
            "could not reach the service after 3 failed attempts: connect timed out",
        ),
    ],
)
@pytest.mark.parametrize("state", [State.CONNECTING, State.BACKOFF])
def test_a_close_timeout_before_any_socket_is_a_failure_to_connect(
    state: State, failures: int, last: str, error: str
) -> None:
    ending = Ending.close_timed_out(
        state, connected=False, unconfirmed=True, failures=failures, last_failure=last
    )
    assert ending == Ending.failed(error, Trigger.UNREACHABLE)
    assert TRANSITIONS[(state, ending.trigger)] is State.FAILED


@pytest.mark.parametrize("state", [State.CONNECTING, State.BACKOFF, State.OPEN, State.CLOSING])
@pytest.mark.parametrize("unconfirmed", [False, True])
def test_a_close_timeout_after_a_socket_opened(state: State, unconfirmed: bool) -> None:
    ending = Ending.close_timed_out(
        state, connected=True, unconfirmed=unconfirmed, failures=2, last_failure="dropped"
    )
    assert (ending.trigger, ending.dropped, ending.unanswered) == (
        Trigger.CLOSE_TIMEOUT,
        DropReason.CLOSE_TIMEOUT,
        "close timed out",
    )
    assert ending.is_last_missing == (state is State.CLOSING)
    if not unconfirmed:
        assert ending.error is None  # every tick confirmed: nothing was lost
    elif state in SOCKET_STATES:
        assert ending.error == "close timed out before the server confirmed all audio"
    else:
        assert ending.error == (
            "close timed out before the server confirmed all audio "
            "(while reconnecting after: dropped)"
        )
    if (state, ending.trigger) in TRANSITIONS:
        assert TRANSITIONS[(state, ending.trigger)] is State.CLOSED


def test_an_ending_is_reported_in_closed() -> None:
    summary = SessionSummary(
        audio_seconds_received=1.0,
        audio_seconds_sent=1.0,
        finals=1,
        finalized_turns=1,
        timed_out_turns=0,
        connections=1,
        reconnects=0,
        dropped_bytes=0,
        dropped_seconds=0.0,
        keepalives=0,
        latency=LatencySummary(budget=1.0),
    )
    assert Ending.clean().closed(summary) == Closed(summary=summary)
    assert Ending.clean(is_last_missing=True).closed(summary) == Closed(
        summary=summary, is_last_missing=True
    )
    assert Ending.failed("HTTP 401").closed(summary) == Closed(summary=summary, error="HTTP 401")


def test_a_close_timeout_while_reconnecting_without_a_failure_names_none() -> None:
    ending = Ending.close_timed_out(
        State.CONNECTING, connected=True, unconfirmed=True, failures=0, last_failure=""
    )
    assert ending.error == "close timed out before the server confirmed all audio"
