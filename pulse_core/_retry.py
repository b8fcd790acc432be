"""``Retry``: whether to connect again, and when (spec/PROTOCOL.md §6 rule 5).

Every rule about giving up lives here: which refusals are final, which server
errors no reconnect can cure, how long a ``Retry-After`` may ask the engine to
wait, how many consecutive failures the policy allows, when a connection counts
as stable enough to forget earlier failures, the backoff with jitter between
attempts, and the two clocks that follow from them: when the attempt in flight
times out (``connect_timeout``) and when the next attempt is due. The engine
asks; this class answers with a :class:`Verdict` and never emits anything
itself.

Invariants:

* ``attempt`` counts consecutive failures: a refusal, a failed handshake or a
  lost connection adds one; a connection that stayed open ``stable_after``
  seconds resets it (checked when that connection ends);
* the jitter source is drawn from exactly once per retry that is scheduled, and
  never for a verdict that gives up, so a seeded jitter replays exactly;
* at most one of the two clocks runs: ``connect_deadline`` from :meth:`dial`
  until the attempt opens or fails, ``retry_at`` from a verdict that is not
  final until the next :meth:`dial`; :meth:`stop` clears both.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

import attrs

from ._config import ReconnectPolicy
from ._events import ConnectionFailed, Reconnecting
from ._secrets import Redactor

__all__ = [
    "CONCURRENCY_LIMIT_CLOSE",
    "PERMANENT_ERROR_CODES",
    "REFUSAL_BODY_CHARS",
    "JitterSource",
    "Retry",
    "Verdict",
    "refusal_reason",
    "retry_after_seconds",
]

#: Server error codes after which reconnecting cannot help: every new
#: connection would get the same answer.
PERMANENT_ERROR_CODES: Final = frozenset({"LANGUAGE_NOT_ENABLED_IN_REGION"})
#: Close code the service uses when the account's concurrency limit is reached.
CONCURRENCY_LIMIT_CLOSE: Final = 1008
#: Characters of a refusal's body kept in its reason (after redaction).
REFUSAL_BODY_CHARS: Final = 200


def retry_after_seconds(value: str | bytes | float | None) -> float | None:
    """A ``Retry-After`` header as seconds to wait (``None``: none usable).

    Seconds are taken as given, a negative count as no wait; an HTTP date, or
    anything else that is not a number, leaves the delay to the policy (the
    engine has no wall clock to measure a date against).
    """
    if value is None or isinstance(value, float | int):
        return None if value is None else max(0.0, float(value))
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        return max(0.0, float(text.strip()))
    except ValueError:
        return None


def refusal_reason(redactor: Redactor, status: int, body: bytes | str) -> str:
    """How a refusal is worded: its status and the start of its body, the
    key hidden *before* the body is cut, so the cut cannot leave a prefix of
    it (PROTOCOL §6 rule 12)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    shown = redactor.text(text.strip())[:REFUSAL_BODY_CHARS]
    return f"HTTP {status}" + (f": {shown}" if shown else "")
# 4xx statuses that are worth retrying: request timeout and rate limiting.
_RETRYABLE_CLIENT_ERRORS: Final = frozenset({408, 429})


class JitterSource(Protocol):
    """Anything with ``random() -> float`` in ``[0, 1)``, e.g. ``random.Random``."""

    def random(self) -> float: ...


@attrs.frozen
class Verdict:
    """What to do after a failure."""

    #: No further attempt: the session fails.
    final: bool
    #: Final because the policy ran out of attempts (not because the failure
    #: itself is final, like a refusal that retrying cannot change).
    gave_up: bool
    #: Why, for the events: the failure's own reason, qualified when it is final.
    reason: str
    #: Seconds to wait before the next attempt (0 when giving up).
    delay: float
    #: Consecutive failures so far, this one included.
    attempt: int

    def failure(
        self, *, status: int | None = None, retry_after: float | None = None
    ) -> ConnectionFailed:
        """The event that reports the failure judged (``status`` and
        ``retry_after``: the refusal's, if it was one)."""
        return ConnectionFailed(
            reason=self.reason,
            status=status,
            permanent=self.final,
            retry_after=retry_after,
            attempt=self.attempt,
            gave_up=self.gave_up,
        )

    def reconnecting(self) -> Reconnecting:
        """The event that announces the next attempt (the verdict is not final)."""
        return Reconnecting(attempt=self.attempt + 1, delay=self.delay, reason=self.reason)


