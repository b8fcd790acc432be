"""``Turns`` and ``Latency`` on their own: finalize requests and their answers.

Invariants checked (pulse_core/_turns.py):

* a turn opens only when audio came since the last one; turns are numbered in
  order and each request knows its position, deadline and whether the
  application asked;
* finals answer the requests in flight first in, first out; ``from_finalize``
  ``True`` answers, ``False`` never does, ``None`` (older servers) answers
  when something is in flight;
* every request ends exactly once: answered (``Answer.late`` false) or timed
  out (``FinalizeTimedOut``), never both, never neither; a timed-out request
  in flight is an orphan at the head of the FIFO whose final, if it comes, is
  late;
* when a socket ends its unanswered requests are owed again, in order and
  ahead of newer ones, and orphans are forgotten;
* ``reask`` asks again only when the latest request's audio is replayed and no
  owed request already covers it;
* at most ``max_pending`` requests are unanswered (``make_room`` times out the
  oldest); ``end`` times out what is in flight, and what is owed when told to;
* ``expire`` times out what is due, oldest first, and stops at a request sent
  on the judged socket with nothing heard there since: the socket is stalled;
* TTFS latency: nearest-rank percentiles over the latest samples, mean and
  maximum over all, and the count over budget.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import FinalizeTimedOut, LatencySummary
from pulse_core._turns import Answer, Finalize, Latency, Turns

TIMEOUT = 5.0


def make(max_pending: int = 64, limit: int = 100, budget: float = 1.0) -> Turns:
    return Turns(timeout=TIMEOUT, max_pending=max_pending, latency=Latency(limit, budget))


def request(turns: Turns, now: float, position: int, *, user: bool = True) -> Finalize:
    made = turns.open(now, position, user=user)
    assert made is not None
    return made


def send(turns: Turns, now: float, position: int, *, user: bool = True) -> Finalize:
    made = request(turns, now, position, user=user)
    turns.sent(now, made)
    return made


# -- opening ------------------------------------------------------------------


def test_a_turn_opens_only_after_new_audio() -> None:
    turns = make()
    assert turns.open(0.0, 0, user=True) is None  # nothing said yet
    first = request(turns, 1.0, 100)
    assert (first.turn, first.position, first.requested_at, first.deadline) == (
        1,
        100,
        1.0,
        1.0 + TIMEOUT,
    )
    assert first.user and first.sent_at is None and not first.timed_out
    assert turns.open(2.0, 100, user=True) is None
    assert turns.open(2.0, 90, user=True) is None
    second = request(turns, 3.0, 101, user=False)
    assert (second.turn, second.user) == (2, False)
    assert turns.turns == 2


def test_next_and_due_follow_the_oldest_unanswered_request() -> None:
    turns = make()
    assert turns.next() is None and turns.due(100.0) is None
    sent = send(turns, 0.0, 10)
    assert turns.next() is sent
    owed = request(turns, 1.0, 20)  # made while no socket could take it
    turns.owe(owed)
    assert turns.next() is sent  # in flight comes before owed (it is older)
    assert turns.due(TIMEOUT - 0.001) is None
    assert turns.due(TIMEOUT) is sent
    assert (turns.pending, turns.awaiting, turns.owed) == (2, True, True)
    turns.time_out(TIMEOUT, sent, "test")
    assert turns.next() is owed and turns.due(1.0 + TIMEOUT) is owed


def test_the_deadline_is_that_of_the_next_unanswered_request() -> None:
    turns = make()
    assert turns.deadline() is None
    sent = send(turns, 1.0, 10)
    owed = request(turns, 2.0, 20)
    turns.owe(owed)
    assert turns.deadline() == 1.0 + TIMEOUT
    turns.time_out(1.0 + TIMEOUT, sent, "test")  # an orphan waits for nothing
    assert turns.deadline() == 2.0 + TIMEOUT
    turns.time_out(2.0 + TIMEOUT, owed, "test")
    assert turns.deadline() is None


# -- expiry and the stalled socket ---------------------------------------------------


def test_expire_times_out_everything_due_oldest_first() -> None:
    turns = make()
    a = send(turns, 0.0, 10)
    b = request(turns, 1.0, 20)
    turns.owe(b)
    expired, stalled = turns.expire(1.0 + TIMEOUT, heard=None)
    reason = "no final within finalize_timeout"
    assert expired == [
        FinalizeTimedOut(turn=a.turn, waited=1.0 + TIMEOUT, reason=reason),
        FinalizeTimedOut(turn=b.turn, waited=TIMEOUT, reason=reason),
    ]
    assert not stalled
    c = send(turns, 3.0, 30)
    assert turns.expire(3.0 + TIMEOUT - 0.001, heard=None) == ([], False)
    assert [event.turn for event in turns.expire(3.0 + TIMEOUT, heard=None)[0]] == [c.turn]


@pytest.mark.parametrize(
    ("heard_when_sent", "heard_now", "stalled"), [(0, 0, True), (3, 3, True), (0, 1, False)]
)
def test_a_request_sent_with_nothing_heard_since_finds_the_socket_stalled(
    heard_when_sent: int, heard_now: int, stalled: bool
) -> None:
    turns = make()
    a = request(turns, 0.0, 10)
    turns.sent(0.0, a, heard=heard_when_sent)
    b = send(turns, 0.5, 20)
    expired, found = turns.expire(TIMEOUT + 1.0, heard=heard_now)
    assert found is stalled
    # A stall stops the expiry there: the engine replaces the socket first.
    assert [event.turn for event in expired] == ([a.turn] if stalled else [a.turn, b.turn])


def test_only_a_request_sent_on_a_judged_socket_can_find_it_stalled() -> None:
    turns = make()
    owed = request(turns, 0.0, 10)
    turns.owe(owed)  # never sent: says nothing about any socket
    assert turns.expire(TIMEOUT, heard=0) == (
        [
            FinalizeTimedOut(
                turn=owed.turn, waited=TIMEOUT, reason="no final within finalize_timeout"
            )
        ],
        False,
    )
    sent = send(turns, 10.0, 20)
    assert sent.heard == 0
    assert turns.expire(10.0 + TIMEOUT, heard=None)[1] is False  # no socket is judged


# -- answers --------------------------------------------------------------------


def test_finals_answer_requests_first_in_first_out() -> None:
    turns = make()
    a = send(turns, 1.0, 10)
    b = send(turns, 2.0, 20, user=False)
    c = send(turns, 3.0, 30)
    assert turns.answer(3.5, True) == Answer(a.turn, 10, late=False, latency=2.5)
    assert turns.answer(4.0, True) == Answer(b.turn, 20, late=False, latency=None)
    assert turns.answer(4.0, True) == Answer(c.turn, 30, late=False, latency=pytest.approx(1.0))
    assert turns.answer(5.0, True) is None  # nothing left to answer
    assert turns.finalized == 3
    assert turns.latency.count == 2  # only what the application asked for


@pytest.mark.parametrize(
    ("from_finalize", "in_flight", "answers"),
    [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, False),
        (None, True, True),
        (None, False, False),
    ],
)
def test_from_finalize_decides_what_a_final_answers(
    from_finalize: bool | None, in_flight: bool, answers: bool
) -> None:
    turns = make()
    made = request(turns, 0.0, 10)
    if in_flight:
        turns.sent(0.0, made)
    else:
        turns.owe(made)
    answer = turns.answer(1.0, from_finalize)
    assert (answer is not None) == answers
    assert turns.pending == (0 if answers else 1)


def test_a_timed_out_request_in_flight_is_an_orphan_answered_late() -> None:
    turns = make()
    a = send(turns, 0.0, 10)
    b = send(turns, 1.0, 20)
    timed_out = turns.time_out(5.5, a, "no final")
    assert timed_out == FinalizeTimedOut(turn=a.turn, waited=5.5, reason="no final")
    assert a.timed_out
    assert (turns.pending, turns.timed_out, turns.awaiting) == (1, 1, True)
    # The orphan stays at the head: the next unanswered request is b.
    assert turns.next() is b
    late = turns.answer(6.0, True)
    assert late == Answer(a.turn, 10, late=True, latency=None)
    assert turns.finalized == 0 and turns.latency.count == 0
    assert turns.answer(6.5, None) == Answer(b.turn, 20, late=False, latency=5.5)
    assert turns.finalized == 1


def test_with_only_orphans_in_flight_nothing_awaits_but_a_final_is_still_paired() -> None:
    turns = make()
    a = send(turns, 0.0, 10)
    turns.time_out(5.0, a, "no final")
    assert not turns.awaiting and turns.next() is None
    # A final without from_finalize is paired only while something is in flight.
    assert turns.answer(6.0, None) == Answer(a.turn, 10, late=True, latency=None)
    assert turns.answer(6.5, None) is None


def test_an_owed_request_that_times_out_is_forgotten() -> None:
    turns = make()
    a = request(turns, 0.0, 10)
    turns.owe(a)
    b = request(turns, 1.0, 20)
    turns.owe(b)
    turns.time_out(5.0, a, "no socket")
    assert [r.turn for r in turns.take_owed()] == [b.turn]
    assert turns.timed_out == 1


# -- sockets ending and replays -------------------------------------------------------


def test_a_socket_ending_owes_its_requests_again_ahead_of_newer_ones() -> None:
    turns = make()
    orphan = send(turns, 0.0, 10)
    turns.time_out(5.0, orphan, "no final")
    a = send(turns, 1.0, 20)
    b = send(turns, 2.0, 30)
    c = request(turns, 3.0, 40)
    turns.owe(c)
    turns.socket_ended()
    assert (turns.awaiting, turns.pending) == (False, 3)
    assert a.sent_at is None and b.sent_at is None
    assert [r.turn for r in turns.take_owed()] == [a.turn, b.turn, c.turn]
    # The orphan's answer can no longer come.
    assert turns.answer(6.0, True) is None


def test_owed_before_takes_requests_up_to_a_position_in_order() -> None:
    turns = make()
    made = [request(turns, 0.0, position) for position in (10, 20, 30)]
    for item in made:
        turns.owe(item)
    assert list(turns.owed_before(5)) == []
    assert list(turns.owed_before(20)) == made[:2]
    assert list(turns.take_owed()) == made[2:]
    assert not turns.owed


def test_reask_when_the_last_request_is_replayed_unanswered() -> None:
    turns = make()
    a = send(turns, 0.0, 100)
    turns.time_out(5.0, a, "no final")
    turns.socket_ended()
    turns.reask(6.0, replay_from=40)
    (again,) = list(turns.take_owed())
    assert (again.turn, again.position, again.user) == (2, 100, False)
    assert (again.requested_at, again.deadline) == (6.0, 6.0 + TIMEOUT)
    assert turns.turns == 2


def test_no_reask_when_the_last_request_is_not_replayed() -> None:
    turns = make()
    a = send(turns, 0.0, 100)
    turns.time_out(5.0, a, "no final")
    turns.socket_ended()
    turns.reask(6.0, replay_from=100)
    assert not turns.owed
    turns.reask(6.0, replay_from=150)
    assert not turns.owed and turns.turns == 1


def test_no_reask_when_an_owed_request_already_covers_it() -> None:
    turns = make()
    send(turns, 0.0, 50)
    send(turns, 1.0, 100)
    turns.socket_ended()  # both owed again
    turns.reask(2.0, replay_from=0)
    assert [r.position for r in turns.take_owed()] == [50, 100]
    assert turns.turns == 2


def test_no_reask_before_any_request() -> None:
    turns = make()
    turns.reask(0.0, replay_from=0)
    assert not turns.owed


# -- bounds and the end -----------------------------------------------------------------


def test_make_room_times_out_the_oldest_at_the_bound() -> None:
    turns = make(max_pending=2)
    a = send(turns, 0.0, 10)
    assert turns.make_room(1.0) is None
    b = request(turns, 1.0, 20)
    turns.owe(b)
    assert turns.pending == 2
    request(turns, 2.0, 30)
    timed_out = turns.make_room(2.0)
    assert timed_out == FinalizeTimedOut(
        turn=a.turn, waited=2.0, reason="too many finalizes pending"
    )
    assert a.timed_out and turns.pending == 1
    # Next the oldest is the owed one: it is forgotten.
    turns.owe(request(turns, 3.0, 40))
    request(turns, 4.0, 50)
    assert turns.make_room(4.0) == FinalizeTimedOut(
        turn=b.turn, waited=3.0, reason="too many finalizes pending"
    )
    assert [r.position for r in turns.take_owed()] == [40]


def test_end_times_out_what_is_in_flight_and_owed_when_told() -> None:
    turns = make()
    orphan = send(turns, 0.0, 10)
    turns.time_out(5.0, orphan, "no final")
    a = send(turns, 1.0, 20)
    b = request(turns, 2.0, 30)
    turns.owe(b)
    ended = turns.end(6.0, "closed", owed=False)
    assert ended == [FinalizeTimedOut(turn=a.turn, waited=5.0, reason="closed")]
    assert (turns.timed_out, turns.pending, turns.owed) == (2, 1, True)
    assert turns.answer(6.5, None) is None  # nothing in flight, not even the orphan
    ended = turns.end(7.0, "failed", owed=True)
    assert ended == [FinalizeTimedOut(turn=b.turn, waited=5.0, reason="failed")]
    assert (turns.timed_out, turns.pending, turns.owed) == (3, 0, False)
    assert turns.end(8.0, "again", owed=True) == []


# -- latency ----------------------------------------------------------------------------


def test_latency_percentiles_are_nearest_rank() -> None:
    latency = Latency(limit=1000, budget=0.9)
    for value in range(100, 0, -1):
        latency.add(value / 100)
    summary = latency.summary()
    assert summary == LatencySummary(
        count=100,
        p50=0.5,
        p90=0.9,
        p99=0.99,
        mean=pytest.approx(0.505),
        max=1.0,
        budget=0.9,
        over_budget=10,  # strictly over: 0.91 to 1.00
    )


def test_latency_of_a_single_sample() -> None:
    latency = Latency(limit=10, budget=1.59)
    latency.add(2.0)
    summary = latency.summary()
    assert (summary.p50, summary.p90, summary.p99, summary.max) == (2.0, 2.0, 2.0, 2.0)
    assert summary.over_budget == 1


def test_latency_percentiles_use_the_latest_samples_only() -> None:
    latency = Latency(limit=3, budget=10.0)
    for value in (9.0, 8.0, 1.0, 2.0, 3.0):
        latency.add(value)
    summary = latency.summary()
    assert (summary.p50, summary.p99) == (2.0, 3.0)
    # Count, mean and maximum cover every sample.
    assert (summary.count, summary.mean, summary.max) == (5, pytest.approx(4.6), 9.0)


def test_no_latency_samples() -> None:
    assert Latency(limit=3, budget=2.0).summary() == LatencySummary(budget=2.0)


# -- any sequence -------------------------------------------------------------------------

_OPS = st.lists(
    st.sampled_from(
        ["finalize", "finalize", "answer", "answer_none", "answer_false", "expire", "lose", "open"]
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, max_pending=st.integers(1, 4))
def test_every_request_ends_exactly_once(ops: list[str], max_pending: int) -> None:
    turns = make(max_pending=max_pending)
    ends: dict[int, list[str]] = {}
    live = False
    now = 0.0
    position = 0
    in_flight: list[int] = []  # what the server will answer, in order (the model)
    confirmed = 0  # the audio answered finals cover: a new socket replays from there

    def ended(event: FinalizeTimedOut | None) -> None:
        if event is not None:
            ends.setdefault(event.turn, []).append("timed out")

    for op in ops:
        now += 1.0
        if op == "finalize":
            position += 10
            made = request(turns, now, position)
            ends.setdefault(made.turn, [])
            ended(turns.make_room(now))
            if live:
                turns.sent(now, made)
                in_flight.append(made.turn)
            else:
                turns.owe(made)
        elif op.startswith("answer") and live:
            flag = {"answer": True, "answer_none": None, "answer_false": False}[op]
            answer = turns.answer(now, flag)
            if flag is False or not in_flight:
                assert answer is None
                continue
            assert answer is not None and answer.turn == in_flight.pop(0)
            confirmed = max(confirmed, answer.position)
            if not answer.late:
                ends[answer.turn].append("answered")
        elif op == "expire":
            now += TIMEOUT
            while (due := turns.due(now)) is not None:
                ended(turns.time_out(now, due, "no final"))
        elif op == "lose" and live:
            turns.socket_ended()
            in_flight.clear()
            live = False
        elif op == "open" and not live:
            live = True
            turns.reask(now, replay_from=confirmed)
            for item in turns.take_owed():
                ends.setdefault(item.turn, [])
                turns.sent(now, item)
                in_flight.append(item.turn)
        assert turns.pending <= max_pending
        for outcomes in ends.values():
            assert len(outcomes) <= 1, ends
    if live:
        turns.socket_ended()
    for event in turns.end(now, "session over", owed=True):
        ended(event)
    assert all(len(outcomes) == 1 for outcomes in ends.values()), ends
    assert turns.finalized + turns.timed_out == len(ends) == turns.turns
