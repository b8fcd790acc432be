"""The emulator's voice activity and end of utterance follow the audio's own time.

``speech_started``, ``speech_ended`` and the automatic final after
``eou_timeout_ms`` of silence are decided where they happen in the audio, so
the same audio gives the same messages however it is cut into frames and
however fast it comes (spec/PROTOCOL.md §4, voice activity).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_trio.emulator import Close, ServerSession, TokenEngine
from pulse_trio.emulator._vad import Quiet, Sound, VoiceActivity
from pulse_trio.emulator.token_audio import encode, ogg_opus_stream, opus_packets, silence

from .test_emulator import params

Output = dict[str, Any] | Close


def session(query: str) -> ServerSession:
    accepted = params(f"model=pulse&language=en&{query}")
    return ServerSession(
        accepted, TokenEngine().stream(accepted.encoding, accepted.sample_rate), session_id="s"
    )


def fed(query: str, audio: bytes, size: int) -> list[Output]:
    s = session(query)
    out: list[Output] = []
    for offset in range(0, len(audio), size):
        out += s.audio(audio[offset : offset + size])
    return out + s.control(json.dumps({"type": "close_stream"}))


def vad(out: list[Output]) -> list[tuple[str, float]]:
    return [
        (o["type"], o["timestamp"])
        for o in out
        if isinstance(o, dict) and o.get("type") in ("speech_started", "speech_ended")
    ]


def test_no_speech_ended_while_a_word_is_still_arriving() -> None:
    # "a" (20 ms), 0.1 s of silence, then a 0.4 s word, sent in 128 ms frames
    # (4096 bytes, what pulse sends): the word is heard from its first symbol.
    audio = encode(["a", "x" * 20], gap=0.1, trail=0.5)
    out = fed("vad_events=true&endpointing=false", audio, 4096)
    assert vad(out) == [("speech_started", 0.0), ("speech_ended", 0.52)]


def test_speech_started_comes_before_the_words_it_starts() -> None:
    out = fed("vad_events=true", encode(["hello", "there"], lead=0.3, trail=1.0), 4096)
    kinds = [o["type"] if isinstance(o, dict) else "close" for o in out]
    assert kinds[:3] == ["speech_started", "transcription", "transcription"]
    assert out[0] == {"type": "speech_started", "session_id": "s", "timestamp": 0.3}


words = st.lists(
    st.tuples(
        st.text(alphabet="abcdefghij", min_size=1, max_size=25),
        st.sampled_from([0.05, 0.1, 0.15, 0.19, 0.21, 0.3, 0.79, 0.81, 1.2]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(
    spoken=words,
    sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=4),
    query=st.sampled_from(
        [
            "vad_events=true&word_timestamps=true",
            "vad_events=true&eou_timeout_ms=200",
            "vad_events=true&endpointing=false&encoding=mulaw&sample_rate=8000",
        ]
    ),
)
def test_the_same_audio_gives_the_same_messages_however_it_is_cut(
    spoken: list[tuple[str, float]], sizes: list[int], query: str
) -> None:
    encoding = "mulaw" if "mulaw" in query else "linear16"
    rate = 8000 if encoding == "mulaw" else 16000
    audio = b"".join(
        encode([word], encoding=encoding, sample_rate=rate, trail=gap) for word, gap in spoken
    )
    whole = fed(query, audio, len(audio))
    s = session(query)
    cut: list[Output] = []
    offset = 0
    turn = 0
    while offset < len(audio):
        size = sizes[turn % len(sizes)]
        cut += s.audio(audio[offset : offset + size])
        offset += size
        turn += 1
    cut += s.control(json.dumps({"type": "close_stream"}))
    assert cut == whole


def test_compressed_audio_is_timed_like_its_packets() -> None:
    query = "vad_events=true&endpointing=false&encoding=opus&sample_rate=48000"
    s = session(query)
    out: list[Output] = []
    for packet in opus_packets(["hi", "you"], gap=0.3, lead=0.2, trail=0.3):
        out += s.audio(packet)
    assert vad(out) == [
        ("speech_started", 0.2),
        ("speech_ended", 0.24),
        ("speech_started", 0.54),
        ("speech_ended", 0.6),
    ]
    ogg = fed(
        "vad_events=true&endpointing=false&encoding=ogg_opus&sample_rate=48000",
        ogg_opus_stream(["hi", "you"], gap=0.3, lead=0.2, trail=0.3),
        500,
    )
    assert vad(ogg) == vad(out)


def test_the_detector_reports_each_silence_length_once() -> None:
    detector = VoiceActivity("linear16", 16000, silences=(0.2, 0.8))
    marks = detector.feed(encode(["ab"], lead=0.1, trail=1.0))
    assert marks == [Sound(0.1), Quiet(0.34, 0.14, 0.2), Quiet(0.94, 0.14, 0.8)]
    assert detector.feed(silence(2.0)) == []
    assert not detector.sounding and detector.last_sound_end == 0.14
    assert detector.feed(encode(["c"])) == [Sound(3.14)]
    assert detector.sounding
