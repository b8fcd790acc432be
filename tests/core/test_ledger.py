"""``AudioLedger`` on its own: where every tick of the application's audio is.

Invariants checked (pulse_core/_ledger.py):

* framing: PCM is cut into whole samples only (a partial sample waits for the
  rest of it), coalesced up to ``chunk_bytes`` or the ``max_chunk_delay`` bound,
  and split at ``chunk_bytes``; the coalescing deadline counts from the oldest
  held byte and ignores a lone partial sample; raw Opus packets are frames as
  they come, Ogg pages are cut whole with their header pages kept aside (at
  most 256 KiB of them);
* ``replay_from <= sent_upto <= received`` while a socket carries the audio,
  and ``retained_bytes`` is the byte size of ``retained`` and at most the
  replay bound after every eviction;
* eviction of audio the live socket has is a *gap*, not a drop; it becomes a
  drop only if that socket ends before a final confirms it (partly confirmed:
  only the rest); anything else evicted is dropped at once;
* every tick ends up confirmed or in exactly one reported ``AudioDropped``
  (with its byte count, partly confirmed frames counted from the confirmed
  position on);
* losses that touch and share a reason are reported as one; any other loss
  reports the previous one first;
* ``replay_frames`` starts at ``replay_from`` (a partly confirmed PCM frame
  trimmed, a compressed one whole) and ``unsent_frames`` at ``sent_upto``;
* audio an automatic final steps over is silence unless a final of the same
  socket lands in it; then what no final covered is reported
  (``DropReason.OUT_OF_ORDER``, exact bytes) when the socket ends, and a
  finalize's answer or ``is_last`` (``covered``) ends the doubt.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import (
    AudioDropped,
    Command,
    ConnectionConfig,
    DropReason,
    LocalProtocolError,
    SendBinary,
)
from pulse_core._ledger import MAX_PASSED, AudioLedger
from pulse_core._replay import replay, send_held
from pulse_core._timeline import Timeline
from pulse_core._turns import Latency, Turns
from tests.core.engine import config
from tests.core.ogg import HEADERS, audio_page, ogg_page, toc
from tests.core.parts import add_frame

# Opus packets of one TOC byte (RFC 6716 section 3.1): config 0 is a 10 ms SILK
# frame, config 3 a 60 ms one; code 1 puts two frames in the packet.
OPUS_10MS = bytes([toc(0, 0)])
OPUS_60MS = bytes([toc(3, 0)])
OPUS_2X10MS = bytes([toc(0, 1)])


def make(
    encoding: str = "mulaw", sample_rate: int = 8000, **overrides: object
) -> tuple[AudioLedger, list[AudioDropped]]:
    """A ledger and the drops it reports. Mu-law at 8 kHz: one byte is one tick."""
    overrides.setdefault("max_chunk_delay", 0)
    drops: list[AudioDropped] = []
    ledger = AudioLedger(
        config(encoding=encoding, sample_rate=sample_rate, **overrides), drops.append
    )
    return ledger, drops


def spans(drops: list[AudioDropped], tps: int = 8000) -> list[tuple[int, int, int, DropReason]]:
    """Drops as ``(start, end, bytes, reason)`` in ticks."""
    return [(round(d.start * tps), round(d.end * tps), d.bytes, d.reason) for d in drops]


def retained_size(ledger: AudioLedger) -> int:
    return sum(len(data) for _, _, data in ledger.retained)


def binary(commands: list[Command]) -> list[bytes]:
    """The audio among commands, in order."""
    return [command.data for command in commands if isinstance(command, SendBinary)]


# -- framing PCM ----------------------------------------------------------------


def test_without_coalescing_every_whole_sample_is_framed_at_once() -> None:
    ledger, _ = make("linear16")
    assert ledger.hold(0.0, b"\x01" * 5) == [(b"\x01" * 4, 2)]
    # The odd byte waits for the rest of its sample.
    assert ledger.buffered_bytes == 1
    assert ledger.hold(0.1, b"\x02" * 3) == [(b"\x01" + b"\x02" * 3, 2)]
    assert ledger.buffered_bytes == 0
    assert ledger.pending_since is None


def test_a_lone_partial_sample_waits_and_makes_no_deadline() -> None:
    ledger, _ = make("linear32", max_chunk_delay=0.01)
    assert ledger.hold(1.0, b"\x01\x02\x03") == []
    assert ledger.pending_since == 1.0
    assert ledger.coalescing_deadline(0.01) is None
    assert ledger.cut(2.0, everything=True) == []
    assert ledger.hold(1.5, b"\x04") == []
    assert ledger.coalescing_deadline(0.01) == pytest.approx(1.01)
    assert ledger.cut(2.0, everything=True) == [(b"\x01\x02\x03\x04", 1)]


def test_frames_are_split_at_chunk_bytes() -> None:
    ledger, _ = make("linear16", chunk_bytes=8)
    data = bytes(range(21))
    frames = ledger.hold(0.0, data)
    assert frames == [(data[0:8], 4), (data[8:16], 4), (data[16:20], 2)]
    assert ledger.buffered_bytes == 1
    # Exactly a frame's worth is one frame.
    ledger, _ = make("linear16", chunk_bytes=8)
    assert ledger.hold(0.0, data[:8]) == [(data[:8], 4)]


def test_coalescing_holds_up_to_the_delay_bound_then_frames() -> None:
    # 10 ms at 8 kHz linear16 is 160 bytes, below chunk_bytes: that is the bound.
    ledger, _ = make("linear16", max_chunk_delay=0.01, chunk_bytes=4096)
    assert ledger.hold(1.0, b"\x01" * 100) == []
    assert ledger.coalescing_deadline(0.01) == pytest.approx(1.01)
    # Later bytes do not move the deadline: it counts from the oldest.
    assert ledger.hold(1.004, b"\x02" * 10) == []
    assert ledger.coalescing_deadline(0.01) == pytest.approx(1.01)
    assert ledger.cut(1.005) == []  # not a frame's worth yet
    frames = ledger.hold(1.006, b"\x03" * 51)
    assert frames == [(b"\x01" * 100 + b"\x02" * 10 + b"\x03" * 50, 80)]
    # The clock restarts for what stays held (a partial sample: no deadline).
    assert ledger.pending_since == 1.006
    assert ledger.coalescing_deadline(0.01) is None
    assert ledger.hold(1.02, b"\x04") == []
    assert ledger.coalescing_deadline(0.01) == pytest.approx(1.016)


def test_coalescing_never_holds_more_than_chunk_bytes() -> None:
    ledger, _ = make("linear16", max_chunk_delay=1.0, chunk_bytes=64)
    assert ledger.hold(0.0, b"\x01" * 63) == []
    # Once a frame's worth is held, every whole sample is framed.
    frames = ledger.hold(0.0, b"\x01" * 70)
    assert frames == [(b"\x01" * 64, 32), (b"\x01" * 64, 32), (b"\x01" * 4, 2)]
    assert ledger.buffered_bytes == 1


def test_cut_at_the_deadline_frames_every_whole_sample() -> None:
    ledger, _ = make("linear16", max_chunk_delay=0.01, chunk_bytes=8)
    ledger.hold(0.0, b"\x01" * 7)
    assert ledger.cut(0.01, everything=True) == [(b"\x01" * 6, 3)]
    assert ledger.pending_since == 0.01
    assert ledger.buffered_bytes == 1


def test_flush_frames_everything_and_keeps_a_partial_sample_unless_closing() -> None:
    ledger, drops = make("linear16", max_chunk_delay=1.0)
    ledger.hold(0.0, b"\x01" * 3)
    assert ledger.flush(0.1) == [(b"\x01" * 2, 1)]
    assert ledger.buffered_bytes == 1
    assert drops == []


def test_closing_reports_a_lone_partial_sample_as_a_zero_length_drop() -> None:
    ledger, drops = make("linear16", max_chunk_delay=1.0)
    ledger.append(b"\x00" * 8, 4)
    ledger.hold(0.0, b"\x01")
    assert ledger.flush(0.1, closing=True) == []
    ledger.drop_partial_sample()
    assert ledger.pending_since is None
    assert ledger.buffered_bytes == 8
    ledger.report_drop()
    assert spans(drops) == [(4, 4, 1, DropReason.PARTIAL_SAMPLE)]
    assert ledger.dropped_bytes == 1
    assert ledger.dropped_ticks == 0


def test_closing_with_nothing_held_reports_nothing() -> None:
    ledger, drops = make("linear16")
    assert ledger.flush(0.0, closing=True) == []
    ledger.report_drop()
    assert drops == []


def test_a_partial_sample_at_close_is_reported_after_the_frames_cut_with_it() -> None:
    ledger, drops = make("linear16", max_chunk_delay=1.0)
    ledger.hold(0.0, b"\x01" * 5)  # two whole samples and half of one, held
    for data, ticks in ledger.flush(0.1, closing=True):
        ledger.append(data, ticks)
    assert drops == []  # flushing reports nothing: the frames come first
    ledger.drop_partial_sample()
    ledger.report_drop()
    assert ledger.received == 2
    assert spans(drops) == [(2, 2, 1, DropReason.PARTIAL_SAMPLE)]


# -- framing compressed audio ------------------------------------------------------


def test_raw_opus_packets_are_frames_as_they_come() -> None:
    ledger, _ = make("opus", sample_rate=48000, max_chunk_delay=0.5)
    assert ledger.hold(0.0, OPUS_10MS + b"abc") == [(OPUS_10MS + b"abc", 480)]
    assert ledger.hold(0.0, OPUS_60MS) == [(OPUS_60MS, 2880)]
    assert ledger.hold(0.0, bytearray(OPUS_2X10MS + b"z")) == [(OPUS_2X10MS + b"z", 960)]
    # Never held for coalescing, so nothing is ever due or flushed.
    assert ledger.pending_since is None
    assert ledger.coalescing_deadline(0.5) is None
    assert ledger.flush(0.0, closing=True) == []
    assert ledger.stream_headers == b""


def test_ogg_pages_are_cut_whole_and_headers_kept_aside() -> None:
    ledger, _ = make("ogg_opus", sample_rate=48000)
    first, second = audio_page(960, 2), audio_page(2880, 3)
    assert ledger.hold(0.0, HEADERS + first + second[:10]) == [(first, 960)]
    assert ledger.stream_headers == HEADERS
    assert ledger.hold(0.0, second[10:]) == [(second, 1920)]


def test_an_unfinished_ogg_page_is_sent_as_it_is_only_when_closing() -> None:
    ledger, _ = make("ogg_opus", sample_rate=48000)
    ledger.hold(0.0, HEADERS)
    page = audio_page(960, 2)
    assert ledger.hold(0.0, page[:20]) == []
    assert ledger.flush(0.0) == []
    assert ledger.flush(0.0, closing=True) == [(page[:20], 0)]
    assert ledger.flush(0.0, closing=True) == []


def _header_page(seqno: int) -> bytes:
    # The largest body whose lacing table fits one page (254 * 255 + 254).
    return ogg_page(bytes(65024), 0, seqno=seqno)


def test_ogg_headers_beyond_256_kib_are_refused() -> None:
    ledger, _ = make("ogg_opus", sample_rate=48000)
    pages = [_header_page(n) for n in range(5)]
    assert sum(map(len, pages[:4])) <= 256 * 1024 < sum(map(len, pages))
    for page in pages[:4]:
        assert ledger.hold(0.0, page) == []
    with pytest.raises(LocalProtocolError, match="256 KiB"):
        ledger.hold(0.0, pages[4])


# -- positions ------------------------------------------------------------------------


def test_append_and_sent_move_the_marks() -> None:
    ledger, _ = make()
    assert not ledger.unconfirmed
    assert ledger.append(b"a" * 10, 10) == (0, 10, b"a" * 10)
    assert ledger.append(b"b" * 5, 5) == (10, 15, b"b" * 5)
    assert (ledger.replay_from, ledger.sent_upto, ledger.received) == (0, 0, 15)
    assert ledger.unconfirmed
    ledger.sent(10)
    assert (ledger.sent_upto, ledger.max_sent) == (10, 10)
    ledger.sent(4)  # a new socket starts lower; max_sent remembers the furthest
    assert (ledger.sent_upto, ledger.max_sent) == (4, 10)
    assert ledger.retained_bytes == 15 == ledger.buffered_bytes


def test_confirm_releases_whole_frames_and_remembers_the_position() -> None:
    ledger, _ = make()
    for _ in range(3):
        add_frame(ledger, b"x" * 10, 10, streaming=True, live=True)
    ledger.confirm(15)
    assert ledger.replay_from == 15
    assert [frame[:2] for frame in ledger.retained] == [(10, 20), (20, 30)]
    assert ledger.retained_bytes == 20
    ledger.confirm(12)  # behind: nothing
    assert ledger.replay_from == 15
    ledger.confirm(20)
    assert [frame[:2] for frame in ledger.retained] == [(20, 30)]


def test_confirm_beyond_received_stops_at_received() -> None:
    ledger, _ = make()
    add_frame(ledger, b"x" * 10, 10, streaming=True, live=True)
    ledger.confirm(50)
    assert ledger.replay_from == 10
    assert not ledger.unconfirmed
    assert ledger.retained_bytes == 0
    assert list(ledger.replay_frames()) == []


def _ogg_frames(ledger: AudioLedger, *pages: bytes) -> list[tuple[int, int]]:
    ledger.hold(0.0, HEADERS)
    added = [
        add_frame(ledger, data, ticks, streaming=True, live=True)
        for data, ticks in ledger.hold(0.0, b"".join(pages))
    ]
    return [frame[:2] for frame in added]


def test_zero_length_ogg_frames_wait_for_the_frame_after_them() -> None:
    ledger, _ = make("ogg_opus", sample_rate=48000)
    frames = _ogg_frames(ledger, audio_page(960, 2), audio_page(-1, 3), audio_page(2880, 4))
    assert frames == [(0, 960), (960, 960), (960, 2880)]
    # Confirmed up to the granule-less page: it stays, with the page it precedes.
    ledger.confirm(960)
    assert [frame[:2] for frame in ledger.retained] == [(960, 960), (960, 2880)]
    assert [item[:3] for item in ledger.replay_frames()] == [(960, 960, 960), (960, 960, 2880)]


def test_a_confirm_past_a_zero_length_frame_releases_every_frame_before_it() -> None:
    ledger, _ = make("ogg_opus", sample_rate=48000)
    pages = [audio_page(960, 2), audio_page(-1, 3), audio_page(1920, 4), audio_page(2880, 5)]
    frames = _ogg_frames(ledger, *pages)
    assert frames == [(0, 960), (960, 960), (960, 1920), (1920, 2880)]
    ledger.confirm(2000)
    assert [frame[:2] for frame in ledger.retained] == [(1920, 2880)]
    assert ledger.retained_bytes == len(pages[3])


def test_a_granule_less_page_stays_with_the_frame_after_it() -> None:
    # Its packet goes on in the next page: a replay must not start without it.
    ledger, _ = make("ogg_opus", sample_rate=48000)
    pages = [audio_page(960, 2), audio_page(-1, 3), audio_page(1920, 4), audio_page(2880, 5)]
    _ogg_frames(ledger, *pages)
    ledger.confirm(1000)  # inside the frame after the granule-less page
    assert [frame[:2] for frame in ledger.retained] == [(960, 960), (960, 1920), (1920, 2880)]
    assert [item[:3] for item in ledger.replay_frames()][:2] == [(960, 960, 960), (960, 960, 1920)]


def test_frames_confirmed_past_a_granule_less_page_are_neither_replayed_nor_dropped() -> None:
    ledger, drops = make("ogg_opus", sample_rate=48000, replay_seconds=0.005)  # 320 bytes
    pages = [audio_page(960, 2), audio_page(-1, 3), audio_page(1920, 4), audio_page(2880, 5)]
    _ogg_frames(ledger, *pages)
    ledger.confirm(2000)
    assert ledger.retained[0][:2] == (1920, 2880)
    assert [item[:3] for item in ledger.replay_frames()] == [(1920, 1920, 2880)]
    page = audio_page(3840, 6, size=200)
    ((data, ticks),) = ledger.hold(0.0, page)
    add_frame(ledger, data, ticks, streaming=True, live=True)
    assert [frame[:2] for frame in ledger.retained] == [(1920, 2880), (2880, 3840)]
    assert ledger.retained_bytes == retained_size(ledger) <= 320
    ledger.socket_ended()
    ledger.report_drop()
    assert drops == []
    assert ledger.replay_from == 2000


def test_evicting_a_granule_less_page_behind_a_confirm_takes_nothing_back() -> None:
    ledger, drops = make("ogg_opus", sample_rate=48000, replay_seconds=0.002)  # 128 bytes
    pages = [audio_page(960, 2, size=20), audio_page(-1, 3, size=20), audio_page(1920, 4, size=20)]
    _ogg_frames(ledger, *pages)  # 48 bytes each: the first is evicted, a gap
    ledger.confirm(1000)  # inside the page after the granule-less one
    ledger.socket_ended()
    assert [frame[:2] for frame in ledger.retained] == [(960, 960), (960, 1920)]
    # No socket: a 68-byte page evicts the granule-less page, and only that.
    ((data, ticks),) = ledger.hold(0.0, audio_page(2880, 5, size=40))
    add_frame(ledger, data, ticks)
    assert [frame[:2] for frame in ledger.retained] == [(960, 1920), (1920, 2880)]
    assert ledger.replay_from == 1000
    ledger.abandon(DropReason.SESSION_FAILED)
    ledger.report_drop()
    assert all(drop.start <= drop.end for drop in drops), drops
    # Every tick after the confirm is dropped once; none before it.
    assert [span[:2] for span in spans(drops, 48000) if span[1] > span[0]] == [(1000, 2880)]


# -- the replay bound -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate", "frame", "ticks", "more", "more_ticks"),
    [
        # 2.5 ms of mu-law is 20 bytes; 2.5 ms of linear16 at 16 kHz is 80.
        ("mulaw", 8000, bytes(20), 20, b"\xff", 1),
        ("linear16", 16000, bytes(80), 40, bytes(2), 1),
        # Compressed audio is bounded at the highest Opus bitrate: 160 bytes.
        ("opus", 48000, OPUS_10MS + bytes(159), 480, OPUS_10MS, 480),
    ],
    ids=["mulaw", "linear16", "opus"],
)
def test_the_bound_is_replay_seconds_of_audio(
    encoding: str, rate: int, frame: bytes, ticks: int, more: bytes, more_ticks: int
) -> None:
    ledger, _ = make(encoding, rate, replay_seconds=0.0025)
    ledger.append(frame, ticks)
    assert not ledger.over_bound  # exactly the bound
    ledger.append(more, more_ticks)
    assert ledger.over_bound  # the smallest frame more


def test_eviction_without_a_live_socket_drops_the_oldest() -> None:
    ledger, drops = make(replay_seconds=0.0025)  # 20 bytes
    add_frame(ledger, b"a" * 10, 10)
    add_frame(ledger, b"b" * 10, 10)
    add_frame(ledger, b"c" * 10, 10)
    assert ledger.retained_bytes == 20 == retained_size(ledger)
    assert ledger.replay_from == 10
    assert drops == []  # recorded, reported when the engine says so
    ledger.report_drop()
    assert spans(drops) == [(0, 10, 10, DropReason.REPLAY_OVERFLOW)]
    assert (ledger.dropped_bytes, ledger.dropped_ticks) == (10, 10)


def test_eviction_of_audio_the_live_socket_has_is_only_a_gap() -> None:
    ledger, drops = make(replay_seconds=0.0025)
    for byte in b"abc":
        add_frame(ledger, bytes([byte]) * 10, 10, streaming=True, live=True)
    assert ledger.retained_bytes == 20 == retained_size(ledger)
    assert drops == []
    assert ledger.replay_from == 0  # the server has it; not forgotten yet
    # A final confirming past the gap: nothing was lost.
    ledger.confirm(12)
    ledger.socket_ended()
    ledger.report_drop()
    assert drops == []
    assert ledger.replay_from == 12


def test_a_gap_becomes_a_drop_when_its_socket_ends() -> None:
    ledger, drops = make(replay_seconds=0.0025)
    for byte in b"abcd":
        add_frame(ledger, bytes([byte]) * 10, 10, streaming=True, live=True)
    assert drops == []
    ledger.socket_ended()
    ledger.report_drop()
    assert spans(drops) == [(0, 20, 20, DropReason.REPLAY_OVERFLOW)]
    # The next socket starts from the oldest frame still held.
    assert (ledger.replay_from, ledger.sent_upto) == (20, 20)
    ledger.socket_ended()  # the gap is reported once
    ledger.report_drop()
    assert len(drops) == 1


def test_a_gap_partly_confirmed_drops_only_the_rest() -> None:
    ledger, drops = make("linear16", replay_seconds=0.0025)  # 40 bytes
    for byte in b"abcd":
        add_frame(ledger, bytes([byte]) * 16, 8, streaming=True, live=True)
    ledger.confirm(5)
    ledger.socket_ended()
    ledger.report_drop()
    assert spans(drops) == [(5, 16, 22, DropReason.REPLAY_OVERFLOW)]


def test_a_gap_evicted_from_a_partly_confirmed_frame_counts_the_rest() -> None:
    ledger, drops = make("linear16", replay_seconds=0.0025)  # 40 bytes
    for byte in b"ab":
        add_frame(ledger, bytes([byte]) * 16, 8, streaming=True, live=True)
    ledger.confirm(3)
    add_frame(ledger, b"c" * 16, 8, streaming=True, live=True)
    add_frame(ledger, b"d" * 16, 8, streaming=True, live=True)
    ledger.socket_ended()
    ledger.report_drop()
    assert spans(drops) == [(3, 16, 26, DropReason.REPLAY_OVERFLOW)]


def test_audio_held_back_from_a_live_socket_is_dropped_at_once() -> None:
    ledger, drops = make(replay_seconds=0.0025)
    add_frame(ledger, b"a" * 10, 10, streaming=True, live=True)
    ledger.confirm(10)
    add_frame(ledger, b"b" * 10, 10, live=True)  # a settings drain: not sent
    add_frame(ledger, b"c" * 10, 10, live=True)
    add_frame(ledger, b"d" * 10, 10, live=True)
    assert spans(drops) == [(10, 20, 10, DropReason.REPLAY_OVERFLOW)]
    assert ledger.replay_from == 20
    assert [frame[:2] for frame in ledger.unsent_frames()] == [(20, 30), (30, 40)]


def test_a_drop_behind_a_gap_leaves_replay_from_to_the_gap() -> None:
    ledger, drops = make(replay_seconds=0.0025)
    add_frame(ledger, b"a" * 10, 10, streaming=True, live=True)
    for byte in b"bcd":
        add_frame(ledger, bytes([byte]) * 10, 10, live=True)
    # "a" is a gap, "b" (never sent) a drop; the gap still counts from 0.
    assert spans(drops) == [(10, 20, 10, DropReason.REPLAY_OVERFLOW)]
    assert ledger.replay_from == 0
    ledger.socket_ended()
    ledger.report_drop()
    assert spans(drops)[1:] == [(0, 10, 10, DropReason.REPLAY_OVERFLOW)]
    assert ledger.replay_from == 20


def test_evicting_a_partly_confirmed_compressed_frame_counts_bytes_in_proportion() -> None:
    ledger, drops = make("opus", 48000, replay_seconds=0.002)  # 128 bytes
    add_frame(ledger, OPUS_2X10MS + bytes(99), 960, streaming=True, live=True)
    ledger.confirm(240)
    ledger.socket_ended()
    add_frame(ledger, OPUS_10MS + bytes(59), 480)  # 160 bytes held, no socket
    ledger.report_drop()
    assert spans(drops, 48000) == [(240, 960, 75, DropReason.REPLAY_OVERFLOW)]


# -- abandoning -------------------------------------------------------------------------


def test_abandon_reports_everything_unconfirmed() -> None:
    ledger, drops = make("linear16")
    for byte in b"ab":
        add_frame(ledger, bytes([byte]) * 8, 4, streaming=True, live=True)
    ledger.confirm(2)  # half of the first frame
    ledger.socket_ended()
    ledger.abandon(DropReason.SESSION_FAILED)
    ledger.report_drop()
    assert spans(drops) == [(2, 8, 12, DropReason.SESSION_FAILED)]
    assert not ledger.unconfirmed
    assert (ledger.retained_bytes, len(ledger.retained)) == (0, 0)


def test_abandon_counts_a_partly_confirmed_compressed_frame_in_proportion() -> None:
    ledger, drops = make("opus", 48000)
    add_frame(ledger, OPUS_2X10MS + bytes(99), 960, streaming=True, live=True)
    add_frame(ledger, OPUS_10MS + bytes(9), 480, streaming=True, live=True)
    ledger.confirm(720)
    ledger.socket_ended()
    ledger.abandon(DropReason.CLOSE_TIMEOUT)
    ledger.report_drop()
    assert spans(drops, 48000) == [(720, 1440, 25 + 10, DropReason.CLOSE_TIMEOUT)]


def test_abandon_counts_zero_length_frames_whole() -> None:
    ledger, drops = make("ogg_opus", 48000)
    ledger.hold(0.0, HEADERS)
    pages = [audio_page(960, 2), audio_page(-1, 3, size=30), audio_page(1920, 4)]
    for data, ticks in ledger.hold(0.0, b"".join(pages)):
        add_frame(ledger, data, ticks)
    ledger.confirm(960)
    ledger.abandon(DropReason.NOT_STARTED)
    ledger.report_drop()
    assert spans(drops, 48000) == [
        (960, 1920, len(pages[1]) + len(pages[2]), DropReason.NOT_STARTED)
    ]


def test_abandon_with_nothing_unconfirmed_reports_nothing() -> None:
    ledger, drops = make()
    add_frame(ledger, b"a" * 10, 10, streaming=True, live=True)
    ledger.confirm(10)
    ledger.abandon(DropReason.SESSION_FAILED)
    ledger.report_drop()
    assert drops == []


# -- drop merging -------------------------------------------------------------------------


def test_touching_drops_with_one_reason_are_reported_as_one() -> None:
    ledger, drops = make(replay_seconds=0.0025)
    for byte in b"abcde":
        add_frame(ledger, bytes([byte]) * 10, 10)
    ledger.report_drop()
    assert spans(drops) == [(0, 30, 30, DropReason.REPLAY_OVERFLOW)]
    ledger.report_drop()
    assert len(drops) == 1


def test_a_drop_with_another_reason_reports_the_previous_one_first() -> None:
    ledger, drops = make()
    ledger.note_drop(0, 10, 10, DropReason.REPLAY_OVERFLOW)
    ledger.note_drop(10, 20, 10, DropReason.SESSION_FAILED)
    assert spans(drops) == [(0, 10, 10, DropReason.REPLAY_OVERFLOW)]
    ledger.report_drop()
    assert spans(drops)[1:] == [(10, 20, 10, DropReason.SESSION_FAILED)]


def test_a_drop_that_does_not_touch_reports_the_previous_one_first() -> None:
    ledger, drops = make()
    ledger.note_drop(0, 10, 10, DropReason.REPLAY_OVERFLOW)
    ledger.note_drop(15, 20, 5, DropReason.REPLAY_OVERFLOW)
    ledger.note_drop(20, 25, 5, DropReason.REPLAY_OVERFLOW)
    ledger.report_drop()
    assert spans(drops) == [
        (0, 10, 10, DropReason.REPLAY_OVERFLOW),
        (15, 25, 10, DropReason.REPLAY_OVERFLOW),
    ]
    assert (ledger.dropped_bytes, ledger.dropped_ticks) == (20, 20)


# -- replay -----------------------------------------------------------------------------


def test_replay_trims_a_partly_confirmed_pcm_frame() -> None:
    ledger, _ = make("linear16")
    add_frame(ledger, bytes(range(8)), 4, streaming=True, live=True)
    add_frame(ledger, bytes(range(8, 16)), 4, streaming=True, live=True)
    ledger.confirm(3)
    ledger.socket_ended()
    assert list(ledger.replay_frames()) == [
        (0, 3, 4, bytes([6, 7])),
        (4, 4, 8, bytes(range(8, 16))),
    ]


def test_replay_sends_a_partly_confirmed_compressed_frame_whole() -> None:
    ledger, _ = make("opus", 48000)
    packet = OPUS_2X10MS + bytes(9)
    add_frame(ledger, packet, 960, streaming=True, live=True)
    ledger.confirm(100)
    ledger.socket_ended()
    assert list(ledger.replay_frames()) == [(0, 0, 960, packet)]


def test_unsent_frames_start_at_sent_upto() -> None:
    ledger, _ = make()
    add_frame(ledger, b"a" * 10, 10, streaming=True, live=True)
    add_frame(ledger, b"b" * 10, 10, live=True)  # a settings drain: held back
    add_frame(ledger, b"c" * 10, 10, live=True)
    assert list(ledger.unsent_frames()) == [(10, 20, b"b" * 10), (20, 30, b"c" * 10)]


# -- any sequence -------------------------------------------------------------------------

# Engine-like inputs, audio and finals the most common ("open" while a socket
# is open is a reconnect). The argument is the audio's size (PCM), what its
# packet or page is made from (Opus), or how far a final confirms (``arg % 13``
# tenths of what the socket has; above ten: past the end).
_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["audio"] * 3
            + ["confirm"] * 3
            + ["open", "hold_back"] * 2
            + ["timer", "lose", "send_held"]
        ),
        st.integers(1, 40),
    ),
    min_size=10,
    max_size=60,
)


class _Session:
    """Drives a ledger through engine-like inputs and checks its books: PCM
    framed from bytes, raw Opus packets (some lasting nothing), or Ogg pages
    (some without a granule, some given in two parts).

    Sockets catch up with the real ``replay`` and ``send_held``, on a
    ``Timeline`` that must map each socket's audio back to the session's.
    """

    def __init__(self, options: ConnectionConfig) -> None:
        self.drops: list[AudioDropped] = []
        self.ledger = AudioLedger(options, self.drops.append)
        self.encoding = options.encoding.value
        self.width = options.encoding.sample_width  # None: compressed
        self.tps = tps = options.ticks_per_second
        self.turns = Turns(timeout=5.0, max_pending=64, latency=Latency(10, 1.0))
        self.timeline = Timeline(tps)
        self.open = False
        self.streaming = False
        self.now = 0.0
        self.closing = False  # close() came: no more audio
        self.confirmed = 0  # furthest position any final confirmed
        self.forgotten = 0  # furthest replay_from so far
        self.seen = 0  # drops already checked
        self.given = 0  # bytes of audio given
        self.framed = 0  # bytes of audio cut into frames
        self.ticks: list[tuple[int, int]] = []  # every frame's ticks, in order
        self.granule = 0  # Ogg: the last page's granule position
        self.pages = 0  # Ogg: pages made
        self.rest = b""  # Ogg: the part of the last page not given yet
        if self.encoding == "ogg_opus":
            assert self.ledger.hold(0.0, HEADERS) == []

    def spans(self, drops: list[AudioDropped]) -> list[tuple[int, int, int, DropReason]]:
        return spans(drops, self.tps)

    def audio(self, arg: int) -> bytes:
        """``arg`` bytes of audio, or a packet or page made from ``arg``."""
        if self.encoding == "opus":
            # 10 to 60 ms, one frame or two; code 3 with a zero count lasts 0.
            mode, code = arg % 4, arg // 4 % 4
            count = bytes([arg % 3]) if code == 3 else b""
            return bytes([toc(mode, code)]) + count + bytes([arg]) * (arg % 9)
        if self.encoding == "ogg_opus":
            # Some pages have no granule (their packet goes on in the next), and
            # some are given in two parts.
            self.pages += 1
            if arg % 5 == 0:
                granule = -1
            else:
                self.granule = granule = self.granule + 120 * (arg % 7 + 1)
            data = self.rest + audio_page(granule, self.pages + 1, size=arg)
            keep = len(data) // 2 if arg % 3 == 0 else 0
            self.rest = data[len(data) - keep :]
            return data[: len(data) - keep]
        return bytes([arg]) * arg

    def check(self) -> None:
        ledger = self.ledger
        # What is confirmed or dropped stays forgotten.
        assert ledger.replay_from >= self.forgotten, (self.forgotten, ledger.replay_from)
        self.forgotten = ledger.replay_from
        assert ledger.retained_bytes == retained_size(ledger)
        if self.streaming or (self.open and self.closing):
            assert ledger.replay_from <= ledger.sent_upto <= ledger.received
        if self.streaming:
            # The end of what this socket carried is where the session is.
            assert self.socket_end() == ledger.sent_upto == ledger.received
        for drop in self.drops[self.seen :]:
            start, end, nbytes, reason = self.spans([drop])[0]
            if reason is DropReason.PARTIAL_SAMPLE:
                # Placed after the last frame (end() checks nothing came after).
                assert self.width and 0 < nbytes < self.width
                assert start == end == ledger.received
                continue
            if self.width:
                assert start < end and nbytes == (end - start) * self.width, drop
            else:
                # Bytes in proportion; a frame without ticks can be dropped alone.
                assert start <= end and nbytes >= 0, drop
            # A drop never takes back audio a final confirmed before it.
            assert start >= self.confirmed, (drop, self.confirmed)
        self.seen = len(self.drops)

    def frames(self, frames: list[tuple[bytes, int]]) -> None:
        ledger = self.ledger
        for data, ticks in frames:
            add_frame(
                ledger,
                data,
                ticks,
                streaming=self.streaming,
                live=self.open,
                timeline=self.timeline,
            )
            self.framed += len(data)
            self.ticks.append((ledger.received - ticks, ledger.received))
            assert not ledger.over_bound
            self.check()

    def step(self, op: str, arg: int) -> None:
        ledger = self.ledger
        self.now += 0.001
        if op in ("audio", "timer", "hold_back") and self.closing:
            pass
        elif op == "audio":
            data = self.audio(arg)
            self.given += len(data)
            self.frames(ledger.hold(self.now, data))
        elif op == "timer":
            self.frames(ledger.cut(self.now, everything=True))
        elif op == "confirm" and self.open:
            # What a final may confirm: audio this socket has, never the inside
            # of a range already reported dropped (a final maps onto either side).
            share = arg % 13
            position = ledger.sent_upto * min(share, 10) // 10
            if share > 10 and ledger.sent_upto == ledger.received:
                position = ledger.received + share  # is_last, or a word past the end
            for drop in self.drops:
                start, end = self.spans([drop])[0][:2]
                if start < position < end:
                    position = start
            retained = len(ledger.retained)
            ledger.confirm(position)
            self.confirmed = max(self.confirmed, min(position, ledger.received))
            if ledger.retained and len(ledger.retained) < retained:
                # A frame without ticks (an Ogg page whose packet goes on in the
                # next) is released only with the frame after it.
                start, end = self.ticks[len(self.ticks) - len(ledger.retained) - 1]
                assert end > start
        elif op == "open":
            if self.open:
                self.close_socket()  # a reconnect: the socket is lost, another opens
            ledger.report_drop()
            sent = binary(replay(self.now, ledger, self.turns, self.timeline))
            if self.width:
                # The unconfirmed audio, from replay_from on, and nothing else.
                kept = b"".join(data for _, _, data in ledger.retained)
                unconfirmed = (ledger.received - ledger.replay_from) * self.width
                assert b"".join(sent) == kept[len(kept) - unconfirmed :]
                assert self.timeline.ticks == ledger.received - ledger.replay_from
            else:
                # Every frame held, whole (a partly confirmed one too), after
                # the Ogg headers.
                headers = [ledger.stream_headers] if ledger.stream_headers else []
                assert sent == headers + [data for _, _, data in ledger.retained]
                origin = ledger.retained[0][0] if ledger.retained else ledger.received
                assert origin <= ledger.replay_from
                assert self.timeline.ticks == ledger.received - origin
            assert self.socket_end() == ledger.sent_upto == ledger.received
            self.open = True
            self.streaming = not self.closing
        elif op == "lose" and self.open:
            self.close_socket()
        elif op == "hold_back" and self.open:
            self.streaming = False
        elif op == "send_held" and self.open and not self.streaming and not self.closing:
            # close() during a settings drain: the last audio is framed, what was
            # held back goes out on the live socket, and no audio comes after.
            self.close_audio()
            held = list(ledger.unsent_frames())
            carried = held[-1][1] if held else ledger.sent_upto
            furthest = max([ledger.max_sent] + [end for _, end, _ in held])
            sent = binary(send_held(self.now, ledger, self.turns, self.timeline))
            assert sent == [data for _, _, data in held]
            assert ledger.sent_upto == ledger.received
            assert ledger.max_sent == furthest
            # Held audio the bound dropped is a jump: the socket's end maps to
            # the end of the last frame it was sent.
            assert self.socket_end() == carried
            self.closing = True
            ledger.report_drop()
        self.check()

    def socket_end(self) -> int:
        """The session tick the live socket's audio so far ends at."""
        return round(self.timeline.session_ticks(self.timeline.ticks / self.tps))

    def close_audio(self) -> None:
        """The audio has ended: frame what is held, as the engine's close does,
        then report a half sample left over after those frames."""
        self.frames(self.ledger.flush(self.now, closing=True))
        self.ledger.drop_partial_sample()

    def close_socket(self) -> None:
        self.ledger.socket_ended()
        self.ledger.report_drop()
        self.open = self.streaming = False

    def end(self) -> None:
        ledger = self.ledger
        self.close_audio()
        if self.open:
            self.close_socket()
        ledger.abandon(DropReason.SESSION_FAILED)
        ledger.report_drop()
        self.check()
        # Every tick is confirmed or in exactly one drop.
        dropped = self.spans(self.drops)
        previous, position = 0, self.confirmed
        for start, end in sorted((start, end) for start, end, _, _ in dropped if end > start):
            assert start >= previous, dropped  # no tick dropped twice
            if end > position:
                assert start <= position, (self.confirmed, dropped)  # no tick forgotten
                position = end
            previous = end
        assert position >= ledger.received, (self.confirmed, dropped)
        ticks = sum(end - start for start, end, _, _ in dropped)
        assert (ledger.dropped_ticks, ledger.dropped_bytes) == (
            ticks,
            sum(drop.bytes for drop in self.drops),
        )
        assert ledger.retained_bytes == 0 and not ledger.unconfirmed
        # Every byte given was framed, or is the half sample reported at the
        # very end of the audio.
        partial = [drop for drop in dropped if drop[3] is DropReason.PARTIAL_SAMPLE]
        assert len(partial) <= 1
        for start, end, _, _ in partial:
            assert start == end == ledger.received
        assert self.given == self.framed + sum(nbytes for _, _, nbytes, _ in partial)
        if not self.width:
            assert ledger.dropped_bytes <= self.framed


