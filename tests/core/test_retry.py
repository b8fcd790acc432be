"""``Retry`` on its own: whether to connect again, and when.

Invariants checked (pulse_core/_retry.py):

* refusals: 4xx other than 408 and 429 are final, as are redirects (never
  followed), anything the transport calls final and any refusal asking to
  wait longer than ``max_retry_after``; 408, 429, 5xx and no answer at all
  are retried;
* a verdict is reported as judged: ``ConnectionFailed`` is permanent exactly
  when the verdict is final, ``Reconnecting`` numbers the next attempt;
* a server error is final only for the codes no reconnect can cure
  (``PERMANENT_ERROR_CODES``), and then names the attempt that connected;
* a ``Retry-After`` is a floor under the backoff, and close code 1008 (the
  concurrency limit) puts ``concurrency_delay`` under it;
* ``attempt`` counts consecutive failures; ``max_attempts`` of them give up
  (``gave_up``), a final refusal does not count as giving up; a connection
  that stayed open ``stable_after`` seconds resets the count when it ends;
* the jitter source is drawn from exactly once per scheduled retry and never
  for a verdict that gives up, and the delay is the policy's for that draw;
* the clocks: an attempt times out ``timeout`` after it is dialled unless it
  opens or fails; a verdict that is not final schedules the next attempt
  ``delay`` after the failure, a final one schedules nothing; ``stop`` clears
  both.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import ConnectionFailed, Reconnecting, ReconnectPolicy
from pulse_core._retry import (
    CONCURRENCY_LIMIT_CLOSE,
    PERMANENT_ERROR_CODES,
    REFUSAL_BODY_CHARS,
    Retry,
    Verdict,
    refusal_reason,
    retry_after_seconds,
)
from pulse_core._secrets import Redactor


class Draws:
    """A jitter source that always draws ``value`` and counts its draws."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.value


def policy(**overrides: object) -> ReconnectPolicy:
    fields: dict[str, object] = {
        "base_delay": 1.0,
        "multiplier": 2.0,
        "max_delay": 8.0,
        "max_attempts": None,
        "jitter": 0.5,
        "stable_after": 5.0,
        "max_retry_after": 30.0,
        "concurrency_delay": 2.0,
    }
    fields.update(overrides)
    return ReconnectPolicy(**fields)  # type: ignore[arg-type]


def make(draw: float = 0.5, **overrides: object) -> tuple[Retry, Draws]:
    draws = Draws(draw)
    return Retry(policy(**overrides), draws), draws


def refuse(
    retry: Retry, status: int | None, *, retry_after: float | None = None, final: bool = False
) -> Verdict:
    return retry.refused(0.0, status=status, reason="", retry_after=retry_after, final=final)


# -- refusals -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 422, 451, 499])
def test_client_errors_are_final(status: int) -> None:
    retry, draws = make()
    verdict = refuse(retry, status)
    assert verdict == Verdict(True, False, f"HTTP {status}", 0.0, 1)
    assert draws.calls == 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599, None])
def test_other_refusals_are_retried(status: int | None) -> None:
    retry, draws = make()
    verdict = refuse(retry, status)
    reason = f"HTTP {status}" if status else "connection failed"
    # The first delay is base_delay shortened by jitter * draw.
    assert verdict == Verdict(False, False, reason, 0.75, 1)
    assert draws.calls == 1


def test_a_reason_given_is_kept() -> None:
    retry, _ = make()
    verdict = retry.refused(0.0, status=401, reason="bad key", retry_after=None, final=False)
    assert verdict.reason == "bad key"


def test_the_transport_can_call_a_refusal_final() -> None:
    retry, draws = make()
    verdict = refuse(retry, None, final=True)
    assert (verdict.final, verdict.gave_up, verdict.delay) == (True, False, 0.0)
    assert draws.calls == 0
    other, other_draws = make()
    verdict = refuse(other, 503, final=True)
    assert (verdict.final, verdict.gave_up, verdict.delay) == (True, False, 0.0)
    assert other_draws.calls == 0


def test_retry_after_is_a_floor_under_the_backoff() -> None:
    retry, draws = make()
    assert refuse(retry, 503, retry_after=4.0).delay == 4.0
    assert refuse(retry, 429, retry_after=0.1).delay == 1.5  # the backoff is longer
    assert draws.calls == 2


