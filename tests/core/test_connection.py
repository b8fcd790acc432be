"""Unit tests of PulseConnection's subtler rules (the vectors cover the main paths)."""

from __future__ import annotations

import enum
import json
import random
import struct

import pytest

from pulse_core import (
    AudioDropped,
    CloseConnection,
    Closed,
    ConfigurationError,
    Connect,
    Connected,
    ConnectionFailed,
    Disconnected,
    DropReason,
    FinalizeTimedOut,
    LocalProtocolError,
    MalformedMessage,
    Reconnecting,
    ReconnectPolicy,
    SendBinary,
    SendPing,
    ServerError,
    SettingsApplied,
    SpeechEnded,
    SpeechStarted,
    State,
    Transcript,
    UnhandledMessage,
)
from tests.core.engine import Harness, audio_sent, kinds, texts

SECOND = b"\x01\x00" * 16000  # one second of 16 kHz linear16


def final(text: str = "", **fields: object) -> dict[str, object]:
    return {"type": "transcription", "transcript": text, "is_final": True, **fields}


def word(text: str, start: float, end: float) -> dict[str, object]:
    return {"word": text, "start": start, "end": end, "confidence": 0.9}


# -- keepalive and session time ------------------------------------------------


def test_keepalive_silence_does_not_shift_session_time() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    commands, _ = h.tick(5.0)
    assert commands == [SendBinary(bytes(3200))]  # 100 ms of linear16 silence
    h.at(5.5).send(SECOND)
    # The server's clock has 1.1 s before the second second of audio began.
    events = h.message(final("two", words=[word("two", 1.6, 1.9)]))
    (transcript,) = events
    assert transcript.words[0].start == pytest.approx(1.5)
    assert transcript.words[0].end == pytest.approx(1.8)
    assert (transcript.start, transcript.end) == (pytest.approx(1.5), pytest.approx(1.8))


def test_a_time_inside_keepalive_silence_maps_to_its_start() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.tick(5.0)
    (event,) = h.message({"type": "speech_started", "timestamp": 1.05, "session_id": "s"})
    assert isinstance(event, SpeechStarted)
    assert event.timestamp == pytest.approx(1.0)
    (event,) = h.message({"type": "speech_ended", "timestamp": 0.5})
    assert isinstance(event, SpeechEnded)
    assert event.timestamp == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("encoding", "rate", "fill", "size"),
    [("mulaw", 8000, 0xFF, 800), ("alaw", 8000, 0xD5, 800), ("linear32", 16000, 0x00, 6400)],
)
def test_keepalive_silence_per_encoding(encoding: str, rate: int, fill: int, size: int) -> None:
    h = Harness(encoding=encoding, sample_rate=rate)
    h.open()
    commands, _ = h.tick(5.0)
    assert commands == [SendBinary(bytes([fill]) * size)]


def test_keepalive_never_while_audio_flows_and_once_per_interval() -> None:
    h = Harness()
    h.open()
    for step in range(1, 500):  # ten seconds of 20 ms chunks
        h.at(step * 0.02).send(b"\x02\x00" * 320)
        deadline = h.conn.next_deadline()
        assert deadline is not None
        if deadline <= h.now:
            h.tick(h.now)
    assert h.conn.summary().keepalives == 0
    h.tick(10.1)  # the coalescing deadline: the last audio goes out
    h.tick(15.0)
    assert h.conn.summary().keepalives == 0
    h.tick(15.1)
    h.tick(15.1)
    h.tick(20.0)
    assert h.conn.summary().keepalives == 1
    h.tick(20.1)
    assert h.conn.summary().keepalives == 2


def test_opus_keepalive_is_a_ping_and_packets_are_sent_as_given() -> None:
    h = Harness(encoding="opus", sample_rate=48000)
    h.open()
    packet = bytes([0xF8]) + b"\x11" * 40  # CELT 20 ms, one frame
    assert h.send(packet) == [SendBinary(packet)]
    assert h.send(packet[:10]) == [SendBinary(packet[:10])]
    commands, _ = h.tick(6.0)
    assert commands == [SendPing(b"pulse-keepalive")]


# -- replay ----------------------------------------------------------------------


def test_replay_starts_at_the_end_of_the_last_confirmed_word() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.send(b"\x02\x00" * 16000)
    h.message(final("one", words=[word("one", 0.2, 1.25)]))
    h.at(3.0).conn.connection_closed(3.0, code=1006)
    h.collect()
    h.tick(10.0)
    commands, events = h.at(10.0).open()
    assert kinds(events) == ["Connected"]
    replayed = audio_sent(commands)
    # 1.25 s into the session: the last 0.75 s of the second second.
    assert replayed == b"\x02\x00" * 12000
    (transcript,) = h.message(final("two", words=[word("two", 0.1, 0.5)]))
    assert transcript.words[0].start == pytest.approx(1.35)


