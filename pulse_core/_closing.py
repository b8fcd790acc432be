"""How a session ends (spec/PROTOCOL.md §6 rules 5 and 8; §7).

``close()`` asks for the end; the session then carries on until the server
answered everything (``is_last`` to ``close_stream``), nothing is left to
deliver, or ``close_timeout`` runs out. A failure ends it too: a final refusal,
attempts run out, a server error no reconnect can cure. :class:`Closing` holds
the request and its deadline, and refuses the inputs a closed session takes no
more. :class:`Ending` says what one way of ending means: the state table's
trigger, ``Closed.error`` and ``is_last_missing``, and what is abandoned
(unconfirmed audio as ``AudioDropped`` with which reason, unanswered finalizes
as ``FinalizeTimedOut`` with which reason). The conductor carries it out; nothing
here emits anything.

Invariants:

* a close, once asked for, is never withdrawn, and audio, finalize and
  settings are refused from then on;
* the deadline runs from the latest :meth:`Closing.request` until the session
  ends (:meth:`Closing.stop`);
* an ending that is not clean abandons everything still unconfirmed or
  unanswered; a clean one (:meth:`Ending.clean`) abandons nothing, since the
  server has answered or nothing was left to deliver;
* a close timeout (:meth:`Ending.close_timed_out`) is a failure to connect when no
  socket ever opened; otherwise ``Closed.error`` is set exactly when audio was
  left unconfirmed, which is what the close could not deliver.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._errors import LocalProtocolError
from ._events import Closed, DropReason, SessionSummary
from ._state import SOCKET_STATES, State, Trigger

__all__ = ["Closing", "Ending"]

#: States in which the application may give no more audio, finalize or settings.
_NO_INPUT_STATES: Final = frozenset({State.CLOSING, State.CLOSED, State.FAILED})


@attrs.frozen
class Ending:
    """What one way of ending the session means (made by the class methods)."""

    #: The state table's trigger: where the session ends up.
    trigger: Trigger
    #: ``Closed.error``: why the session failed, or what the close could not deliver.
    error: str | None = None
    #: ``Closed.is_last_missing``: ``close_stream`` was sent and never answered.
    is_last_missing: bool = False
    #: Unconfirmed audio is reported dropped with this reason (``None``: the
    #: ending abandons nothing).
    dropped: DropReason | None = None
    #: The reason unanswered finalizes time out with.
    unanswered: str = ""

    def closed(self, summary: SessionSummary) -> Closed:
        """The last event of a session that ended this way."""
        return Closed(summary=summary, error=self.error, is_last_missing=self.is_last_missing)

    @classmethod
    def clean(cls, *, is_last_missing: bool = False) -> Ending:
        """``is_last`` came, or nothing was left to deliver (``is_last_missing``:
        the socket closed while ``close_stream`` waited, so the server never
        said it was done)."""
        return cls(Trigger.CLOSE_DONE, is_last_missing=is_last_missing)

    @classmethod
    def not_started(cls) -> Ending:
        """``close()`` before ``start()``: the audio given can no longer be sent."""
        return cls(
            Trigger.CLOSE_DONE,
            dropped=DropReason.NOT_STARTED,
            unanswered="session closed before it started",
        )

    @classmethod
    def failed(cls, reason: str, trigger: Trigger = Trigger.GIVE_UP) -> Ending:
        """The session cannot go on: a final refusal, attempts run out (§6 rule 5)."""
        return cls(
            trigger, error=reason, dropped=DropReason.SESSION_FAILED, unanswered="session failed"
        )

    @classmethod
    def close_timed_out(
        cls, state: State, *, connected: bool, unconfirmed: bool, failures: int, last_failure: str
    ) -> Ending:
        """``close_timeout`` ran out in ``state`` before ``is_last`` (§6 rule 8).

        What that means depends on what the server had done: never been
        reached (no socket opened: the session failed to connect, whatever the
        close waited for), confirmed every tick (a clean close that only lacks
        ``is_last``), or left audio ``unconfirmed`` (dropped: the close
        failed). ``failures`` and ``last_failure``: the consecutive failed
        attempts and lost sockets so far, and why the last one failed.
        """
        if not connected:
            if not failures:
                reason = "could not reach the service: no connection opened within close_timeout"
            else:
                attempts = "attempt" if failures == 1 else "attempts"
                reason = f"could not reach the service after {failures} failed {attempts}: "
                reason += last_failure
            return cls.failed(reason, Trigger.UNREACHABLE)
        error = None
        if unconfirmed:
            error = "close timed out before the server confirmed all audio"
            if state not in SOCKET_STATES and last_failure:
                error += f" (while reconnecting after: {last_failure})"
        return cls(
            Trigger.CLOSE_TIMEOUT,
            error=error,
            is_last_missing=state is State.CLOSING,
            dropped=DropReason.CLOSE_TIMEOUT,
            unanswered="close timed out",
        )


class Closing:
    """The close request of one session and its deadline."""

    __slots__ = ("_timeout", "deadline", "requested")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        #: ``close()`` was called.
        self.requested = False
        #: When ``close_timeout`` runs out (``None``: no close is waiting).
        self.deadline: float | None = None

    def over(self, state: State) -> bool:
        """``close()`` has nothing left to do: the session is closing or over."""
        return state in _NO_INPUT_STATES

    def request(self, now: float) -> None:
        """``close()`` was called at ``now``: the close must be done within ``close_timeout``."""
        self.requested = True
        self.deadline = now + self._timeout

    def due(self, now: float) -> bool:
        """``close_timeout`` has run out."""
        return self.deadline is not None and now >= self.deadline

    def stop(self) -> None:
        """The session is over: nothing waits any more."""
        self.deadline = None

    def refuse_input(self, what: str, state: State) -> None:
        """Raise ``LocalProtocolError`` for ``what`` (audio, a finalize or a
        settings change) once ``close()`` was called or the session is over."""
        if self.requested or state in _NO_INPUT_STATES:
            when = "the session failed" if state is State.FAILED else "close()"
            raise LocalProtocolError(f"{what} after {when}")
