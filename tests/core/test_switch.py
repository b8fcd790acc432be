"""``SettingsSwitch`` on its own: when new settings are in force.

Invariants checked (pulse_core/_switch.py):

* before the session started a change is announced at once, and the first
  socket is compared with it (so it is not announced again);
* after that, the first socket to open after any number of changes announces
  them once, naming every field that differs from the last socket's; a socket
  opened without a change announces nothing; changes that cancel out are
  announced with no field.
"""

from __future__ import annotations

from pulse_core import Settings, SettingsApplied
from pulse_core._switch import SettingsSwitch

BASE = Settings()


def test_a_change_before_start_is_in_force_at_once() -> None:
    switch = SettingsSwitch(BASE)
    target = BASE.evolve(language="de")
    assert switch.changed(target, ("language",), started=False) == SettingsApplied(
        settings=target, changed=("language",)
    )
    assert switch.opened(target) is None  # the first socket carries them: nothing new


def test_a_change_mid_session_is_announced_when_the_next_socket_opens() -> None:
    switch = SettingsSwitch(BASE)
    assert switch.opened(BASE) is None
    first = BASE.evolve(language="de")
    second = first.evolve(word_timestamps=not BASE.word_timestamps)
    assert switch.changed(first, ("language",), started=True) is None
    assert switch.changed(second, ("word_timestamps",), started=True) is None
    assert switch.opened(second) == SettingsApplied(
        settings=second, changed=("language", "word_timestamps")
    )
    assert switch.opened(second) is None  # announced once


def test_changes_that_cancel_out_are_announced_with_no_field() -> None:
    switch = SettingsSwitch(BASE)
    switch.opened(BASE)
    switch.changed(BASE.evolve(language="de"), ("language",), started=True)
    switch.changed(BASE, ("language",), started=True)
    assert switch.opened(BASE) == SettingsApplied(settings=BASE, changed=())


def test_each_socket_is_compared_with_the_one_before() -> None:
    switch = SettingsSwitch(BASE)
    first = BASE.evolve(language="de")
    switch.changed(first, ("language",), started=False)  # before start
    second = first.evolve(word_timestamps=not BASE.word_timestamps)
    switch.changed(second, ("word_timestamps",), started=True)  # while connecting
    applied = switch.opened(second)
    assert applied is not None and applied.changed == ("word_timestamps",)
    third = second.evolve(language="fr")
    switch.changed(third, ("language",), started=True)
    applied = switch.opened(third)
    assert applied is not None and applied.changed == ("language",)
