"""Exceptions raised by pulse_trio sessions.

A session that the service refuses for good ends with one of these, raised from
the ``async with`` block (never wrapped in an ExceptionGroup).
"""

from __future__ import annotations

from pulse_core import ConnectionFailed, PulseError

__all__ = [
    "AuthenticationError",
    "CertificateError",
    "ConnectionGaveUpError",
    "InvalidRequestError",
    "PermissionDeniedError",
    "RateLimitError",
    "RegionError",
    "SessionFailedError",
    "error_for",
]


class SessionFailedError(PulseError):
    """The session ended because the service refused it or could not be reached.

    ``failure`` is the engine's ``ConnectionFailed`` event when there was one.
    """

    def __init__(self, message: str, failure: ConnectionFailed | None = None) -> None:
        super().__init__(message)
        self.failure = failure


class AuthenticationError(SessionFailedError):
    """HTTP 401: the API key was refused."""


class PermissionDeniedError(AuthenticationError):
    """HTTP 403: the key is valid but its plan or workspace may not do this."""


class InvalidRequestError(SessionFailedError):
    """HTTP 400/404: the service rejected the parameters or the path."""


class RegionError(SessionFailedError):
    """The language is not served by this region's host."""


class CertificateError(SessionFailedError):
    """The server's TLS certificate failed verification (wrong host, unknown CA)."""


class RateLimitError(SessionFailedError):
    """HTTP 429 with a Retry-After longer than the policy allows."""


class ConnectionGaveUpError(SessionFailedError):
    """pulse gave up connecting: every attempt the reconnect policy allows
    failed, or ``close_timeout`` ran out before any connection opened. The
    message gives the last attempt's failure."""


def error_for(
    reason: str, failure: ConnectionFailed | None, *, reached: bool = True
) -> SessionFailedError:
    """The exception for a session that failed with ``reason``.

    ``reached``: a connection opened at some point in the session.
    """
    # A status says why only when that refusal ended the session (not, say, a
    # 429 the engine was still waiting out when close_timeout ran out).
    status = failure.status if failure is not None and failure.permanent else None
    if failure is not None and failure.gave_up:
        # Whatever the last refusal was (a 429 that asked for a short wait too).
        return ConnectionGaveUpError(reason, failure)
    if not reached and (failure is None or not failure.permanent):
        # The close ended the attempts before the policy did: no refusal was
        # final, the service was just never reached.
        return ConnectionGaveUpError(reason, failure)
    if status == 401:
        return AuthenticationError(f"the API key was refused: {reason}", failure)
    if status == 403:
        return PermissionDeniedError(f"not allowed for this key: {reason}", failure)
    if status in (400, 404):
        return InvalidRequestError(f"the service rejected the request: {reason}", failure)
    if status == 429:
        return RateLimitError(f"rate limited: {reason}", failure)
    if "certificate failed verification" in reason:
        return CertificateError(reason, failure)
    if "LANGUAGE_NOT_ENABLED_IN_REGION" in reason:
        return RegionError(reason, failure)
    return SessionFailedError(reason, failure)
