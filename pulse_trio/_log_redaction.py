"""The key kept out of log records: the filter on the WebSocket stack's logger.

The engine redacts everything a server sends before it becomes an event
(PROTOCOL §6 rule 12), but trio-websocket logs at DEBUG what it reads from the
wire before the engine sees it: close reasons (``websocket closed ...``), ping
payloads (``ping b'...'``) and every wsproto event, text messages included. A
server that echoes the ``Authorization`` header there would put the key in the
application's logs. While any session is open, a filter on that logger (and on
pulse_trio's own, in case an application's handler logs an event with
``exc_info``) passes each record's text through the redactors of the open
sessions. The filter is installed by the first open session and removed with
the last; a logger not enabled for a level never builds its records, so the
filter costs nothing unless DEBUG logging is on.
"""

from __future__ import annotations

import itertools
import logging

from pulse_core import Redactor

__all__ = ["REDACTED_LOGGERS", "hide_key_in_logs", "stop_hiding"]

#: The loggers whose records are redacted while a session is open.
REDACTED_LOGGERS = ("trio-websocket", "pulse_trio")


class _KeyFilter(logging.Filter):
    """Rewrites a record whose text holds a piece of an open session's key."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: dict[int, Redactor] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactors:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format
            return True  # logging reports that itself, with no key in it
        shown = text
        for redactor in list(self.redactors.values()):
            shown = redactor.text(shown)
        if shown is not text:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            # The formatted traceback is cached here by the first handler.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            hidden = record.exc_text
            for redactor in list(self.redactors.values()):
                hidden = redactor.text(hidden)
            record.exc_text = hidden
        return True


_FILTER = _KeyFilter()
_TICKETS = itertools.count()


def hide_key_in_logs(redactor: Redactor) -> int:
    """Redact ``redactor``'s key from the records of :data:`REDACTED_LOGGERS`
    until :func:`stop_hiding` is called with the ticket returned."""
    ticket = next(_TICKETS)
    if not _FILTER.redactors:
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).addFilter(_FILTER)
    _FILTER.redactors[ticket] = redactor
    return ticket


def stop_hiding(ticket: int) -> None:
    """End what :func:`hide_key_in_logs` started (the filter goes with the last)."""
    del _FILTER.redactors[ticket]
    if not _FILTER.redactors:
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).removeFilter(_FILTER)