@settings(max_examples=400, deadline=None)
@given(
    encoding=st.sampled_from(["mulaw", "linear16", "opus", "ogg_opus"]),
    chunk_samples=st.integers(1, 12),
    max_chunk_delay=st.sampled_from([0, 0.001, 0.002]),
    replay_seconds=st.sampled_from([0.001, 0.002, 0.005]),
    ops=_OPS,
)
def test_any_sequence_keeps_the_books(
    encoding: str,
    chunk_samples: int,
    max_chunk_delay: float,
    replay_seconds: float,
    ops: list[tuple[str, int]],
) -> None:
    compressed = encoding in ("opus", "ogg_opus")
    session = _Session(
        config(
            encoding=encoding,
            sample_rate=48000 if compressed else 8000,
            chunk_bytes=chunk_samples * (2 if encoding == "linear16" else 1),
            max_chunk_delay=max_chunk_delay,
            replay_seconds=replay_seconds,
        )
    )
    for op, arg in ops:
        session.step(op, arg)
    session.end()


# -- audio passed over (PROTOCOL §9) --------------------------------------------


def _second_of_speech(
    encoding: str = "mulaw", **overrides: object
) -> tuple[AudioLedger, list[AudioDropped]]:
    """A ledger whose live socket was sent one second: 20 frames of 50 ms."""
    ledger, drops = make(encoding, **overrides)
    width = 2 if encoding == "linear16" else 1
    for index in range(20):
        add_frame(ledger, bytes([index]) * 400 * width, 400, streaming=True, live=True)
    return ledger, drops


