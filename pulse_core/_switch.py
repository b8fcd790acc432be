"""``SettingsSwitch``: when new settings are in force (spec/PROTOCOL.md §6 rule 7).

A socket's settings are fixed by its URL, so settings changed mid-session take
effect on the next socket; the conductor finishes the turn in progress and
switches. This room keeps what the service was given last (the settings of the
last socket, or those requested before the session started) and announces a
change with ``SettingsApplied`` once it is in force: at once before
``start()``, else when the next socket opens, naming every field that differs
from the last socket's.

Invariants:

* a change before the session started is announced at once, and is what the
  first socket is compared with;
* once the session started, every socket that opens after a change is
  announced exactly once, whatever the number of changes before it (changes
  that cancel out are announced with no field changed); a socket that opens
  without one is not announced.
"""

from __future__ import annotations

from ._events import SettingsApplied
from ._settings import Settings

__all__ = ["SettingsSwitch"]


class SettingsSwitch:
    """The settings the service was given last, and any change not yet in force."""

    __slots__ = ("_last", "_pending")

    def __init__(self, settings: Settings) -> None:
        self._last = settings
        self._pending = False

    def changed(
        self, settings: Settings, fields: tuple[str, ...], *, started: bool
    ) -> SettingsApplied | None:
        """``settings`` were requested, changing ``fields``: the announcement
        if they are in force at once (the session has not ``started``)."""
        if started:
            self._pending = True
            return None
        self._last = settings
        return SettingsApplied(settings=settings, changed=fields)

    def opened(self, settings: Settings) -> SettingsApplied | None:
        """A socket opened with ``settings``: the announcement of a change."""
        applied = None
        if self._pending:
            applied = SettingsApplied(
                settings=settings, changed=self._last.changed_fields(settings)
            )
            self._pending = False
        self._last = settings
        return applied
