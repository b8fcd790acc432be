"""``Retry``: whether to connect again, and when (spec/PROTOCOL.md §6 rule 5).

Every rule about giving up lives here: which refusals are final, how long a
``Retry-After`` may ask the engine to wait, how many consecutive failures the
policy allows, when a connection counts as stable enough to forget earlier
failures, and the backoff with jitter between attempts. The engine asks; this
class answers with a :class:`Verdict` and never emits anything itself.

Invariants:

* ``attempt`` counts consecutive failures: a refusal, a failed handshake or a
  lost connection adds one; a connection that stayed open ``stable_after``
  seconds resets it (checked when that connection ends);
* the jitter source is drawn from exactly once per retry that is scheduled, and
  never for a verdict that gives up, so a seeded jitter replays exactly.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

import attrs

from ._config import ReconnectPolicy

__all__ = [
    "CONCURRENCY_LIMIT_CLOSE",
    "PERMANENT_ERROR_CODES",
    "JitterSource",
    "Retry",
    "Verdict",
]

#: Server error codes after which reconnecting cannot help: every new
#: connection would get the same answer.
PERMANENT_ERROR_CODES: Final = frozenset({"LANGUAGE_NOT_ENABLED_IN_REGION"})
#: Close code the service uses when the account's concurrency limit is reached.
CONCURRENCY_LIMIT_CLOSE: Final = 1008
# 4xx statuses that are worth retrying: request timeout and rate limiting.
_RETRYABLE_CLIENT_ERRORS: Final = frozenset({408, 429})


class JitterSource(Protocol):
    """Anything with ``random() -> float`` in ``[0, 1)``, e.g. ``random.Random``."""

    def random(self) -> float: ...


@attrs.frozen
class Verdict:
    """What to do after a failure."""

    #: Stop: the session fails.
    give_up: bool
    #: The policy ran out of attempts (as opposed to a refusal that is final).
    gave_up: bool
    #: Why, for the events: the failure's own reason, qualified when it is final.
    reason: str
    #: Seconds to wait before the next attempt (0 when giving up).
    delay: float
    #: Consecutive failures so far, this one included.
    attempt: int


class Retry:
    """Backoff state of one session."""

    __slots__ = ("_attempt", "_dialled", "_jitter", "_opened_at", "_policy", "_reason")

    def __init__(self, policy: ReconnectPolicy, jitter: JitterSource | None) -> None:
        self._policy = policy
        self._jitter = jitter
        self._attempt = 0
        self._dialled = 0
        self._opened_at = 0.0
        self._reason = ""

    @property
    def attempt(self) -> int:
        """Consecutive failures so far."""
        return self._attempt

    @property
    def reason(self) -> str:
        """Why the last attempt failed or the last connection was lost (empty
        before any failure): what to blame when the session cannot go on."""
        return self._reason

    @property
    def dialled(self) -> int:
        """The attempt number of the last connection dialled."""
        return self._dialled

    def dial(self) -> int:
        """A connection attempt begins: its number (1 after a success)."""
        self._dialled = self._attempt + 1
        return self._dialled

    def opened(self, now: float) -> None:
        """The attempt succeeded; stability is measured from ``now``."""
        self._opened_at = now

    def settle(self, now: float) -> None:
        """The open connection ends: if it lasted, earlier failures are forgiven."""
        if self._opened_at + self._policy.stable_after <= now:
            self._attempt = 0

    def refused(
        self, *, status: int | None, reason: str, retry_after: float | None, final: bool
    ) -> Verdict:
        """A connection attempt failed with ``status`` (``None``: no answer).

        4xx refusals other than 408 and 429 are final (the request itself is
        wrong), as are redirects (never followed), any ``Retry-After`` longer
        than ``max_retry_after`` (whatever the status), and anything the
        transport calls ``final``. A shorter ``Retry-After`` is a floor on the
        delay.
        """
        policy = self._policy
        self._attempt += 1
        reason = reason or (f"HTTP {status}" if status else "connection failed")
        permanent = final or (
            status is not None and 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS
        )
        if status is not None and 300 <= status < 400:
            # A redirect is never followed (the key would go to another host),
            # and asking the same URL again gets the same answer.
            permanent = True
            reason = f"{reason} (redirects are not followed)"
        if retry_after is not None and math.isnan(retry_after):
            retry_after = None  # no usable wait: the policy's own delay
        if retry_after is not None and retry_after > policy.max_retry_after:
            # Whatever the status: a server asking for a long wait (a day, or
            # for ever) is refusing for now; waiting would hang the session.
            permanent = True
            reason = f"{reason} (asked to retry after {retry_after:g} s)"
        self._reason = reason
        if permanent:
            return Verdict(True, False, reason, 0.0, self._attempt)
        if self._out_of_attempts():
            return Verdict(True, True, self._gave_up(reason), 0.0, self._attempt)
        delay = self._draw()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return Verdict(False, False, reason, delay, self._attempt)

    def lost(self, now: float, *, code: int | None, reason: str) -> Verdict:
        """An open connection ended without the engine asking."""
        self.settle(now)
        self._attempt += 1
        self._reason = reason
        if self._out_of_attempts():
            return Verdict(True, True, self._gave_up(reason), 0.0, self._attempt)
        delay = self._draw()
        if code == CONCURRENCY_LIMIT_CLOSE:
            # Reconnecting at once would hit the same limit.
            delay = max(delay, self._policy.concurrency_delay)
        return Verdict(False, False, reason, delay, self._attempt)

    def _out_of_attempts(self) -> bool:
        limit = self._policy.max_attempts
        return limit is not None and self._attempt >= limit

    def _gave_up(self, reason: str) -> str:
        return f"gave up after {self._policy.max_attempts} attempts: {reason}"

    def _draw(self) -> float:
        draw = self._jitter.random() if self._jitter is not None else 0.0
        return self._policy.delay(self._attempt, draw)
