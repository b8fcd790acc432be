"""Whatever the server sends, the engine only ever turns it into events."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import MalformedMessage, State, Transcript
from tests.core.engine import Harness

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "transcript",
                    "transcription",
                    "text",
                    "is_final",
                    "is_last",
                    "from_finalize",
                    "words",
                    "utterances",
                    "speaker",
                    "timestamp",
                    "error",
                    "message",
                    "code",
                    "status",
                    "session_id",
                    "language",
                    "languages",
                    "start",
                    "end",
                    "word",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=8,
        )
    ),
    max_leaves=30,
)


def opened(max_message_size: int = 4096) -> Harness:
    h = Harness(max_chunk_delay=0, max_message_size=max_message_size)
    h.open()
    h.send(b"\x01\x00" * 800)
    h.conn.finalize(h.now)
    h.collect()
    return h


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        json_values.map(json.dumps) | st.text(max_size=200) | st.binary(max_size=200), max_size=10
    )
)
def test_any_frames_become_events_and_the_session_goes_on(frames: list[Any]) -> None:
    h = opened()
    for frame in frames:
        h.conn.receive_message(h.now, frame)  # must not raise
        h.collect()
    assert h.conn.state in (State.OPEN, State.FAILED)
    if h.conn.state is State.OPEN:
        # Still usable: audio and a finalize go out, a final is delivered.
        h.send(b"\x02\x00" * 100)
        h.conn.close(h.now)
        h.conn.receive_message(
            h.now, json.dumps({"transcript": "x", "is_final": True, "is_last": True})
        )
        h.collect()
        assert h.conn.state is State.CLOSED


def test_a_huge_frame_is_refused_before_it_is_parsed() -> None:
    h = opened()
    frame = '{"transcript": "' + "x" * 10_000_000 + '"}'
    h.conn.receive_message(h.now, frame)
    _, events = h.collect()
    assert len(events) == 1 and isinstance(events[0], MalformedMessage)
    assert len(events[0].data) <= 200  # the event keeps only the start of it


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    h = opened(max_message_size=1 << 20)  # let the parser, not the size limit, see it
    h.conn.receive_message(h.now, "[" * 100_000 + "]" * 100_000)
    h.conn.receive_message(h.now, '{"transcript": "ok", "is_final": true, "from_finalize": true}')
    _, events = h.collect()
    assert isinstance(events[0], MalformedMessage) and "not JSON" in events[0].error
    assert isinstance(events[1], Transcript) and events[1].finalized
