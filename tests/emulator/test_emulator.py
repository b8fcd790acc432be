"""The emulator (pulse_trio.emulator) against spec/PROTOCOL.md, sections 1-4.

Handshake decisions and the message flow are tested without sockets, through
``check_request`` and ``ServerSession``; what only the server does (HTTP
statuses on the wire, regions, the concurrency limit, close codes and fault
injection) is tested over loopback with a plain trio-websocket client.
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from pulse_core import Encoding
from pulse_trio.emulator import (
    Accept,
    Close,
    Emulator,
    Reject,
    ServerParams,
    ServerSession,
    TokenEngine,
    _protocol,
    check_request,
)
from pulse_trio.emulator.token_audio import encode, ogg_opus_stream, opus_packets, silence

LIVE = "/waves/v1/stt/live"
LEGACY = "/waves/v1/pulse/get_text"
AUTH = [("Authorization", "Bearer k")]
HEADERS = [(b"Authorization", b"Bearer k")]
FINALIZE = json.dumps({"type": "finalize"})
CLOSE_STREAM = json.dumps({"type": "close_stream"})
PULSE_PRO = "Pulse Pro has no streaming transport. Use POST /waves/v1/stt/?model=pulse-pro instead."
Output = dict[str, Any] | Close


# -- helpers: no sockets -------------------------------------------------------------


def decide(
    query: str = "model=pulse&language=en&language=en",
    *,
    path: str = LIVE,
    headers: Sequence[tuple[str, str]] = AUTH,
    api_keys: frozenset[str] | None = None,
) -> Accept | Reject:
    return check_request(f"{path}?{query}" if query else path, headers, api_keys=api_keys)


def params(query: str = "model=pulse&language=en&language=en", *, path: str = LIVE) -> ServerParams:
    decision = decide(query, path=path)
    assert isinstance(decision, Accept), decision
    return decision.params


def session(query: str = "", *, send_from_finalize: bool = True) -> ServerSession:
    accepted = params("model=pulse&language=en&language=en" + (f"&{query}" if query else ""))
    stream = TokenEngine().stream(accepted.encoding, accepted.sample_rate)
    return ServerSession(
        accepted, stream, session_id="sid-1", send_from_finalize=send_from_finalize
    )


def transcription(
    text: str, *, final: bool = False, last: bool = False, **extra: Any
) -> dict[str, Any]:
    """A transcription message as the emulator sends it by default."""
    message: dict[str, Any] = {
        "type": "transcription",
        "status": "success",
        "session_id": "sid-1",
        "transcript": text,
        "transcription": text,
        "is_final": final,
        "is_last": last,
    }
    if final:
        message |= {"language": "en", "languages": ["en"]}
    return message | extra


def texts(out: Sequence[Output]) -> list[tuple[str, bool]]:
    return [
        (item["transcript"], item["is_final"])
        for item in out
        if isinstance(item, dict) and item.get("type") == "transcription"
    ]


def finals(out: Sequence[Output]) -> list[dict[str, Any]]:
    return [item for item in out if isinstance(item, dict) and item.get("is_final")]


def of_type(out: Sequence[Output], kind: str) -> list[dict[str, Any]]:
    return [item for item in out if isinstance(item, dict) and item.get("type") == kind]


# -- handshake: path and key ----------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/waves/v1/stt", "/waves/v1/stt/livex", "/waves/v2/stt/live", "/live"]
)
def test_unknown_path_is_404(path: str) -> None:
    decision = decide(path=path)
    assert isinstance(decision, Reject) and decision.status == 404


def test_the_path_is_checked_before_the_key() -> None:
    decision = decide(path="/nowhere", headers=[])
    assert isinstance(decision, Reject) and decision.status == 404


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", "")],
        [("Authorization", "Bearer")],
        [("Authorization", "Bearer ")],
        [("Authorization", "Basic k")],
        [("Authorization", "Token k")],
        [("X-Api-Key", "k")],
    ],
    ids=["none", "empty", "bearer-only", "bearer-blank", "basic", "token", "other-header"],
)
@pytest.mark.parametrize("api_keys", [None, frozenset({"k"})], ids=["any-key", "keys"])
def test_missing_or_other_scheme_is_401(
    headers: list[tuple[str, str]], api_keys: frozenset[str] | None
) -> None:
    decision = decide(headers=headers, api_keys=api_keys)
    assert isinstance(decision, Reject) and decision.status == 401


def test_unknown_key_is_401_when_keys_are_set() -> None:
    keys = frozenset({"sk_one", "sk_two"})
    rejected = decide(headers=[("Authorization", "Bearer sk_three")], api_keys=keys)
    assert isinstance(rejected, Reject) and rejected.status == 401
    for key in keys:
        assert isinstance(
            decide(headers=[("Authorization", f"Bearer {key}")], api_keys=keys), Accept
        )


@pytest.mark.parametrize("key", ["k", "sk_anything", "x" * 200])
def test_any_key_is_accepted_without_a_key_list(key: str) -> None:
    assert isinstance(decide(headers=[("authorization", f"Bearer {key}")]), Accept)


def test_the_key_is_checked_before_the_parameters() -> None:
    decision = decide("model=pulse-pro&language=xx", headers=[])
    assert isinstance(decision, Reject) and decision.status == 401


# -- handshake: parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "model is required"),
        ("language=en", "model is required"),
        ("model=whisper", "unknown model"),
        ("model=pulse-pro", PULSE_PRO),
        ("model=pulse&language=en&language=xx", "unsupported language"),
        ("model=pulse&language=en&language=", "unsupported language"),
        ("model=pulse&language=en&encoding=mp3", "unsupported encoding"),
        ("model=pulse&language=en&encoding=LINEAR16", "unsupported encoding"),
        ("model=pulse&language=en&sample_rate=11025", "unsupported sample_rate"),
        ("model=pulse&language=en&sample_rate=0", "sample_rate"),
        ("model=pulse&language=en&sample_rate=fast", "sample_rate must be an integer"),
        ("model=pulse&language=en&word_timestamps=yes", "word_timestamps must be true or false"),
        ("model=pulse&language=en&diarize=1", "diarize must be true or false"),
        ("model=pulse&language=en&endpointing=True", "endpointing must be true or false"),
        ("model=pulse&language=en&vad_events=", "vad_events must be true or false"),
        ("model=pulse&language=en&redact_pii=1", "redact_pii must be true, false or a list"),
        (
            "model=pulse&language=en&eou_timeout_ms=99",
            "eou_timeout_ms must be between 100 and 10000",
        ),
        (
            "model=pulse&language=en&eou_timeout_ms=10001",
            "eou_timeout_ms must be between 100 and 10000",
        ),
        ("model=pulse&language=en&eou_timeout_ms=soon", "eou_timeout_ms must be an integer"),
        ("model=pulse&language=en&max_words=0", "max_words must be at least 1"),
        ("model=pulse&language=en&max_words=-3", "max_words must be at least 1"),
        ("model=pulse&language=en&external_session_id=", "external_session_id"),
        ("model=pulse&language=en&external_session_id=has%20space", "external_session_id"),
        ("model=pulse&language=en&external_session_id=a/b", "external_session_id"),
        ("model=pulse&language=en&external_session_id=" + "a" * 129, "external_session_id"),
        ("model=pulse&language=en&numerals=sometimes", "numerals"),
    ],
)
def test_bad_parameters_are_400(query: str, reason: str) -> None:
    decision = decide(query)
    assert isinstance(decision, Reject)
    assert decision.status == 400
    assert reason in decision.reason


@settings(max_examples=50, deadline=None)
@given(
    name=st.sampled_from(["word_timestamps", "diarize", "endpointing", "vad_events", "format"]),
    value=st.text(st.characters(codec="utf-8"), max_size=6).filter(
        lambda v: v not in ("true", "false")
    ),
)
def test_any_boolean_other_than_true_or_false_is_400(name: str, value: str) -> None:
    decision = decide(f"model=pulse&language=en&{name}={quote(value, safe='')}")
    assert isinstance(decision, Reject) and decision.status == 400
    assert decision.reason == f"{name} must be true or false"


@settings(max_examples=50, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_.\-]{1,128}", fullmatch=True))
def test_any_documented_external_session_id_is_accepted(value: str) -> None:
    assert isinstance(decide(f"model=pulse&language=en&external_session_id={quote(value)}"), Accept)


def test_pulse_pro_gets_the_documented_message() -> None:
    assert decide("model=pulse-pro") == Reject(400, PULSE_PRO)


def test_missing_language_on_the_live_path_is_400() -> None:
    decision = decide("model=pulse")
    assert isinstance(decision, Reject) and decision.status == 400
    assert decision.reason == "language is required"


def test_defaults_and_parsed_values() -> None:
    defaults = params("model=pulse&language=en")
    assert (defaults.encoding, defaults.sample_rate) == (Encoding.LINEAR16, 16000)
    assert defaults.endpointing is True and defaults.eou_timeout_ms == 800
    assert defaults.max_words is None and defaults.vad_events is False
    assert defaults.word_timestamps is defaults.diarize is defaults.redact_pii is False
    parsed = params(
        "model=pulse&language=en&language=hi&encoding=mulaw&sample_rate=8000&word_timestamps=true"
        "&diarize=true&endpointing=false&eou_timeout_ms=100&max_words=1&vad_events=true"
        "&keywords=Word:2,Phrase%20with%20spaces,Other:1.5&external_session_id=call_42.A-b"
        "&numerals=always&itn_normalize=false&punctuate=true"
    )
    assert parsed.language == "hi" and parsed.encoding is Encoding.MULAW
    assert parsed.sample_rate == 8000 and parsed.eou_timeout_ms == 100
    assert parsed.word_timestamps and parsed.diarize and parsed.vad_events
    assert parsed.endpointing is False and parsed.max_words == 1
    assert parsed.keywords == ("Word", "Phrase with spaces", "Other")


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("encoding", [e.value for e in Encoding])
def test_every_documented_encoding_and_rate_is_accepted(encoding: str, rate: int) -> None:
    accepted = params(f"model=pulse&language=en&encoding={encoding}&sample_rate={rate}")
    assert (accepted.encoding, accepted.sample_rate) == (Encoding(encoding), rate)


@pytest.mark.parametrize(
    "query",
    [
        "eou_timeout_ms=100",
        "eou_timeout_ms=10000",
        "max_words=1",
        "external_session_id=" + "Az09_.-" * 18 + "ab",  # 128 characters
        "keywords=",
        "numerals=none",
        "vad=true",
        "finalize_on_words=false&format=true&capitalize=false",
    ],
)
def test_boundary_values_are_accepted(query: str) -> None:
    assert isinstance(decide(f"model=pulse&language=en&{query}"), Accept)


def test_redaction_and_numerals_in_the_undocumented_client_forms() -> None:
    """PROTOCOL.md section 9: entity lists for redaction, words/digits for numerals."""
    assert params("model=pulse&language=en&redact_pii=phone_number,email").redact_pii is True
    assert params("model=pulse&language=en&redact_pci=credit_card").redact_pci is True
    assert params("model=pulse&language=en&redact_pii=false").redact_pii is False
    for value in ("words", "digits", "auto", "always"):
        assert isinstance(decide(f"model=pulse&language=en&numerals={value}"), Accept)
    rejected = decide("model=pulse&language=en&redact_pii=Phone-Number")
    assert isinstance(rejected, Reject) and rejected.status == 400


def test_vad_is_an_alias_of_vad_events() -> None:
    assert params("model=pulse&language=en&vad=true").vad_events is True
    assert params("model=pulse&language=en&vad=true&vad_events=false").vad_events is False


def test_the_legacy_path_works_without_model() -> None:
    accepted = params("", path=LEGACY)
    assert accepted.path == LEGACY
    assert params("language=hi&encoding=alaw&sample_rate=8000", path=LEGACY).language == "hi"
    # the same parameter rules apply there
    rejected = decide("language=xx", path=LEGACY)
    assert isinstance(rejected, Reject) and rejected.status == 400


# -- ServerSession: transcripts --------------------------------------------------------


def test_an_interim_after_each_word() -> None:
    s = session()
    assert s.audio(encode(["alpha"], trail=0.05)) == [transcription("alpha")]
    assert s.audio(encode(["bravo"], trail=0.05)) == [transcription("alpha bravo")]
    assert s.audio(silence(0.1)) == []
    assert s.audio_bytes == len(encode(["alpha"], trail=0.05)) * 2 + len(silence(0.1))


def test_a_chunk_with_several_words_gives_an_interim_for_each() -> None:
    s = session()
    out = s.audio(encode("one two three", trail=0.05))
    assert texts(out) == [("one", False), ("one two", False), ("one two three", False)]


def test_each_finalize_gets_exactly_one_final_from_finalize() -> None:
    s = session()
    s.audio(encode("hello world", trail=0.05))
    assert s.control(FINALIZE) == [transcription("hello world", final=True, from_finalize=True)]
    # nothing pending: still one final, empty
    assert s.control(FINALIZE) == [transcription("", final=True, from_finalize=True)]
    # the next segment starts afresh
    assert s.audio(encode(["again"], trail=0.05)) == [transcription("again")]


def test_finalize_closes_a_word_in_progress() -> None:
    s = session()
    assert s.audio(encode(["trailing"])) == []  # no silence after it yet
    out = s.control(FINALIZE)
    assert out == [
        transcription("trailing"),
        transcription("trailing", final=True, from_finalize=True),
    ]


def test_send_from_finalize_false_omits_the_field() -> None:
    s = session("eou_timeout_ms=200", send_from_finalize=False)
    out = s.audio(encode(["auto"], trail=0.3))
    out += s.audio(encode(["asked"], trail=0.05)) + s.control(FINALIZE)
    out += s.control(CLOSE_STREAM)
    assert [f["transcript"] for f in finals(out)] == ["auto", "asked", ""]
    assert all("from_finalize" not in f for f in finals(out))


def test_endpointing_final_after_eou_timeout_of_silence() -> None:
    s = session("eou_timeout_ms=300")
    assert s.audio(encode(["hello"])) == []
    assert s.audio(silence(0.29)) == [transcription("hello")]  # 290 ms quiet: not yet
    assert s.audio(silence(0.02)) == [transcription("hello", final=True, from_finalize=False)]
    assert s.audio(silence(2.0)) == []  # one final per segment
    assert s.control(FINALIZE) == [transcription("", final=True, from_finalize=True)]


def test_endpointing_uses_800_ms_by_default() -> None:
    s = session()
    out = s.audio(encode(["hello"], trail=0.79))
    assert finals(out) == []
    out = s.audio(silence(0.02))
    assert [f["transcript"] for f in finals(out)] == ["hello"]


def test_exactly_eou_timeout_of_silence_is_enough() -> None:
    s = session("eou_timeout_ms=800")
    out = s.audio(encode(["hi"], trail=0.8))  # "hi" lasts 40 ms, then 800 ms of silence
    assert [f["transcript"] for f in finals(out)] == ["hi"]


def test_no_endpointing_final_when_endpointing_is_false() -> None:
    s = session("endpointing=false&eou_timeout_ms=100")
    out = s.audio(encode("no final yet", trail=5.0))
    assert texts(out) == [("no", False), ("no final", False), ("no final yet", False)]
    assert s.control(FINALIZE) == [transcription("no final yet", final=True, from_finalize=True)]


def test_max_words_forces_finals() -> None:
    s = session("max_words=2&endpointing=false")
    out = s.audio(encode("a1 b c d e", trail=0.05))
    assert [(m["transcript"], m["is_final"], m.get("from_finalize")) for m in out] == [
        ("a1", False, None),
        ("a1 b", False, None),
        ("a1 b", True, False),
        ("c", False, None),
        ("c d", False, None),
        ("c d", True, False),
        ("e", False, None),
    ]
    assert s.control(FINALIZE) == [transcription("e", final=True, from_finalize=True)]


def test_close_stream_sends_is_last_then_closes_1000() -> None:
    s = session()
    s.audio(encode(["good"], trail=0.05))
    s.audio(encode(["bye"]))  # in progress when the stream closes
    out = s.control(CLOSE_STREAM)
    assert of_type(out, "transcription") == [
        transcription("good bye"),
        transcription("good bye", final=True, last=True, from_finalize=False),
    ]
    assert isinstance(out[-1], Close) and out[-1].code == 1000
    assert s.closed
    assert s.audio(encode(["late"], trail=0.1)) == []
    assert s.control(FINALIZE) == [] and s.control(CLOSE_STREAM) == []


def test_close_stream_with_nothing_pending() -> None:
    out = session().control(CLOSE_STREAM)
    assert out[0] == transcription("", final=True, last=True, from_finalize=False)
    assert len(out) == 2 and isinstance(out[1], Close) and out[1].code == 1000


def test_nothing_comes_between_is_last_and_the_close() -> None:
    s = session("vad_events=true")
    s.audio(encode(["bye"]))
    out = s.control(CLOSE_STREAM)
    assert isinstance(out[-1], Close)
    assert isinstance(out[-2], dict) and out[-2].get("is_last") is True


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [
        ("linear16", 16000),
        ("linear32", 48000),
        ("alaw", 8000),
        ("mulaw", 8000),
        ("linear16", 24000),
        ("opus", 48000),
        ("ogg_opus", 16000),
    ],
)
def test_every_encoding_is_transcribed(encoding: str, rate: int) -> None:
    s = session(f"encoding={encoding}&sample_rate={rate}&word_timestamps=true")
    words = ["naïve", "日本", "x1"]
    out: list[Output] = []
    if encoding == "opus":
        for packet in opus_packets(words, lead=0.2, trail=0.05):
            out += s.audio(packet)
    else:
        audio = (
            ogg_opus_stream(words, lead=0.2, trail=0.05)
            if encoding == "ogg_opus"
            else encode(words, encoding=encoding, sample_rate=rate, lead=0.2, trail=0.05)
        )
        for offset in range(0, len(audio), 777):
            out += s.audio(audio[offset : offset + 777])
    (final,) = finals(out + s.control(FINALIZE))
    assert final["transcript"] == "naïve 日本 x1"
    assert [(w["word"], w["start"], w["end"]) for w in final["words"]] == [
        ("naïve", 0.2, 0.32),
        ("日本", 0.42, 0.54),
        ("x1", 0.64, 0.68),
    ]


# -- ServerSession: voice activity, timestamps, speakers, full transcript, redaction -----


@pytest.mark.parametrize("flag", ["vad_events=true", "vad=true"])
def test_vad_events_with_timestamps(flag: str) -> None:
    s = session(f"{flag}&endpointing=false")
    out = s.audio(encode(["hi", "there"], lead=0.5, trail=0.1))
    assert out[0] == {"type": "speech_started", "session_id": "sid-1", "timestamp": 0.5}
    assert texts(out[1:]) == [("hi", False), ("hi there", False)]
    assert of_type(out, "speech_ended") == []  # 100 ms of quiet is not yet the end
    out = s.audio(silence(0.15))
    # "there" ends at 0.5 + 0.04 + 0.1 + 0.1 = 0.74 s
    assert out == [{"type": "speech_ended", "session_id": "sid-1", "timestamp": 0.74}]
    assert s.audio(silence(1.0)) == []  # once
    out = s.audio(encode(["again"], trail=0.05))  # starts at 0.84 + 0.15 + 1.0 s
    assert out[0] == {"type": "speech_started", "session_id": "sid-1", "timestamp": 1.99}


def test_no_vad_events_unless_asked() -> None:
    s = session()
    out = s.audio(encode(["hi"], lead=0.3, trail=0.5)) + s.control(CLOSE_STREAM)
    assert of_type(out, "speech_started") == of_type(out, "speech_ended") == []


def test_no_vad_events_unless_asked_even_at_close_stream() -> None:
    s = session()
    s.audio(encode(["bye"], trail=0.05))
    out = s.control(CLOSE_STREAM)
    assert of_type(out, "speech_ended") == []
    assert len(out) == 2  # the is_last final, then the close


def test_word_timestamps_are_in_connection_audio_time() -> None:
    s = session("word_timestamps=true&endpointing=false")
    out = s.audio(encode(["alpha", "b"], lead=0.25, trail=0.05))
    assert out[-1]["words"] == [
        {"word": "alpha", "start": 0.25, "end": 0.35, "confidence": 1.0},
        {"word": "b", "start": 0.45, "end": 0.47, "confidence": 1.0},
    ]
    (first,) = s.control(FINALIZE)
    assert [w["word"] for w in first["words"]] == ["alpha", "b"]
    # the next segment's times run on from the connection's start: 0.52 s fed so far
    s.audio(encode(["ccc"], lead=0.48, trail=0.05))
    (second,) = s.control(FINALIZE)
    assert second["words"] == [{"word": "ccc", "start": 1.0, "end": 1.06, "confidence": 1.0}]


def test_diarize_gives_speaker_0() -> None:
    s = session("diarize=true&word_timestamps=true&sentence_timestamps=true")
    s.audio(encode("who spoke", trail=0.05))
    (final,) = s.control(FINALIZE)
    assert final["speaker"] == 0 and final["speaker_confidence"] == 1.0
    assert [(w["speaker"], w["speaker_confidence"]) for w in final["words"]] == [(0, 1.0)] * 2
    assert [u["speaker"] for u in final["utterances"]] == [0]


def test_no_speaker_without_diarize() -> None:
    s = session("word_timestamps=true")
    s.audio(encode(["solo"], trail=0.05))
    (final,) = s.control(FINALIZE)
    assert "speaker" not in final and "speaker" not in final["words"][0]


def test_sentence_timestamps_give_utterances_on_finals() -> None:
    s = session("sentence_timestamps=true")
    out = s.audio(encode("one sentence", lead=0.1, trail=0.05))
    assert all("utterances" not in m for m in out)  # interims have none
    (final,) = s.control(FINALIZE)
    assert final["utterances"] == [{"text": "one sentence", "start": 0.1, "end": 0.42}]
    (empty,) = s.control(FINALIZE)
    assert "utterances" not in empty


def test_full_transcript_is_cumulative() -> None:
    s = session("full_transcript=true")
    assert s.audio(encode(["alpha"], trail=0.05))[0]["full_transcript"] == "alpha"
    assert s.control(FINALIZE)[0]["full_transcript"] == "alpha"
    assert s.audio(encode(["bravo"], trail=0.05))[0]["full_transcript"] == "alpha bravo"
    assert s.control(FINALIZE)[0]["full_transcript"] == "alpha bravo"
    assert s.control(FINALIZE)[0]["full_transcript"] == "alpha bravo"  # empty adds nothing
    s.audio(encode(["charlie"], trail=0.05))
    (last,) = finals(s.control(CLOSE_STREAM))
    assert last["full_transcript"] == "alpha bravo charlie" and last["transcript"] == "charlie"


def test_full_transcript_keeps_its_latest_words_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_protocol, "FULL_TRANSCRIPT_CHARS", 12)
    s = session("full_transcript=true")
    for word in ("alpha", "bravo", "charlie"):
        s.audio(encode([word], trail=0.05))
        (final,) = s.control(FINALIZE)
    # "alpha bravo charlie" is 19 characters: the earliest word goes, whole.
    assert final["full_transcript"] == "charlie"
    s.audio(encode(["delta"], trail=0.05))
    (final,) = s.control(FINALIZE)
    assert final["full_transcript"] == "delta"  # "charlie delta" is 13


@pytest.mark.parametrize(
    ("flag", "label"),
    [("redact_pii", "PHONENUMBER"), ("redact_pci", "ACCOUNTNUMBER")],
)
def test_redaction_replaces_words_with_digits(flag: str, label: str) -> None:
    s = session(f"{flag}=true&word_timestamps=true")
    s.audio(encode("call 5551234 now x9", trail=0.05))
    (final,) = s.control(FINALIZE)
    first, second = f"[{label}_1]", f"[{label}_2]"
    assert final["transcript"] == f"call {first} now {second}"
    assert final["redacted_entities"] == [first, second]
    assert [w["word"] for w in final["words"]] == ["call", first, "now", second]
    s.audio(encode("4111111111111111", trail=0.05))
    (again,) = s.control(FINALIZE)
    assert again["redacted_entities"] == [f"[{label}_3]"]  # numbering runs on
    s.audio(encode("nothing secret", trail=0.05))
    (plain,) = s.control(FINALIZE)
    assert plain["transcript"] == "nothing secret" and "redacted_entities" not in plain


def test_no_redaction_unless_asked() -> None:
    s = session()
    s.audio(encode("call 5551234", trail=0.05))
    (final,) = s.control(FINALIZE)
    assert final["transcript"] == "call 5551234" and "redacted_entities" not in final


def test_finals_carry_the_language() -> None:
    s = session("language=hi")
    s.audio(encode(["namaste"], trail=0.05))
    (final,) = s.control(FINALIZE)
    assert final["language"] == "hi" and final["languages"] == ["hi"]


@pytest.mark.parametrize(
    "text", ['{"type":"flush"}', '{"type":"keepalive"}', "not json", "[]", '"finalize"', "{}"]
)
def test_unknown_control_message_is_an_error_of_shape_1(text: str) -> None:
    s = session()
    (error,) = s.control(text)
    assert error["type"] == "error" and error["status"] == "error"
    assert error["message"].startswith("unknown control message")
    assert set(error) == {"type", "status", "message"}
    assert not s.closed
    s.audio(encode(["fine"], trail=0.05))
    assert [f["transcript"] for f in s.control(FINALIZE)] == ["fine"]


# a turn is words (each with some silence after it) and finalizes, then close_stream
actions = st.lists(
    st.one_of(
        st.tuples(
            st.text("abcdefghij", min_size=1, max_size=4),
            st.sampled_from([0.01, 0.05, 0.3, 1.2]),
        ),
        st.just("finalize"),
    ),
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(
    actions=actions,
    options=st.sampled_from(
        ["", "endpointing=false", "eou_timeout_ms=200", "max_words=2", "max_words=1"]
    ),
)
def test_every_word_is_final_exactly_once(actions: list[Any], options: str) -> None:
    s = session(options)
    out: list[Output] = []
    spoken: list[str] = []
    finalizes = 0
    for action in actions:
        if action == "finalize":
            answer = s.control(FINALIZE)
            assert len([m for m in finals(answer) if m["from_finalize"]]) == 1
            out += answer
            finalizes += 1
        else:
            word, trail = action
            spoken.append(word)
            out += s.audio(encode([word], trail=trail))
    out += s.control(CLOSE_STREAM)
    done = finals(out)
    assert " ".join(m["transcript"] for m in done).split() == spoken
    assert sum(m["from_finalize"] for m in done) == finalizes
    assert [m["is_last"] for m in done] == [False] * (len(done) - 1) + [True]
    assert isinstance(out[-1], Close) and not any(isinstance(m, Close) for m in out[:-1])
    assert all(m["session_id"] == "sid-1" for m in out if isinstance(m, dict))


# -- over loopback sockets -----------------------------------------------------------


@asynccontextmanager
async def serving(emulator: Emulator) -> AsyncIterator[Emulator]:
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        yield emulator
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def dial(
    emulator: Emulator,
    query: str = "model=pulse&language=en",
    *,
    path: str = LIVE,
    headers: list[tuple[bytes, bytes]] = HEADERS,
) -> AsyncIterator[WebSocketConnection]:
    opened: WebSocketConnection | None = None
    try:
        async with open_websocket_url(
            f"{emulator.url()}{path}?{query}",
            extra_headers=headers,
            connect_timeout=3,
            disconnect_timeout=3,
        ) as ws:
            opened = ws
            yield ws
    finally:
        # trio-websocket (0.12) leaves the client's TCP socket open when the server
        # closes first; close it here rather than leave it to the garbage collector.
        if opened is not None:
            with trio.CancelScope(shield=True):
                await opened._stream.aclose()


async def until_closed(ws: WebSocketConnection) -> tuple[list[Any], CloseReason]:
    """Every message until the socket closes (JSON decoded when it is JSON), and why."""
    received: list[Any] = []
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            break
        try:
            received.append(json.loads(message))
        except ValueError:
            received.append(message)
    assert reason is not None
    return received, reason


async def send_all(ws: WebSocketConnection, chunks: Sequence[bytes | str]) -> None:
    """Send what the server still takes; a cut connection is what some tests want."""
    try:
        for chunk in chunks:
            await ws.send_message(chunk)
    except ConnectionClosed:
        pass


@attrs.frozen
class Refusal:
    status_code: int
    headers: dict[bytes, bytes]
    body: bytes


async def rejected(
    emulator: Emulator, query: str = "model=pulse&language=en", **kw: Any
) -> Refusal:
    """The HTTP refusal of a handshake that must be refused."""
    try:
        async with dial(emulator, query, **kw):
            pytest.fail("the handshake was accepted")
    except ConnectionRejected as exc:
        refusal = Refusal(exc.status_code, dict(exc.headers), exc.body or b"")
    # trio-websocket (0.12) does not close a rejected client's socket either; with the
    # exception gone it is garbage, so collect it now, quietly, not in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return refusal


def chunks_of(audio: bytes, size: int) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def model_answers(query: str, chunks: Sequence[bytes]) -> list[Any]:
    """What ServerSession answers to ``chunks``, as the client would see it."""
    s = session(query)
    out = [m for chunk in chunks for m in s.audio(chunk)]
    return [{**m, "session_id": "emulator-1"} for m in out if isinstance(m, dict)]


async def test_a_whole_session_over_the_socket() -> None:
    with trio.fail_after(5):
        async with serving(Emulator(api_keys={"k"})) as emulator:
            async with dial(emulator, "model=pulse&language=en&language=en") as ws:
                await ws.send_message(encode(["hello"], trail=0.05))
                interim = json.loads(await ws.get_message())
                assert (interim["transcript"], interim["is_final"]) == ("hello", False)
                assert interim["session_id"] == "emulator-1"
                await ws.send_message(encode(["world"]))
                await ws.send_message(FINALIZE)
                messages = [json.loads(await ws.get_message()) for _ in range(2)]
                assert [(m["transcript"], m["is_final"]) for m in messages] == [
                    ("hello world", False),
                    ("hello world", True),
                ]
                assert messages[1]["from_finalize"] is True
                await ws.send_message(CLOSE_STREAM)
                received, reason = await until_closed(ws)
            transcripts = [m for m in received if m["type"] == "transcription"]
            assert [(m["transcript"], m["is_last"]) for m in transcripts] == [("", True)]
            assert reason.code == 1000
            assert (emulator.handshakes, emulator.connections) == (1, 1)


@pytest.mark.parametrize(
    ("path", "query", "headers", "status", "body"),
    [
        ("/waves/v1/stt/nope", "model=pulse&language=en", HEADERS, 404, b"no such endpoint"),
        (LIVE, "model=pulse&language=en", [], 401, b"invalid or missing API key"),
        (LIVE, "model=pulse&language=en", [(b"Authorization", b"Basic k")], 401, b"API key"),
        (LIVE, "model=pulse&language=en", [(b"Authorization", b"Bearer other")], 401, b"API key"),
        (LIVE, "language=en", HEADERS, 400, b"model is required"),
        (LIVE, "model=pulse-pro", HEADERS, 400, PULSE_PRO.encode()),
        (LIVE, "model=pulse&language=en&sample_rate=12345", HEADERS, 400, b"sample_rate"),
        (
            LIVE,
            "model=pulse&language=en&diarize=TRUE",
            HEADERS,
            400,
            b"diarize must be true or false",
        ),
    ],
)
async def test_refusals_on_the_wire(
    path: str, query: str, headers: list[tuple[bytes, bytes]], status: int, body: bytes
) -> None:
    with trio.fail_after(5):
        async with serving(Emulator(api_keys={"k"})) as emulator:
            refusal = await rejected(emulator, query, path=path, headers=headers)
            assert refusal.status_code == status
            assert body in refusal.body
            assert emulator.connections == 0 and emulator.handshakes == 1


async def test_any_key_is_accepted_on_the_wire_without_a_key_list() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            for key in (b"Bearer k", b"Bearer sk_whatever_0123"):
                async with dial(emulator, headers=[(b"Authorization", key)]) as ws:
                    await ws.send_message(FINALIZE)
                    assert json.loads(await ws.get_message())["is_final"] is True
            assert emulator.connections == 2


async def test_the_legacy_path_over_the_socket() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            async with dial(emulator, "language=en", path=LEGACY) as ws:
                await ws.send_message(encode(["legacy"], trail=0.05))
                await ws.send_message(FINALIZE)
                received = [json.loads(await ws.get_message()) for _ in range(2)]
            assert [(m["transcript"], m["is_final"]) for m in received] == [
                ("legacy", False),
                ("legacy", True),
            ]


async def test_us_host_refuses_south_indian_with_an_error_then_closes() -> None:
    with trio.fail_after(5):
        async with (
            serving(Emulator(region="us")) as emulator,
            dial(emulator, "model=pulse&language=en&language=ta") as ws,
        ):
            received, reason = await until_closed(ws)
        assert len(received) == 1
        assert received[0]["type"] == "error"
        assert received[0]["error_code"] == "LANGUAGE_NOT_ENABLED_IN_REGION"
        assert received[0]["message"]
        assert reason.code != 1000  # not a normal end of stream


async def test_india_host_closes_east_asian_without_a_transcript() -> None:
    with trio.fail_after(5):
        async with (
            serving(Emulator(region="india")) as emulator,
            dial(emulator, "model=pulse&language=en&language=ja") as ws,
        ):
            await send_all(ws, [encode(["konnichiwa"], trail=0.1), FINALIZE])
            received, _ = await until_closed(ws)
        assert received == []
        assert emulator.connections == 1  # the handshake succeeded; then the close


async def test_pulse_2_closes_for_a_language_other_than_english() -> None:
    """PROTOCOL.md section 9: the emulator accepts pulse-2, English only."""
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            async with dial(emulator, "model=pulse-2&language=hi") as ws:
                await send_all(ws, [encode(["namaste"], trail=0.1), FINALIZE])
                received, _ = await until_closed(ws)
            assert received == []
            async with dial(emulator, "model=pulse-2&language=en") as ws:
                await ws.send_message(FINALIZE)
                assert json.loads(await ws.get_message())["from_finalize"] is True


@pytest.mark.parametrize(("region", "language"), [("us", "ja"), ("india", "ta"), (None, "ko")])
async def test_a_region_serves_its_own_languages(region: str | None, language: str) -> None:
    with trio.fail_after(5):
        async with (
            serving(Emulator(region=region)) as emulator,
            dial(emulator, f"model=pulse&language=en&language={language}") as ws,
        ):
            await ws.send_message(encode(["word"], trail=0.05))
            await ws.send_message(FINALIZE)
            messages = [json.loads(await ws.get_message()) for _ in range(2)]
        assert messages[1]["transcript"] == "word" and messages[1]["language"] == language


async def test_concurrency_limit_closes_the_extra_connection_with_1008() -> None:
    with trio.fail_after(5):
        async with serving(Emulator(max_sessions=1)) as emulator:
            async with dial(emulator) as first:
                await first.send_message(FINALIZE)
                await first.get_message()  # the first session is running
                assert emulator.active == 1
                async with dial(emulator) as second:
                    received, reason = await until_closed(second)
                assert [m["type"] for m in received] == ["error"]
                assert "concurrency" in received[0]["message"]
                assert reason.code == 1008
                # the first one is untouched
                await first.send_message(encode(["still"], trail=0.05))
                assert json.loads(await first.get_message())["transcript"] == "still"
            while emulator.active:
                await trio.sleep(0.01)
            async with dial(emulator) as third:
                await third.send_message(FINALIZE)
                assert json.loads(await third.get_message())["is_final"] is True


async def test_refuse_with_retry_after() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.refuse(1, status=429, retry_after=3)
            refusal = await rejected(emulator)
            assert refusal.status_code == 429
            assert refusal.headers[b"retry-after"] == b"3"
            async with dial(emulator) as ws:  # used once
                await ws.send_message(FINALIZE)
                assert json.loads(await ws.get_message())["from_finalize"] is True
            assert emulator.handshakes == 2


async def test_refuse_counts_and_defaults_to_503_without_retry_after() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.refuse(2)
            for _ in range(2):
                refusal = await rejected(emulator)
                assert refusal.status_code == 503
                assert b"retry-after" not in refusal.headers
            async with dial(emulator):
                pass
            assert (emulator.handshakes, emulator.connections) == (3, 1)


@pytest.mark.parametrize("when", ["after_bytes", "at_seconds"])
async def test_drop_cuts_the_connection_without_a_close_frame(when: str) -> None:
    chunks = chunks_of(encode("one two three four five six", trail=0.2), 3200)  # 0.1 s each
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            if when == "after_bytes":
                emulator.faults.drop(after_bytes=3 * 3200)
            else:
                emulator.faults.drop(at_seconds=0.3)
            async with dial(emulator) as ws:
                await send_all(ws, [*chunks, FINALIZE])
                received, reason = await until_closed(ws)
            assert reason.code == 1006
            # what the first two chunks earned arrived; nothing after the cut
            expected = model_answers("", chunks[:2])
            assert expected and received == expected
            # the fault was used up: the next connection is normal
            async with dial(emulator) as ws:
                await send_all(ws, [*chunks, CLOSE_STREAM])
                received, reason = await until_closed(ws)
            assert reason.code == 1000
            assert finals(received)[-1]["transcript"] == "one two three four five six"


@pytest.mark.parametrize("code", [1011, 4000, 1001])
async def test_close_fault_closes_with_the_code(code: int) -> None:
    chunks = chunks_of(encode("alpha bravo charlie", trail=0.1), 1600)
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.close(code, after_bytes=1600 * 4)
            async with dial(emulator) as ws:
                await send_all(ws, chunks)
                received, reason = await until_closed(ws)
            assert reason.code == code
            assert received == model_answers("", chunks[:3])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (1, {"type": "error", "status": "error", "message": "injected error"}),
        (2, {"type": "error", "error_code": "E42", "message": "injected error"}),
        (3, {"status": "error", "error": {"message": "injected error", "code": "E42"}}),
    ],
)
async def test_error_fault_in_each_documented_shape(shape: int, expected: dict[str, Any]) -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.error(shape, code="E42")
            async with dial(emulator) as ws:
                await ws.send_message(encode(["word"], trail=0.05))
                first, second = [json.loads(await ws.get_message()) for _ in range(2)]
                assert first == expected
                assert (second["transcript"], second["is_final"]) == ("word", False)
                await ws.send_message(FINALIZE)  # only once
                assert json.loads(await ws.get_message())["is_final"] is True


def test_error_fault_shape_must_be_documented() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3"):
        Emulator().faults.error(4)


@pytest.mark.parametrize("text", [None, "[1, 2", "\u00ff\u00fe not a message"])
async def test_malformed_fault_sends_the_text(text: str | None) -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            if text is None:
                emulator.faults.malformed(after_bytes=1)
            else:
                emulator.faults.malformed(text, at_seconds=0.0)
            async with dial(emulator) as ws:
                await ws.send_message(encode(["word"], trail=0.05))
                raw = await ws.get_message()
                assert raw == (text if text is not None else "{this is not json")
                assert json.loads(await ws.get_message())["transcript"] == "word"


async def test_stall_stops_all_answers_but_keeps_the_socket_open() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.stall(after_bytes=6400)
            async with dial(emulator) as ws:
                await ws.send_message(encode(["before"], trail=0.05))
                assert json.loads(await ws.get_message())["transcript"] == "before"
                await send_all(ws, [encode(["after"], trail=0.4), FINALIZE, CLOSE_STREAM])
                with trio.move_on_after(0.3) as quiet:
                    await ws.get_message()
                assert quiet.cancelled_caught
                assert ws.closed is None  # still open
                await ws.send_message(FINALIZE)
                with trio.move_on_after(0.1) as still_quiet:
                    await ws.get_message()
                assert still_quiet.cancelled_caught


async def test_silence_leaves_even_pings_unanswered() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.silence(after_bytes=6400)
            async with dial(emulator) as ws:
                await ws.send_message(encode(["before"], trail=0.05))
                assert json.loads(await ws.get_message())["transcript"] == "before"
                with trio.move_on_after(0.5) as answered:
                    await ws.ping(b"before the silence")
                assert not answered.cancelled_caught  # a stall would answer from here on too
                await send_all(ws, [encode(["after"], trail=0.4), FINALIZE, CLOSE_STREAM])
                with trio.move_on_after(0.3) as unanswered:
                    await ws.ping(b"into the silence")
                assert unanswered.cancelled_caught
                assert ws.closed is None  # still open
                await ws._stream.aclose()  # a close handshake would wait for nothing


async def test_faults_wait_for_their_moment() -> None:
    with trio.fail_after(5):
        async with serving(Emulator()) as emulator:
            emulator.faults.close(4002, at_seconds=10.0)
            async with dial(emulator) as ws:
                await ws.send_message(encode(["early"], trail=0.05))
                await ws.send_message(FINALIZE)
                messages = [json.loads(await ws.get_message()) for _ in range(2)]
                assert messages[1]["transcript"] == "early"
                await ws.send_message(silence(10.0))
                received, reason = await until_closed(ws)
            assert received == [] and reason.code == 4002