def test_owed_finalizes_are_resent_at_their_place_in_the_audio() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.speech_stopped(h.now)
    h.send(b"\x03\x00" * 8000)
    h.conn.finalize(h.now)
    h.collect()
    h.conn.connection_closed(1.0, code=1011)
    h.collect()
    h.tick(2.0)
    commands, _ = h.at(2.0).open()
    order: list[str] = []
    for command in commands:
        label = "audio" if isinstance(command, SendBinary) else command.text  # type: ignore[union-attr]
        if not order or order[-1] != label or label != "audio":
            order.append(label)
    assert order == ["audio", '{"type":"finalize"}', "audio", '{"type":"finalize"}']
    assert audio_sent(commands) == SECOND + b"\x03\x00" * 8000
    first, second = (
        h.message(final("a", from_finalize=True)),
        h.message(final("b", from_finalize=True)),
    )
    assert [(t.turn, t.finalized) for t in first + second] == [(1, True), (2, True)]


def test_a_protocol_violation_is_a_local_close_with_an_int_code() -> None:
    """PROTOCOL §4: the transport failed the socket for the server's protocol
    violation. The code may come as a WebSocket library's enum; events carry
    a plain int, and the close is this side's."""

    class Code(enum.IntEnum):
        INVALID_FRAME_PAYLOAD_DATA = 1007

    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.protocol_violation(1.0, code=Code.INVALID_FRAME_PAYLOAD_DATA, reason="not UTF-8")
    _, events = h.collect()
    assert kinds(events) == ["MalformedMessage", "Disconnected", "Reconnecting"]
    malformed, gone = events[0], events[1]
    assert isinstance(malformed, MalformedMessage) and malformed.error == "not UTF-8"
    assert isinstance(gone, Disconnected)
    assert (gone.code, gone.local, gone.will_reconnect) == (1007, True, True)
    assert type(gone.code) is int
    assert h.conn.state is State.BACKOFF


def test_a_protocol_violation_while_connecting_is_a_failed_attempt() -> None:
    """Before the socket opened there is no message to call malformed: the
    attempt failed, and the next one follows by policy."""
    h = Harness()
    h.conn.start(0.0)
    h.collect()
    h.conn.protocol_violation(0.1, code=1002, reason="bad frame")
    _, events = h.collect()
    assert kinds(events) == ["ConnectionFailed", "Reconnecting"]
    (failure,) = h.of(ConnectionFailed)
    assert "bad frame" in failure.reason and not failure.permanent
    assert h.conn.state is State.BACKOFF


def test_overflow_while_disconnected_is_reported_exactly() -> None:
    h = Harness(max_chunk_delay=0, replay_seconds=1.0)
    h.open()
    h.conn.connection_closed(0.0, code=1006)
    h.collect()
    for _ in range(3):
        h.send(SECOND)
    h.tick(1.0)
    _, events = h.at(1.0).open()
    drops = [e for e in events if isinstance(e, AudioDropped)]
    assert drops == [
        AudioDropped(bytes=64000, start=0.0, end=2.0, reason=DropReason.REPLAY_OVERFLOW)
    ]
    assert h.conn.summary().dropped_bytes == 64000


def test_audio_evicted_while_live_is_lost_only_if_the_socket_dies_unconfirmed() -> None:
    h = Harness(max_chunk_delay=0, replay_seconds=1.0)
    h.open()
    for _ in range(3):
        h.send(SECOND)
    assert not h.of(AudioDropped)
    # A final confirms the first 1.5 s; then the socket dies.
    h.message(final("x", words=[word("x", 0.0, 1.5)]))
    h.conn.connection_closed(3.0, code=1006)
    h.collect()
    (drop,) = h.of(AudioDropped)
    assert (drop.start, drop.end, drop.bytes) == (1.5, 2.0, 16000)


def test_ogg_headers_are_sent_again_on_every_connection() -> None:
    def page(granule: int, body: bytes) -> bytes:
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, 0, granule, 1, 0, 0, 1)
        return header + bytes([len(body)]) + body

    head, tags = page(0, b"OpusHead"), page(0, b"OpusTags")
    audio = page(960, b"\x01" * 50)
    h = Harness(encoding="ogg_opus", sample_rate=48000)
    h.open()
    assert h.send(head + tags) == []
    assert h.send(audio) == [SendBinary(audio)]
    h.conn.connection_closed(1.0, code=1006)
    h.collect()
    h.tick(2.0)
    commands, _ = h.at(2.0).open()
    assert commands == [SendBinary(head + tags), SendBinary(audio)]