def test_a_429_asking_too_long_a_wait_is_final() -> None:
    retry, draws = make()
    assert refuse(retry, 429, retry_after=30.0).delay == 30.0  # at the limit: waited for
    verdict = refuse(retry, 429, retry_after=30.5)
    assert verdict == Verdict(True, False, "HTTP 429 (asked to retry after 30.5 s)", 0.0, 2)
    assert draws.calls == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_final(status: int) -> None:
    retry, draws = make()
    verdict = refuse(retry, status)
    assert verdict.final and not verdict.gave_up
    assert "redirects are not followed" in verdict.reason
    assert draws.calls == 0


@pytest.mark.parametrize("status", [500, 503, 429])
def test_every_retry_after_is_bounded(status: int) -> None:
    retry, draws = make()
    verdict = refuse(retry, status, retry_after=86400.0)
    assert verdict.final and "asked to retry after 86400 s" in verdict.reason
    assert draws.calls == 0


# -- attempts -----------------------------------------------------------------------


def test_backoff_grows_to_max_delay() -> None:
    retry, _ = make(draw=0.0)
    assert [refuse(retry, 503).delay for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert retry.attempt == 6


def test_without_a_jitter_source_the_delay_is_the_raw_one() -> None:
    retry = Retry(policy(), None)
    assert [refuse(retry, 503).delay for _ in range(3)] == [1.0, 2.0, 4.0]


def test_max_attempts_gives_up_without_drawing() -> None:
    retry, draws = make(max_attempts=3)
    assert [refuse(retry, 503).final for _ in range(2)] == [False, False]
    verdict = refuse(retry, 503)
    assert verdict == Verdict(True, True, "gave up after 3 attempts: HTTP 503", 0.0, 3)
    assert draws.calls == 2


def test_one_attempt_gives_up_at_the_first_failure() -> None:
    retry, draws = make(max_attempts=1)
    verdict = retry.lost(10.0, code=1006, reason="dropped")
    assert verdict == Verdict(True, True, "gave up after 1 attempts: dropped", 0.0, 1)
    assert draws.calls == 0


def test_a_final_refusal_on_the_last_attempt_is_not_giving_up() -> None:
    retry, _ = make(max_attempts=2)
    refuse(retry, 503)
    verdict = refuse(retry, 401)
    assert (verdict.final, verdict.gave_up, verdict.reason) == (True, False, "HTTP 401")


def test_never_giving_up() -> None:
    retry, draws = make(max_attempts=None)
    assert not any(refuse(retry, 503).final for _ in range(200))
    assert draws.calls == 200
    assert retry.attempt == 200


def test_dial_numbers_the_attempt() -> None:
    retry, _ = make()
    assert (retry.dial(0.0, 1.0), retry.dialled) == (1, 1)
    refuse(retry, 503)
    refuse(retry, 503)
    assert retry.dial(0.0, 1.0) == 3
    retry.opened(0.0)
    retry.settle(10.0)
    assert (retry.dialled, retry.dial(10.0, 1.0)) == (3, 1)


# -- the events that report a verdict ------------------------------------------------


def test_a_verdict_is_reported_as_it_was_judged() -> None:
    retry, _ = make(max_attempts=2)
    verdict = refuse(retry, 429, retry_after=4.0)
    assert verdict.failure(status=429, retry_after=4.0) == ConnectionFailed(
        reason="HTTP 429", status=429, permanent=False, retry_after=4.0, attempt=1, gave_up=False
    )
    assert verdict.reconnecting() == Reconnecting(attempt=2, delay=4.0, reason="HTTP 429")
    out = retry.lost(1.0, code=None, reason="dropped")  # before stable_after
    assert out.failure() == ConnectionFailed(
        reason="gave up after 2 attempts: dropped",
        status=None,
        permanent=True,
        retry_after=None,
        attempt=2,
        gave_up=True,
    )
    final = make()[0].refused(0.0, status=401, reason="bad key", retry_after=None, final=False)
    assert (final.failure(status=401).permanent, final.failure(status=401).gave_up) == (True, False)


# -- server errors --------------------------------------------------------------------


def test_a_server_error_no_reconnect_can_cure_is_final() -> None:
    retry, draws = make()
    refuse(retry, 503)
    retry.dial(0.0, 1.0)
    retry.opened(1.0)
    verdict = retry.server_error("LANGUAGE_NOT_ENABLED_IN_REGION", "not here")
    assert verdict == Verdict(True, False, "LANGUAGE_NOT_ENABLED_IN_REGION: not here", 0.0, 2)
    assert "LANGUAGE_NOT_ENABLED_IN_REGION" in PERMANENT_ERROR_CODES
    assert (draws.calls, retry.attempt, retry.deadline()) == (1, 1, None)


@pytest.mark.parametrize("code", [None, "", "RATE_LIMITED", "language_not_enabled_in_region"])
def test_other_server_errors_leave_the_connection_be(code: str | None) -> None:
    retry, draws = make()
    assert retry.server_error(code, "oops") is None
    assert (draws.calls, retry.attempt, retry.reason) == (0, 0, "")


# -- the clocks: the attempt in flight, the next attempt --------------------------


def test_an_attempt_times_out_unless_it_opens() -> None:
    retry, _ = make()
    assert (retry.deadline(), retry.timed_out(1e9), retry.due(1e9)) == (None, False, False)
    retry.dial(10.0, 3.0)
    assert (retry.connect_deadline, retry.deadline()) == (13.0, 13.0)
    assert not retry.timed_out(12.999) and retry.timed_out(13.0)
    retry.opened(12.0)
    assert (retry.deadline(), retry.timed_out(20.0)) == (None, False)


def test_a_refusal_stops_the_attempt_clock_and_schedules_the_next() -> None:
    retry, _ = make()
    retry.dial(10.0, 3.0)
    verdict = retry.refused(11.0, status=503, reason="", retry_after=None, final=False)
    assert (retry.connect_deadline, retry.retry_at) == (None, 11.0 + verdict.delay)
    assert retry.deadline() == 11.75  # 1 s, shortened by jitter 0.5 at draw 0.5
    assert not retry.due(11.749) and retry.due(11.75)
    assert not retry.timed_out(100.0)
    retry.dial(11.75, 3.0)  # the next attempt: only its own clock runs
    assert (retry.retry_at, retry.deadline(), retry.due(100.0)) == (None, 14.75, False)


def test_a_lost_connection_schedules_the_next_attempt() -> None:
    retry, _ = make()
    retry.dial(0.0, 3.0)
    retry.opened(1.0)
    verdict = retry.lost(2.0, code=None, reason="dropped")
    assert (retry.retry_at, retry.deadline()) == (2.0 + verdict.delay, 2.0 + verdict.delay)


@pytest.mark.parametrize("status", [401, 503])
def test_a_final_verdict_schedules_nothing(status: int) -> None:
    retry, _ = make(max_attempts=1)
    retry.dial(0.0, 3.0)
    assert refuse(retry, status).final
    assert (retry.retry_at, retry.connect_deadline, retry.deadline()) == (None, None, None)
    lost, _ = make(max_attempts=1)
    lost.dial(0.0, 3.0)
    lost.opened(0.5)
    assert lost.lost(1.0, code=None, reason="dropped").final
    assert lost.deadline() is None


def test_stop_clears_both_clocks() -> None:
    retry, _ = make()
    retry.dial(0.0, 3.0)
    retry.stop()
    assert (retry.deadline(), retry.timed_out(10.0)) == (None, False)
    refuse(retry, 503)
    retry.stop()
    assert (retry.deadline(), retry.due(10.0)) == (None, False)


# -- lost connections ---------------------------------------------------------------------


def test_a_connection_lost_soon_counts_on() -> None:
    retry, draws = make()
    refuse(retry, 503)
    retry.opened(10.0)
    verdict = retry.lost(14.9, code=1006, reason="dropped")
    assert verdict == Verdict(False, False, "dropped", 1.5, 2)
    assert draws.calls == 2


def test_a_connection_that_stayed_open_resets_the_count() -> None:
    retry, _ = make()
    for _ in range(3):
        refuse(retry, 503)
    retry.opened(10.0)
    verdict = retry.lost(15.0, code=1006, reason="dropped")  # exactly stable_after
    assert (verdict.attempt, verdict.delay) == (1, 0.75)


def test_settle_forgives_only_after_stable_after() -> None:
    retry, _ = make()
    refuse(retry, 503)
    retry.opened(1.0)
    retry.settle(5.9)
    assert retry.attempt == 1
    retry.settle(6.0)
    assert retry.attempt == 0


def test_the_concurrency_close_waits_at_least_concurrency_delay() -> None:
    retry, draws = make()
    retry.opened(0.0)
    verdict = retry.lost(1.0, code=CONCURRENCY_LIMIT_CLOSE, reason="too many")
    assert (verdict.final, verdict.delay) == (False, 2.0)
    # Another close code has no floor.
    assert retry.lost(1.0, code=1011, reason="error").delay == 1.5
    # A backoff already longer than the floor stands.
    assert retry.lost(1.0, code=CONCURRENCY_LIMIT_CLOSE, reason="too many").delay == 3.0
    assert draws.calls == 3


def test_losing_the_last_attempt_gives_up_without_drawing() -> None:
    retry, draws = make(max_attempts=2)
    retry.opened(0.0)
    assert not retry.lost(1.0, code=None, reason="dropped").final
    retry.opened(2.0)
    verdict = retry.lost(3.0, code=CONCURRENCY_LIMIT_CLOSE, reason="too many")
    assert verdict == Verdict(True, True, "gave up after 2 attempts: too many", 0.0, 2)
    assert draws.calls == 1


# -- any sequence -------------------------------------------------------------------------

_FAILURES = st.lists(
    st.one_of(
        st.tuples(
            st.just("refused"),
            st.sampled_from([None, 301, 400, 401, 403, 404, 408, 429, 500, 503]),
            st.one_of(st.none(), st.floats(0, 60)),
            st.booleans(),
        ),
        st.tuples(
            st.just("lost"),
            st.sampled_from([None, 1000, 1006, 1008, 1011]),
            st.floats(0, 12),  # seconds the connection stayed open
            st.just(False),
        ),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    failures=_FAILURES,
    draw=st.floats(0, 0.999),
    jitter=st.sampled_from([0.0, 0.3, 1.0]),
    max_attempts=st.one_of(st.none(), st.integers(1, 6)),
)
def test_one_draw_per_retry_and_delays_within_the_policy(
    failures: list[tuple[str, int | None, float | None, bool]],
    draw: float,
    jitter: float,
    max_attempts: int | None,
) -> None:
    retry, draws = make(draw=draw, jitter=jitter, max_attempts=max_attempts)
    rules = policy(jitter=jitter, max_attempts=max_attempts)
    now = 0.0
    scheduled = 0
    expected_attempt = 0
    for kind, code, extra, final in failures:
        permanent = False
        if kind == "refused":
            verdict = retry.refused(now, status=code, reason="", retry_after=extra, final=final)
            floor = extra or 0.0
            permanent = (
                final
                or (code is not None and 400 <= code < 500 and code not in (408, 429))
                or (code is not None and 300 <= code < 400)
                or (extra is not None and extra > rules.max_retry_after)
            )
        else:
            assert extra is not None
            opened = now
            retry.opened(opened)
            now += extra
            if opened + rules.stable_after <= now:
                expected_attempt = 0
            verdict = retry.lost(now, code=code, reason="lost")
            floor = rules.concurrency_delay if code == CONCURRENCY_LIMIT_CLOSE else 0.0
        expected_attempt += 1
        assert verdict.attempt == expected_attempt == retry.attempt
        exhausted = max_attempts is not None and expected_attempt >= max_attempts
        assert verdict.final == (permanent or exhausted)
        assert verdict.gave_up == (exhausted and not permanent)
        if verdict.final:
            assert verdict.delay == 0.0
            break
        scheduled += 1
        raw = rules.raw_delay(expected_attempt)
        assert verdict.delay == pytest.approx(max(rules.delay(expected_attempt, draw), floor))
        assert raw * (1 - jitter) - 1e-9 <= verdict.delay <= max(raw, floor) + 1e-9
    assert draws.calls == scheduled


# -- a refusal as the transport saw it -------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (b" 2.5 ", 2.5),
        ("-4", 0.0),
        ("inf", float("inf")),  # then refused for now by max_retry_after
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # a date: the policy's own delay
        ("soon", None),
        ("", None),
        (None, None),
        (7, 7.0),
    ],
)
def test_retry_after_is_read_as_seconds(
    header: str | bytes | int | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header) == seconds


def test_a_refusal_body_is_redacted_before_it_is_cut() -> None:
    key = "sk_retry_test_key_0123456789"
    redactor = Redactor(key)
    # The key straddles the cut: cut first, its head would be left showing.
    body = ("x" * (REFUSAL_BODY_CHARS - 5) + key + " more").encode()
    reason = refusal_reason(redactor, 401, body)
    assert reason.startswith("HTTP 401: xxx") and reason.endswith("<reda")
    assert key[:5] not in reason  # too short a piece to be recognised once cut
    assert len(reason) == len("HTTP 401: ") + REFUSAL_BODY_CHARS
    assert refusal_reason(redactor, 503, b"  ") == "HTTP 503"
    assert refusal_reason(redactor, 400, b"\xffbad") == "HTTP 400: \ufffdbad"