def _ended(ledger: AudioLedger) -> None:
    ledger.socket_ended()
    ledger.report_drop()


def test_audio_passed_over_by_finals_in_order_is_silence() -> None:
    ledger, drops = _second_of_speech()
    ledger.heard(2400, 4000)
    ledger.confirm(4000, first_word=2400)  # 0-0.3 s before the first word
    ledger.heard(4800, 6000)
    ledger.confirm(6000, first_word=4800)  # 0.5-0.6 s
    _ended(ledger)
    assert drops == []
    assert ledger.replay_from == 6000


def test_a_final_landing_in_audio_passed_over_reports_the_rest_when_the_socket_ends() -> None:
    ledger, drops = _second_of_speech()
    ledger.heard(6400, 7600)
    ledger.confirm(7600, first_word=6400)  # 0.80-0.95 s first: 0-0.8 s passed over
    ledger.heard(2400, 4800)  # then 0.30-0.60 s: out of order
    ledger.confirm(4800, first_word=2400)  # confirms nothing new, passes nothing over
    assert drops == []  # not lost while the socket lives: the finals may still come
    _ended(ledger)
    assert spans(drops) == [
        (0, 2400, 2400, DropReason.OUT_OF_ORDER),
        (4800, 6400, 1600, DropReason.OUT_OF_ORDER),
    ]
    # Reported once: the next socket starts with nothing passed over.
    _ended(ledger)
    assert len(drops) == 2