# -- finalize --------------------------------------------------------------------


def test_finalize_without_new_audio_sends_nothing() -> None:
    h = Harness()
    h.open()
    assert h.conn.finalize(0.0) is False
    h.send(b"\x00")  # half a sample is not audio yet
    assert h.conn.finalize(0.0) is False
    h.send(b"\x00")
    assert h.conn.finalize(0.0) is True
    h.collect()
    assert texts(h.commands) == ['{"type":"finalize"}']


def test_order_correlation_when_from_finalize_is_absent() -> None:
    h = Harness()
    h.open()
    h.send(SECOND)
    h.conn.speech_stopped(0.0)
    (answer,) = h.at(0.4).message({"transcript": "hi", "is_final": True})
    assert answer.finalized and answer.turn == 1 and answer.latency == pytest.approx(0.4)
    (automatic,) = h.message({"transcript": "more", "is_final": True})
    assert not automatic.finalized and automatic.turn is None


def test_automatic_final_with_from_finalize_false_answers_nothing() -> None:
    h = Harness()
    h.open()
    h.send(SECOND)
    h.conn.finalize(0.0)
    (automatic,) = h.message(final("auto", from_finalize=False))
    assert not automatic.finalized
    (answer,) = h.message(final("done", from_finalize=True))
    assert answer.finalized and answer.turn == 1


def test_late_answer_after_timeout_is_delivered_and_does_not_shift_later_turns() -> None:
    h = Harness(finalize_timeout=1.0)
    h.open()
    h.send(SECOND)
    h.conn.finalize(0.0)
    h.message({"transcript": "interim", "is_final": False})  # the server is alive
    _, events = h.tick(1.0)
    assert kinds(events) == ["FinalizeTimedOut"]
    h.at(1.5).send(SECOND)
    h.conn.finalize(1.5)
    late, answer = (
        h.message(final("one", from_finalize=True)),
        h.message(final("two", from_finalize=True)),
    )
    assert late[0].late and not late[0].finalized and late[0].turn == 1
    assert answer[0].finalized and answer[0].turn == 2


def test_a_stalled_connection_is_replaced_when_a_finalize_goes_unanswered() -> None:
    h = Harness(finalize_timeout=1.0)
    h.open()
    h.send(SECOND)
    h.conn.finalize(0.5)
    commands, events = h.tick(1.5)
    assert CloseConnection(code=1011, reason="server stopped answering") in commands
    assert kinds(events) == ["FinalizeTimedOut", "Disconnected", "Reconnecting"]
    assert events[1].local is True
    assert h.conn.state is State.BACKOFF


def test_too_many_pending_finalizes_time_out_the_oldest() -> None:
    h = Harness(max_pending_finalizes=2, max_chunk_delay=0)
    h.conn.start(0.0)
    for _ in range(3):
        h.send(b"\x01\x00")
        h.conn.finalize(0.0)
    h.collect()
    (timed_out,) = h.of(FinalizeTimedOut)
    assert timed_out.turn == 1
    assert h.conn.pending_finalizes == 2


def test_latency_summary_percentiles_and_budget() -> None:
    h = Harness(ttfs_p99_latency=0.5)
    h.open()
    for turn, delay in enumerate([0.1, 0.2, 0.3, 0.9]):
        start = float(turn)
        h.at(start).send(SECOND)
        h.conn.speech_stopped(start)
        h.at(start + delay).message(final("x", from_finalize=True))
    summary = h.conn.summary().latency
    assert summary.count == 4 and summary.over_budget == 1
    assert summary.p50 == pytest.approx(0.2) and summary.max == pytest.approx(0.9)
    assert summary.mean == pytest.approx(0.375)


# -- reconnect policy -------------------------------------------------------------


def test_backoff_grows_with_jitter_inside_the_bounds() -> None:
    h = Harness(jitter=random.Random(3), reconnect={"max_attempts": None})
    h.conn.start(0.0)
    h.collect()
    delays = []
    for attempt in range(1, 8):
        h.conn.connection_failed(h.now, status=503)
        _, events = h.collect()
        reconnecting = events[-1]
        assert isinstance(reconnecting, Reconnecting)
        raw = min(8.0, 0.25 * 2 ** (attempt - 1))
        assert raw * 0.5 <= reconnecting.delay <= raw
        delays.append(reconnecting.delay)
        h.tick(h.now + reconnecting.delay)
    assert len(set(delays)) == len(delays)


