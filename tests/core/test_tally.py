"""``Tally`` on its own: the session's own counts, and its summary.

Invariants checked (pulse_core/_tally.py):

* ``connections`` counts and numbers the sockets that opened;
* ``reconnects`` counts those that opened after a failure, however many
  failures came between, and not the first socket or one opened without a
  failure before it (a settings switch);
* the summary takes the session's counts from here and every other count
  from the part that keeps it, in seconds of audio where the part counts ticks.
"""

from __future__ import annotations

from pulse_core import LatencySummary, SessionSummary
from pulse_core._ledger import AudioLedger
from pulse_core._liveness import Liveness
from pulse_core._tally import Tally
from pulse_core._turns import Latency, Turns
from tests.core.engine import config
from tests.core.parts import add_frame


def test_sockets_are_counted_and_only_those_after_a_failure_are_reconnects() -> None:
    tally = Tally(8000)
    assert tally.opened() is False  # the first socket
    assert tally.opened() is False  # a settings switch: nothing failed
    tally.failed()
    tally.failed()  # another failed attempt before one opened
    assert tally.opened() is True
    assert tally.opened() is False
    assert (tally.connections, tally.reconnects) == (4, 1)


def test_the_summary_gathers_every_parts_counts() -> None:
    options = config(encoding="mulaw", sample_rate=8000, max_chunk_delay=0)
    ledger = AudioLedger(options, lambda drop: None)
    add_frame(ledger, bytes(8000), 8000, live=True, streaming=True)  # 1 s received and sent
    add_frame(ledger, bytes(4000), 4000)  # 0.5 s more, held back
    turns = Turns(timeout=5.0, max_pending=8, latency=Latency(10, 1.0))
    request = turns.open(0.0, 8000, user=True)
    assert request is not None
    turns.sent(0.0, request)
    turns.answer(0.25, True)
    liveness = Liveness(options)
    liveness.keepalive(1.0)
    tally = Tally(8000)
    tally.opened()
    tally.failed()
    tally.opened()
    tally.final()
    tally.final()
    ledger.socket_ended()  # nothing confirmed: the next socket starts from 0 again
    summary = tally.summary(ledger, turns, liveness)
    assert summary == SessionSummary(
        audio_seconds_received=1.5,
        audio_seconds_sent=1.0,  # the furthest any socket got
        finals=2,
        finalized_turns=1,
        timed_out_turns=0,
        connections=2,
        reconnects=1,
        dropped_bytes=0,
        dropped_seconds=0.0,
        keepalives=1,
        latency=LatencySummary(
            count=1, p50=0.25, p90=0.25, p99=0.25, mean=0.25, max=0.25, budget=1.0
        ),
    )


def test_dropped_audio_is_summarised_in_bytes_and_seconds() -> None:
    options = config(encoding="linear16", sample_rate=16000, replay_seconds=0.05)
    ledger = AudioLedger(options, lambda drop: None)
    add_frame(ledger, bytes(3200), 1600)  # 0.1 s, over the bound at once: dropped
    ledger.report_drop()
    summary = Tally(16000).summary(
        ledger, Turns(timeout=1.0, max_pending=1, latency=Latency(1, 1.0)), Liveness(options)
    )
    assert (summary.dropped_bytes, summary.dropped_seconds) == (3200, 0.1)
    assert (summary.audio_seconds_received, summary.audio_seconds_sent) == (0.1, 0.0)