def test_finals_filling_all_audio_passed_over_leave_nothing_to_report() -> None:
    ledger, drops = _second_of_speech()
    ledger.confirm(7600, first_word=6400)
    ledger.heard(3200, 6400)
    ledger.heard(0, 3200)
    _ended(ledger)
    assert drops == []


def test_a_final_within_rounding_of_audio_passed_over_is_not_out_of_order() -> None:
    ledger, drops = _second_of_speech()  # 10 ms is 80 ticks at 8 kHz
    ledger.confirm(4000, first_word=2400)
    ledger.heard(2320, 3000)  # reaches 80 ticks back: the service's rounding
    _ended(ledger)
    assert drops == []
    ledger, drops = _second_of_speech()
    ledger.confirm(4000, first_word=2400)
    ledger.heard(2300, 3000)  # 100 ticks back: out of order
    _ended(ledger)
    assert spans(drops) == [(0, 2300, 2300, DropReason.OUT_OF_ORDER)]


def test_a_gap_before_a_final_no_longer_than_rounding_is_not_passed_over() -> None:
    ledger, drops = _second_of_speech()
    ledger.confirm(4000, first_word=80)
    ledger.heard(0, 80)  # would land in it, but 80 ticks were never recorded
    _ended(ledger)
    assert drops == []