def test_retries_give_up_after_max_attempts() -> None:
    h = Harness(reconnect=ReconnectPolicy(max_attempts=2))
    h.conn.start(0.0)
    for _ in range(2):
        h.conn.connection_failed(h.now, status=None, reason="refused")
        h.collect()
        if h.conn.state is State.BACKOFF:
            h.tick(h.now + 10)
    failures = h.of(ConnectionFailed)
    assert [f.permanent for f in failures] == [False, True]  # two failures, no third try
    assert "gave up after 2 attempts" in failures[-1].reason
    assert h.conn.state is State.FAILED
    with pytest.raises(LocalProtocolError, match="failed"):
        h.conn.send_audio(h.now, b"\x00\x00")


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_error_handshakes_are_permanent(status: int) -> None:
    h = Harness()
    h.conn.start(0.0)
    h.conn.connection_failed(0.1, status=status, reason="nope")
    _, events = h.collect()
    assert kinds(events) == ["ConnectionFailed", "Closed"]
    assert events[0].permanent and events[1].error == "nope"


def test_429_waits_for_retry_after_and_refuses_when_too_long() -> None:
    h = Harness()
    h.conn.start(0.0)
    h.conn.connection_failed(0.0, status=429, retry_after=7.0)
    _, events = h.collect()
    assert events[-1] == Reconnecting(attempt=2, delay=7.0, reason="HTTP 429")
    h.tick(7.0)
    h.conn.connection_failed(7.0, status=429, retry_after=3600.0)
    _, events = h.collect()
    assert events[0].permanent and "3600" in events[0].reason


def test_concurrency_limit_close_backs_off_at_least_two_seconds() -> None:
    h = Harness()
    h.open()
    h.conn.connection_closed(0.0, code=1008, reason="too many sessions")
    _, events = h.collect()
    assert events[-1].delay == 2.0


def test_connect_timeout_counts_as_a_failed_attempt() -> None:
    h = Harness(connect_timeout=3.0)
    h.conn.start(0.0)
    h.collect()
    assert h.conn.next_deadline() == 3.0
    commands, events = h.tick(3.0)
    assert commands == [CloseConnection(code=1000, reason="connect timed out")]
    assert kinds(events) == ["ConnectionFailed", "Reconnecting"]


def test_region_error_is_permanent_and_not_retried() -> None:
    h = Harness()
    h.open()
    h.send(SECOND)
    events = h.message(
        {"type": "error", "error_code": "LANGUAGE_NOT_ENABLED_IN_REGION", "message": "no"}
    )
    # The unconfirmed second of audio can no longer be transcribed: reported.
    assert kinds(events) == [
        "ServerError",
        "Disconnected",
        "ConnectionFailed",
        "AudioDropped",
        "Closed",
    ]
    assert events[0].permanent and events[2].permanent
    assert events[3] == AudioDropped(
        bytes=32000, start=0.0, end=1.0, reason=DropReason.SESSION_FAILED
    )
    assert "LANGUAGE_NOT_ENABLED_IN_REGION" in (events[4].error or "")
    assert h.conn.state is State.FAILED
    assert h.commands[-1] == CloseConnection(code=1000, reason="permanent server error")
    assert not any(isinstance(c, Connect) for c in h.commands[1:])


def test_other_server_errors_are_events_and_the_session_goes_on() -> None:
    h = Harness()
    h.open()
    events = h.message({"status": "error", "error": {"message": "hiccup", "code": "E1"}})
    assert events == [ServerError(message="hiccup", code="E1", permanent=False)]
    assert h.conn.state is State.OPEN


def test_malformed_binary_and_unknown_frames_become_events() -> None:
    h = Harness()
    h.open()
    h.conn.receive_message(0.0, b"\x00\x01")
    h.conn.receive_message(0.0, "{not json")
    h.conn.receive_message(0.0, json.dumps({"type": "metadata", "x": 1}))
    _, events = h.collect()
    assert kinds(events) == ["MalformedMessage", "MalformedMessage", "UnhandledMessage"]
    assert isinstance(events[2], UnhandledMessage) and events[2].message_type == "metadata"
    assert isinstance(events[1], MalformedMessage) and "not JSON" in events[1].error


# -- settings -------------------------------------------------------------------