class Retry:
    """Backoff state of one session."""

    __slots__ = (
        "_attempt",
        "_dialled",
        "_jitter",
        "_opened_at",
        "_policy",
        "_reason",
        "connect_deadline",
        "retry_at",
    )

    def __init__(self, policy: ReconnectPolicy, jitter: JitterSource | None) -> None:
        self._policy = policy
        self._jitter = jitter
        self._attempt = 0
        self._dialled = 0
        self._opened_at = 0.0
        self._reason = ""
        #: When the attempt in flight fails unless it opened (``None``: none is).
        self.connect_deadline: float | None = None
        #: When the next attempt is due (``None``: none is scheduled).
        self.retry_at: float | None = None

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

    def dial(self, now: float, timeout: float) -> int:
        """A connection attempt begins at ``now`` and fails unless it opens
        within ``timeout``: its number (1 after a success)."""
        self._dialled = self._attempt + 1
        self.connect_deadline = now + timeout
        self.retry_at = None
        return self._dialled

    def opened(self, now: float) -> None:
        """The attempt succeeded; stability is measured from ``now``."""
        self._opened_at = now
        self.connect_deadline = None

    def deadline(self) -> float | None:
        """When the attempt in flight times out, or the next one is due."""
        clocks = [at for at in (self.connect_deadline, self.retry_at) if at is not None]
        return min(clocks, default=None)

    def timed_out(self, now: float) -> bool:
        """The attempt in flight did not open in time (report it with :meth:`refused`)."""
        return self.connect_deadline is not None and now >= self.connect_deadline

    def due(self, now: float) -> bool:
        """The backoff has elapsed: dial again."""
        return self.retry_at is not None and now >= self.retry_at

    def stop(self) -> None:
        """The session is over: no attempt times out, none is due."""
        self.connect_deadline = None
        self.retry_at = None

    def settle(self, now: float) -> None:
        """The open connection ends: if it lasted, earlier failures are forgiven."""
        if self._opened_at + self._policy.stable_after <= now:
            self._attempt = 0

    def refused(
        self,
        now: float,
        *,
        status: int | None,
        reason: str,
        retry_after: float | None,
        final: bool,
    ) -> Verdict:
        """The attempt in flight failed at ``now`` with ``status`` (``None``: no answer).

        4xx refusals other than 408 and 429 are final (the request itself is
        wrong), as are redirects (never followed), any ``Retry-After`` longer
        than ``max_retry_after`` (whatever the status), and anything the
        transport calls ``final``. A shorter ``Retry-After`` is a floor on the
        delay.
        """
        policy = self._policy
        self.connect_deadline = None
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
        return self._schedule(now, reason, delay)

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
        return self._schedule(now, reason, delay)

    def _schedule(self, now: float, reason: str, delay: float) -> Verdict:
        self.retry_at = now + delay
        return Verdict(False, False, reason, delay, self._attempt)

    def server_error(self, code: str | None, message: str) -> Verdict | None:
        """The server reported an error on the open connection: a final verdict
        when no reconnect can cure it (every new connection would get the same
        answer), else ``None`` and the connection carries on (if the server
        then closes it, :meth:`lost` judges that)."""
        if code not in PERMANENT_ERROR_CODES:
            return None
        return Verdict(True, False, f"{code}: {message}", 0.0, self._dialled)

    def _out_of_attempts(self) -> bool:
        limit = self._policy.max_attempts
        return limit is not None and self._attempt >= limit

    def _gave_up(self, reason: str) -> str:
        return f"gave up after {self._policy.max_attempts} attempts: {reason}"

    def _draw(self) -> float:
        draw = self._jitter.random() if self._jitter is not None else 0.0
        return self._policy.delay(self._attempt, draw)