def test_a_finalize_answer_ends_the_doubt_before_its_position() -> None:
    ledger, drops = _second_of_speech()
    ledger.confirm(4000, first_word=2400)  # 0-0.3 s passed over
    ledger.confirm(7600, first_word=6400)  # 0.5-0.8 s passed over
    ledger.heard(4400, 4800)  # out of order: lands in 0.5-0.8 s
    ledger.covered(5200)  # the server transcribed all before 0.65 s
    _ended(ledger)
    assert spans(drops) == [(5200, 6400, 1200, DropReason.OUT_OF_ORDER)]


def test_is_last_covers_everything_passed_over() -> None:
    ledger, drops = _second_of_speech()
    ledger.confirm(7600, first_word=6400)
    ledger.heard(2400, 4800)
    ledger.covered(ledger.received)
    _ended(ledger)
    assert drops == []


def test_audio_passed_over_is_counted_in_bytes_of_the_encoding() -> None:
    ledger, drops = _second_of_speech("linear16", sample_rate=8000)
    ledger.confirm(7600, first_word=6400)
    ledger.heard(2400, 4800)
    _ended(ledger)
    assert spans(drops) == [
        (0, 2400, 4800, DropReason.OUT_OF_ORDER),
        (4800, 6400, 3200, DropReason.OUT_OF_ORDER),
    ]