def test_settings_change_mid_turn_finishes_the_turn_first() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.update_settings(1.0, language="hi")
    commands, _ = h.collect()
    assert texts(commands) == ['{"type":"finalize"}']
    assert h.conn.state is State.DRAINING
    assert h.at(1.0).send(SECOND) == []  # held for the new connection
    events = h.message(final("pending words", from_finalize=True))
    assert events[0].text == "pending words" and events[0].finalized
    assert kinds(events) == ["Transcript", "Disconnected"]
    assert h.commands[-2] == CloseConnection(code=1000, reason="settings changed")
    connect = h.commands[-1]
    assert isinstance(connect, Connect) and "language=hi" in connect.url
    commands, events = h.at(1.1).open()
    assert kinds(events) == ["Connected", "SettingsApplied"]
    assert events[1] == SettingsApplied(settings=h.conn.settings, changed=("language",))
    assert audio_sent(commands) == SECOND


def test_invalid_settings_raise_before_anything_is_sent() -> None:
    h = Harness()
    h.open()
    with pytest.raises(ConfigurationError, match="eou_timeout_ms"):
        h.conn.update_settings(0.0, eou_timeout_ms=5)
    with pytest.raises(ConfigurationError, match="speed"):
        h.conn.update_settings(0.0, speed=2)
    assert h.collect() == ([], [])
    india = Harness(region="india")
    with pytest.raises(ConfigurationError, match="served only by the us host"):
        india.conn.update_settings(0.0, language="ja")
    assert india.conn.settings.language == "en"


def test_settings_change_while_connecting_restarts_the_attempt() -> None:
    h = Harness()
    h.conn.start(0.0)
    h.collect()
    h.conn.update_settings(0.1, diarize=True)
    commands, _ = h.collect()
    assert commands[0] == CloseConnection(code=1000, reason="settings changed")
    assert isinstance(commands[1], Connect) and "diarize=true" in commands[1].url


def test_settings_before_start_apply_at_once() -> None:
    h = Harness()
    h.conn.update_settings(0.0, numerals="always")
    _, events = h.collect()
    assert isinstance(events[0], SettingsApplied) and events[0].changed == ("numerals",)
    h.conn.update_settings(0.0, numerals="true")  # the same wire value: no change
    assert h.collect() == ([], [])


# -- closing ----------------------------------------------------------------------


def test_close_while_disconnected_reconnects_to_deliver_the_last_words() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.connection_closed(1.0, code=1006)
    h.conn.close(1.0)
    h.collect()
    h.tick(1.5)
    commands, events = h.at(1.5).open()
    assert audio_sent(commands) == SECOND
    assert texts(commands) == ['{"type":"close_stream"}']
    events = h.message(final("last words", is_last=True))
    assert kinds(events) == ["Transcript", "Disconnected", "Closed"]
    assert events[-1].error is None


def test_close_with_nothing_owed_while_down_ends_at_once() -> None:
    h = Harness()
    h.open()
    h.conn.connection_closed(1.0, code=1006)
    h.collect()
    h.conn.close(1.0)
    _, events = h.collect()
    assert kinds(events) == ["Closed"]


def test_close_timeout_reports_unconfirmed_audio() -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0)
    h.open()
    h.send(SECOND)
    h.conn.close(1.0)
    h.collect()
    commands, events = h.tick(3.0)
    assert commands == [CloseConnection(code=1000, reason="close timed out")]
    assert kinds(events) == ["Disconnected", "AudioDropped", "Closed"]
    assert events[1] == AudioDropped(
        bytes=32000, start=0.0, end=1.0, reason=DropReason.CLOSE_TIMEOUT
    )
    assert events[2].error == "close timed out before the server confirmed all audio"
    assert events[2].is_last_missing
    assert h.conn.state is State.CLOSED


@pytest.mark.parametrize(
    "confirming",
    [
        pytest.param(final("one", from_finalize=True), id="by-the-finalize-answer"),
        pytest.param(
            final("one", from_finalize=False, words=[word("one", 0.1, 1.0)]), id="by-word-times"
        ),
    ],
)
def test_close_timeout_after_every_tick_was_confirmed_is_a_clean_close(
    confirming: dict[str, object],
) -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0)
    h.open()
    h.send(SECOND)
    h.conn.speech_stopped(0.5)
    h.collect()
    assert kinds(h.at(0.6).message(confirming)) == ["Transcript"]
    h.conn.close(1.0)
    commands, events = h.collect()
    assert texts(commands) == ['{"type":"close_stream"}']
    commands, events = h.tick(3.0)  # is_last never comes
    assert commands == [CloseConnection(code=1000, reason="close timed out")]
    # A finalize the server never answered gets its one answer here.
    answered = confirming["from_finalize"] is True
    assert kinds(events) == (
        ["Disconnected", "Closed"] if answered else ["Disconnected", "FinalizeTimedOut", "Closed"]
    )
    closed = events[-1]
    assert (closed.error, closed.is_last_missing) == (None, True)
    assert closed.summary.dropped_bytes == 0
    assert h.conn.state is State.CLOSED


