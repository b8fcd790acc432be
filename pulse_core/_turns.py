"""``Turns``: finalize requests and what became of them (spec/PROTOCOL.md §6 rule 3).

Each finalize opens a *turn*: the audio since the previous finalize. The
service answers every ``finalize`` it received with exactly one final, in
order, so the engine keeps the requests it sent on the live socket in a FIFO
and pairs each answering final with the oldest. This module holds that
bookkeeping and the TTFS latency statistics; it sends nothing itself.

A request is in one of four places:

* *owed*: made while no socket could take it; sent (in order) when one can;
* *in flight*: sent on the live socket, waiting for its final;
* *orphaned*: in flight but timed out; its final may still come and is then
  delivered as late, so the FIFO pairing stays right;
* gone: answered, or timed out before it was sent.

Invariants:

* every request ends exactly once: answered (``Transcript.finalized``) or
  timed out (``FinalizeTimedOut``), never both, never neither;
* orphans are always at the head of the in-flight FIFO (requests time out in
  the order they were made);
* when a socket ends, its unanswered requests become owed again, ahead of
  newer ones, and orphans are forgotten (their answers can no longer come);
* at most ``max_pending`` requests are unanswered: a new one times out the
  oldest;
* a request that times out on the live socket with nothing at all heard there
  since it was sent finds that socket stalled (:meth:`expire`), and the
  engine replaces it (PROTOCOL §6 rules 3 and 11).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator

import attrs

from ._events import FinalizeTimedOut, LatencySummary

__all__ = ["Answer", "Finalize", "Latency", "Turns"]


class Finalize:
    """One finalize request and what became of it."""

    __slots__ = (
        "deadline",
        "heard",
        "position",
        "requested_at",
        "sent_at",
        "timed_out",
        "turn",
        "user",
    )

    def __init__(self, turn: int, position: int, now: float, deadline: float, user: bool) -> None:
        self.turn = turn
        #: Session tick the finalize follows (all audio before it belongs to the turn).
        self.position = position
        self.requested_at = now
        self.deadline = deadline
        #: Asked for by the application (its latency counts towards TTFS).
        self.user = user
        self.sent_at: float | None = None
        #: Messages heard on the socket before it was sent there (a request
        #: that times out with none heard since found the socket stalled).
        self.heard = 0
        self.timed_out = False


@attrs.frozen
class Answer:
    """A final paired with the finalize request it answers."""

    turn: int
    #: Session tick the request followed: the final covers the audio before it.
    position: int
    #: The request had already timed out.
    late: bool
    #: Seconds from the application's request to the final (``None`` when the
    #: engine asked itself, or the answer is late).
    latency: float | None


class Latency:
    """TTFS samples, bounded: percentiles over the most recent ``limit``."""

    __slots__ = ("budget", "count", "over", "samples", "total", "worst")

    def __init__(self, limit: int, budget: float) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=limit)
        self.budget = budget
        self.count = 0
        self.total = 0.0
        self.worst = 0.0
        self.over = 0

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1
        self.total += value
        self.worst = max(self.worst, value)
        if value > self.budget:
            self.over += 1

    def summary(self) -> LatencySummary:
        if not self.count:
            return LatencySummary(budget=self.budget)
        ordered = sorted(self.samples)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

        return LatencySummary(
            count=self.count,
            p50=rank(0.50),
            p90=rank(0.90),
            p99=rank(0.99),
            mean=self.total / self.count,
            max=self.worst,
            budget=self.budget,
            over_budget=self.over,
        )


class Turns:
    """The finalize requests of one session."""

    __slots__ = (
        "_inflight",
        "_last_position",
        "_max_pending",
        "_orphans",
        "_owed",
        "_timeout",
        "finalized",
        "latency",
        "timed_out",
        "turns",
    )

    def __init__(self, *, timeout: float, max_pending: int, latency: Latency) -> None:
        self._timeout = timeout
        self._max_pending = max_pending
        self._owed: collections.deque[Finalize] = collections.deque()
        self._inflight: collections.deque[Finalize] = collections.deque()
        self._orphans = 0  # timed-out requests at the head of _inflight
        self._last_position = 0  # session tick of the latest request
        #: Turns opened so far (the number of the latest).
        self.turns = 0
        #: Requests answered in time, and requests that timed out.
        self.finalized = 0
        self.timed_out = 0
        self.latency = latency

    # -- what is outstanding ------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests not yet answered or timed out."""
        return len(self._inflight) - self._orphans + len(self._owed)

    @property
    def awaiting(self) -> bool:
        """A request sent on the live socket still waits for its final."""
        return len(self._inflight) > self._orphans

    @property
    def owed(self) -> bool:
        """Requests wait for a socket to be sent on."""
        return bool(self._owed)

    def next(self) -> Finalize | None:
        """The unanswered request that times out first."""
        if len(self._inflight) > self._orphans:
            return self._inflight[self._orphans]
        return self._owed[0] if self._owed else None

    def deadline(self) -> float | None:
        """When the next unanswered request times out (``None``: none waits)."""
        request = self.next()
        return None if request is None else request.deadline

    def due(self, now: float) -> Finalize | None:
        """The unanswered request whose deadline has passed, if any."""
        request = self.next()
        return request if request is not None and now >= request.deadline else None

    # -- new requests ---------------------------------------------------------

    def open(self, now: float, position: int, *, user: bool) -> Finalize | None:
        """A new turn ending at session tick ``position``.

        ``None`` when no audio came since the last request: the server would
        only answer with an empty final.
        """
        if position <= self._last_position:
            return None
        self.turns += 1
        self._last_position = position
        return Finalize(self.turns, position, now, now + self._timeout, user)

    def make_room(self, now: float) -> FinalizeTimedOut | None:
        """Before adding a request: time out the oldest if the bound is reached."""
        if self.pending < self._max_pending:
            return None
        oldest = self.next()
        assert oldest is not None
        return self.time_out(now, oldest, "too many finalizes pending")

    def owe(self, request: Finalize) -> None:
        """No socket can take ``request`` now: send it when one can."""
        self._owed.append(request)

    def sent(self, now: float, request: Finalize, *, heard: int = 0) -> None:
        """``request`` went out on the live socket, after ``heard`` messages on it."""
        request.sent_at = now
        request.heard = heard
        self._inflight.append(request)

    def owed_before(self, position: int) -> Iterator[Finalize]:
        """Take the owed requests that follow audio before ``position``, in order."""
        owed = self._owed
        while owed and owed[0].position <= position:
            yield owed.popleft()

    def take_owed(self) -> Iterator[Finalize]:
        """Take every owed request, in order."""
        owed = self._owed
        while owed:
            yield owed.popleft()

    def reask(self, now: float, replay_from: int) -> None:
        """A new socket replays audio from ``replay_from``.

        If the latest request's audio is replayed and no owed request covers
        it, that request timed out unanswered: ask again (as the engine), so
        the turn's text comes now rather than with whatever is said next.
        """
        last = self._last_position
        if last > replay_from and not (self._owed and self._owed[-1].position >= last):
            self.turns += 1
            self._owed.append(Finalize(self.turns, last, now, now + self._timeout, user=False))

    # -- outcomes -------------------------------------------------------------

    def answer(self, now: float, from_finalize: bool | None) -> Answer | None:
        """A final arrived: the request it answers, if it answers one.

        ``from_finalize`` is the server's own word; without it (older servers)
        a final answers the oldest request in flight if there is one.
        """
        answers = from_finalize is True or (from_finalize is None and bool(self._inflight))
        if not answers or not self._inflight:
            return None
        request = self._inflight.popleft()
        if request.timed_out:
            self._orphans -= 1
            return Answer(request.turn, request.position, late=True, latency=None)
        self.finalized += 1
        latency: float | None = None
        if request.user:
            latency = now - request.requested_at
            self.latency.add(latency)
        return Answer(request.turn, request.position, late=False, latency=latency)

    def time_out(self, now: float, request: Finalize, reason: str) -> FinalizeTimedOut:
        """``request`` gets no final in time (its answer may still come, late)."""
        if request.sent_at is not None:
            request.timed_out = True
            self._orphans += 1
        else:
            self._owed.remove(request)
        self.timed_out += 1
        return FinalizeTimedOut(turn=request.turn, waited=now - request.requested_at, reason=reason)

    def expire(self, now: float, *, heard: int | None) -> tuple[list[FinalizeTimedOut], bool]:
        """Time out the requests due by ``now``, oldest first, stopping after
        one that finds the live socket stalled; returns the timeouts and
        whether the socket is stalled.

        ``heard``: the messages the live socket brought so far, or ``None``
        when no socket is to be judged by its answers. A request sent on it
        with none heard since finds it stalled: nothing came back at all.
        """
        expired: list[FinalizeTimedOut] = []
        while (request := self.due(now)) is not None:
            stalled = request.sent_at is not None and heard == request.heard
            expired.append(self.time_out(now, request, "no final within finalize_timeout"))
            if stalled:
                return expired, True
        return expired, False

    def socket_ended(self) -> None:
        """The live socket is gone: its unanswered requests are owed again, in
        order and before newer ones; orphans are forgotten."""
        live = [request for request in self._inflight if not request.timed_out]
        self._inflight.clear()
        self._orphans = 0
        for request in reversed(live):
            request.sent_at = None
            self._owed.appendleft(request)

    def end(self, now: float, reason: str, *, owed: bool) -> list[FinalizeTimedOut]:
        """No more finals will come: every unanswered request in flight (and
        owed, with ``owed=True``) times out with ``reason``."""
        requests = [*self._inflight, *self._owed] if owed else list(self._inflight)
        ended = [
            FinalizeTimedOut(turn=request.turn, waited=now - request.requested_at, reason=reason)
            for request in requests
            if not request.timed_out
        ]
        self.timed_out += len(ended)
        self._inflight.clear()
        if owed:
            self._owed.clear()
        self._orphans = 0
        return ended
