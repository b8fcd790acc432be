"""The state table is consistent, and spec/PROTOCOL.md carries the current copy."""

from __future__ import annotations

from pathlib import Path

from pulse_core._state import TERMINAL_STATES, TRANSITIONS, State, Trigger, markdown_table

PROTOCOL = Path(__file__).resolve().parents[2] / "spec" / "PROTOCOL.md"


def test_protocol_md_has_the_generated_table() -> None:
    text = PROTOCOL.read_text()
    start = text.index("<!-- state-table:start -->\n") + len("<!-- state-table:start -->\n")
    end = text.index("<!-- state-table:end -->")
    assert text[start:end] == markdown_table()


def test_terminal_states_have_no_exits() -> None:
    for state, _ in TRANSITIONS:
        assert state not in TERMINAL_STATES


def test_every_state_is_reachable_from_idle() -> None:
    reached = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)


def test_every_trigger_is_used() -> None:
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_every_live_state_can_end() -> None:
    # From every non-terminal state some path leads to CLOSED or FAILED.
    for start in set(State) - TERMINAL_STATES:
        seen = {start}
        frontier = [start]
        while frontier:
            state = frontier.pop()
            for (source, _), target in TRANSITIONS.items():
                if source is state and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert seen & TERMINAL_STATES, start