def test_is_last_is_not_missing_when_it_came() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.close(1.0)
    h.collect()
    events = h.at(1.2).message(final("all", is_last=True))
    assert kinds(events) == ["Transcript", "Disconnected", "Closed"]
    assert (events[-1].error, events[-1].is_last_missing) == (None, False)


def test_close_timeout_while_reconnecting_names_the_last_failure() -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0)
    h.open()
    h.send(SECOND)
    h.conn.connection_closed(0.5, code=1006)
    h.conn.close(0.6)
    h.collect()
    h.tick(1.0)
    h.conn.connection_failed(1.1, status=503, reason="HTTP 503: busy")
    h.collect()
    _, events = h.tick(2.6)
    assert kinds(events) == ["AudioDropped", "Closed"]
    assert events[0].reason is DropReason.CLOSE_TIMEOUT
    assert events[1].error == (
        "close timed out before the server confirmed all audio "
        "(while reconnecting after: HTTP 503: busy)"
    )
    assert not events[1].is_last_missing  # close_stream went out on no socket
    assert h.conn.state is State.CLOSED


def test_close_timeout_before_any_connection_opened_is_a_failure_to_connect() -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0)
    h.conn.start(0.0)
    h.send(SECOND)
    h.conn.speech_stopped(0.1)
    h.conn.connection_failed(0.2, reason="OSError: connection refused")
    h.collect()
    h.tick(0.5)
    h.conn.connection_failed(0.6, reason="OSError: connection refused")
    h.conn.close(0.7)
    h.collect()
    commands, events = h.tick(2.7)
    assert commands == []  # no attempt was in flight
    assert kinds(events) == ["FinalizeTimedOut", "AudioDropped", "Closed"]
    assert events[1] == AudioDropped(
        bytes=32000, start=0.0, end=1.0, reason=DropReason.SESSION_FAILED
    )
    closed = events[-1]
    assert closed.error == (
        "could not reach the service after 2 failed attempts: OSError: connection refused"
    )
    assert (closed.summary.connections, closed.is_last_missing) == (0, False)
    assert h.conn.state is State.FAILED


def test_close_timeout_during_the_first_attempt_abandons_it() -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0, connect_timeout=10.0)
    h.conn.start(0.0)
    h.send(SECOND)
    h.conn.close(0.5)
    h.collect()
    commands, events = h.tick(2.5)
    assert commands == [CloseConnection(code=1000, reason="close timed out")]
    assert kinds(events) == ["AudioDropped", "Closed"]
    assert events[-1].error == (
        "could not reach the service: no connection opened within close_timeout"
    )
    assert h.conn.state is State.FAILED


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a second close() while reconnecting restarts close_timeout, "
    "though close() is documented as idempotent (PROTOCOL §6 rule 8)",
)
def test_a_second_close_while_reconnecting_keeps_the_first_deadline() -> None:
    h = Harness(max_chunk_delay=0, close_timeout=2.0, connect_timeout=10.0)
    h.conn.start(0.0)
    h.send(SECOND)
    h.conn.close(0.5)
    h.conn.close(1.5)
    h.collect()
    assert h.conn.next_deadline() == 2.5
    _, events = h.tick(2.5)
    assert kinds(events) == ["AudioDropped", "Closed"]
    assert h.conn.state is State.FAILED


def test_server_closing_during_close_with_everything_confirmed_is_the_end() -> None:
    h = Harness()
    h.open()
    h.conn.close(0.0)
    h.collect()
    h.conn.connection_closed(0.5, code=1000)
    _, events = h.collect()
    assert kinds(events) == ["Disconnected", "Closed"]
    assert (events[-1].error, events[-1].is_last_missing) == (None, True)


# -- finals the server repeats -------------------------------------------------------


def test_a_repeated_final_is_reported_not_delivered() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    said = final("one two", words=[word("one", 0.1, 0.5), word("two", 0.5, 1.0)])
    assert kinds(h.at(0.5).message(said)) == ["Transcript"]
    events = h.message(said)
    assert kinds(events) == ["MalformedMessage"]
    assert events[0].error == "a final repeating words already transcribed (0.10-1.00 s)"
    assert events[0].data.startswith('{"type": "transcription", "transcript": "one two"')
    assert h.conn.summary().finals == 1
    # Interims repeat by nature; they are not checked.
    interim = {**said, "is_final": False}
    assert kinds(h.message(interim) + h.message(interim)) == ["Transcript", "Transcript"]