def test_compressed_audio_passed_over_is_counted_from_its_frames_and_the_gap() -> None:
    # Raw Opus at 48 kHz: 60 ms packets of one byte (2880 ticks each) are
    # opaque, so bytes are shared out by ticks; a 10-byte bound evicts the
    # oldest while live (a gap whose bytes are only known in sum).
    ledger, drops = make("opus", sample_rate=48000, replay_seconds=10 / 64_000)
    for _ in range(20):
        packet = OPUS_60MS + bytes(99)  # 100 bytes a packet
        add_frame(ledger, packet, 2880, streaming=True, live=True)
    assert ledger.retained_bytes == 0  # all evicted while live: one gap
    ledger.confirm(20 * 2880, first_word=10 * 2880)
    ledger.heard(2 * 2880, 4 * 2880)
    _ended(ledger)
    assert spans(drops, tps=48000) == [
        (0, 2 * 2880, 200, DropReason.OUT_OF_ORDER),
        (4 * 2880, 10 * 2880, 600, DropReason.OUT_OF_ORDER),
    ]
    ledger, drops = make("opus", sample_rate=48000, replay_seconds=1.0)
    for _ in range(4):
        add_frame(ledger, OPUS_60MS + bytes(99), 2880, streaming=True, live=True)
    ledger.confirm(4 * 2880, first_word=2880 + 1440)  # a packet and a half: 150 bytes
    _ended(ledger)
    ledger.heard(0, 1440)  # the next socket: nothing passed over any more
    _ended(ledger)
    assert drops == []
    ledger, drops = make("opus", sample_rate=48000, replay_seconds=1.0)
    for _ in range(4):
        add_frame(ledger, OPUS_60MS + bytes(99), 2880, streaming=True, live=True)
    ledger.confirm(4 * 2880, first_word=2880 + 1440)  # a packet and a half: 150 bytes
    ledger.heard(0, 1440)  # a third of what was passed over: its bytes go by ticks
    _ended(ledger)
    assert spans(drops, tps=48000) == [(1440, 4320, 100, DropReason.OUT_OF_ORDER)]


def test_only_the_latest_stretches_passed_over_are_remembered() -> None:
    ledger, drops = make("mulaw", replay_seconds=600)
    step = 200
    count = MAX_PASSED + 2
    for index in range(count):
        add_frame(ledger, b"x" * step, step, streaming=True, live=True)
        # Each final's word is the last quarter of its frame: 150 ticks passed over.
        ledger.confirm(step * (index + 1), first_word=step * index + 150)
    last = step * (count - 1)
    ledger.heard(last + 10, last + 100)  # out of order, inside the latest: splits it
    _ended(ledger)
    reported = spans(drops)
    assert len(reported) == MAX_PASSED
    # The three earliest were forgotten (two to the bound, one to the split).
    assert reported[0] == (3 * step, 3 * step + 150, 150, DropReason.OUT_OF_ORDER)
    assert reported[-2:] == [
        (last, last + 10, 10, DropReason.OUT_OF_ORDER),
        (last + 100, last + 150, 50, DropReason.OUT_OF_ORDER),
    ]