def test_a_repeat_is_shown_without_the_key() -> None:
    """The repeated frame is shown in the MalformedMessage, so it is redacted
    like any server text (PROTOCOL §6 rule 12), even in what was said."""
    h = Harness(max_chunk_delay=0)
    key = h.conn.config.api_key
    h.open()
    h.send(SECOND)
    said = final(f"my key is {key}", words=[word("key", 0.1, 0.5)])
    h.at(0.5).message(said)
    (event,) = h.message(said)
    assert isinstance(event, MalformedMessage)
    assert key[:8] not in event.data and "<redacted>" in event.data


def test_a_repeat_answers_no_finalize_and_confirms_nothing() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.speech_stopped(0.2)
    h.collect()
    automatic = final("one", from_finalize=False, words=[word("one", 0.1, 0.4)])
    assert kinds(h.at(0.3).message(automatic)) == ["Transcript"]
    repeat = {**automatic, "from_finalize": True}
    assert kinds(h.message(repeat)) == ["MalformedMessage"]
    assert h.conn.pending_finalizes == 1
    events = h.message(final("", from_finalize=True))  # the real answer: empty
    assert kinds(events) == ["Transcript"] and events[0].turn == 1
    # Empty answers carry no times: never repeats.
    h.send(SECOND)
    h.conn.speech_stopped(0.4)
    h.collect()
    assert kinds(h.at(0.5).message(final("", from_finalize=True))) == ["Transcript"]


def test_a_repeat_with_is_last_still_ends_the_close() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    said = final("one", words=[word("one", 0.1, 1.0)])
    h.at(0.5).message(said)
    h.conn.close(1.0)
    h.collect()
    events = h.at(1.1).message({**said, "is_last": True})
    assert kinds(events) == ["MalformedMessage", "Disconnected", "Closed"]
    assert (events[-1].error, events[-1].is_last_missing) == (None, False)
    assert h.conn.summary().dropped_bytes == 0


def test_the_same_times_on_a_new_connection_are_new_audio() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.at(0.5).message(final("one", words=[word("one", 0.0, 0.5)]))
    h.conn.connection_closed(0.6, code=1006)
    h.collect()
    h.tick(1.0)
    h.at(1.1).open()  # replays the second half second
    events = h.message(final("two", words=[word("two", 0.0, 0.5)]))
    assert kinds(events) == ["Transcript"]
    assert (events[0].start, events[0].end) == (0.5, 1.0)


def test_misuse_raises_local_protocol_errors() -> None:
    h = Harness()
    with pytest.raises(LocalProtocolError):
        h.conn.connection_opened(0.0)
    h.conn.start(1.0)
    with pytest.raises(LocalProtocolError):
        h.conn.start(1.0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        h.conn.handle_timer(0.5)
    with pytest.raises(LocalProtocolError, match="backwards"):
        h.conn.send_audio(0.5, b"\x00\x00")
    with pytest.raises(TypeError):
        h.conn.send_audio(1.0, "text")  # type: ignore[arg-type]
    h.conn.connection_opened(1.0)
    with pytest.raises(LocalProtocolError):
        h.conn.connection_failed(1.0, status=500)
    h.conn.close(1.0)
    h.conn.close(1.0)  # idempotent
    for call in (h.conn.speech_started, h.conn.speech_stopped, h.conn.finalize):
        with pytest.raises(LocalProtocolError, match="after close"):
            call(1.0)
    with pytest.raises(LocalProtocolError, match="after close"):
        h.conn.send_audio(1.0, b"\x00\x00")


def test_outputs_that_are_never_drained_are_refused() -> None:
    h = Harness(max_pending_outputs=10, max_chunk_delay=0)
    h.conn.start(0.0)
    h.conn.connection_opened(0.0)
    with pytest.raises(LocalProtocolError, match="not draining"):
        for _ in range(20):
            h.conn.send_audio(0.0, b"\x00\x00")


def test_stale_transport_reports_are_ignored() -> None:
    h = Harness()
    h.conn.start(0.0)
    h.conn.connection_failed(0.0, status=503)
    h.collect()
    h.conn.connection_failed(0.1, status=503)  # about the attempt already failed
    h.conn.connection_closed(0.1, code=1006)
    h.conn.receive_message(0.1, "{}")
    assert h.collect() == ([], [])


def test_closed_summary_counts_everything() -> None:
    h = Harness(max_chunk_delay=0)
    h.open()
    h.send(SECOND)
    h.conn.connection_closed(1.0, code=1006)
    h.tick(2.0)
    h.at(2.0).open()
    h.conn.speech_stopped(2.0)
    h.message(final("a", from_finalize=True))
    h.conn.close(2.5)
    h.at(2.5).message(final("", is_last=True))
    (closed,) = h.of(Closed)
    summary = closed.summary
    assert (summary.connections, summary.reconnects, summary.finals, summary.finalized_turns) == (
        2,
        1,
        2,
        1,
    )
    assert summary.audio_seconds_received == 1.0 and summary.audio_seconds_sent == 1.0
    assert len(h.of(Connected)) == len(h.of(Disconnected)) == 2
    assert h.of(Transcript)[-1].is_last


def test_close_before_start_reports_the_audio_it_discards() -> None:
    h = Harness(max_chunk_delay=0)
    h.send(SECOND)
    h.conn.finalize(0.0)
    h.conn.close(0.5)
    _, events = h.collect()
    assert kinds(events) == ["FinalizeTimedOut", "AudioDropped", "Closed"]
    assert events[1] == AudioDropped(bytes=32000, start=0.0, end=1.0, reason=DropReason.NOT_STARTED)
    assert h.commands == []


def test_repeated_short_connections_give_up_after_max_attempts() -> None:
    h = Harness(reconnect=ReconnectPolicy(max_attempts=3, stable_after=5.0))
    for _ in range(3):
        h.open()
        h.conn.connection_closed(h.now + 0.1, code=1011, reason="boom")
        h.collect()
        if h.conn.state is State.BACKOFF:
            h.tick(h.now + 20)
    assert h.conn.state is State.FAILED
    failure = h.of(ConnectionFailed)[-1]
    assert failure.permanent and "gave up after 3 attempts" in failure.reason
    assert len(h.of(Connected)) == len(h.of(Disconnected)) == 3


def test_a_stable_connection_resets_the_attempt_count() -> None:
    h = Harness(reconnect=ReconnectPolicy(max_attempts=2, stable_after=5.0))
    for _ in range(5):
        h.open()
        h.conn.connection_closed(h.now + 6.0, code=1011)  # each lived long enough
        h.collect()
        h.tick(h.now + 6.5)
    assert h.conn.state is State.CONNECTING
    assert not [f for f in h.of(ConnectionFailed) if f.permanent]


def test_keepalive_marks_are_bounded() -> None:
    h = Harness()
    h.open()
    for step in range(1, 4200):
        h.tick(step * 5.0)
    assert h.conn.summary().keepalives == 4199
    assert h.conn._timeline.marks <= 4096
    # Times after the newest keepalive still map exactly.
    h.at(21000.0).send(SECOND)
    (transcript,) = h.message(final("late", words=[word("late", 4199 * 0.1 + 0.5, 4199 * 0.1 + 0.6)]))
    assert transcript.words[0].start == pytest.approx(0.5)


def test_a_silent_server_is_probed_then_replaced_and_the_audio_replayed() -> None:
    """PROTOCOL §6 rule 11, with audio flowing and no finalize at all."""
    h = Harness(answer_pings=False, max_chunk_delay=0, ping_interval=2.0, ping_timeout=1.0)
    h.open()
    for step in range(1, 150):  # three seconds of 20 ms chunks; the server says nothing
        h.at(step * 0.02).send(b"\x02\x00" * 320)
        deadline = h.conn.next_deadline()
        if deadline is not None and deadline <= h.now:
            h.tick(h.now)
    assert h.probes == [2.0]
    assert h.conn.state is State.OPEN  # not yet: the probe has until 3.0
    commands, events = h.tick(3.0)
    assert commands == [CloseConnection(code=1011, reason="server stopped answering")]
    assert kinds(events) == ["Disconnected", "Reconnecting"]
    assert "not even to a ping" in events[1].reason
    h.tick(3.25)
    commands, _ = h.open()
    assert audio_sent(commands) == b"\x02\x00" * 320 * 149  # nothing was confirmed


def test_a_probe_answered_keeps_the_connection() -> None:
    h = Harness(ping_interval=2.0, ping_timeout=1.0)
    h.open()
    h.at(0.5).send(b"\x02\x00" * 320)
    for now in (2.0, 4.0, 6.0):
        h.tick(now)
    assert h.probes == [2.0, 4.0, 6.0]
    assert h.conn.state is State.OPEN
    assert h.of(Disconnected) == []


def test_a_close_code_given_as_an_enum_is_reported_as_an_int() -> None:
    class Code(enum.IntEnum):  # as WebSocket libraries hand them over
        GOING_AWAY = 1001

    h = Harness()
    h.open()
    h.conn.connection_closed(0.5, code=Code.GOING_AWAY, reason="bye")
    h.collect()
    (gone,) = h.of(Disconnected)
    assert gone.code == 1001 and type(gone.code) is int
