"""Server messages: every vector in spec/messages/ parses as documented, and the parser's edges."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ErrorMessage,
    RemoteProtocolError,
    SpeechEndedMessage,
    SpeechStartedMessage,
    TranscriptionMessage,
    UnknownMessage,
    Utterance,
    Word,
    parse_server_message,
)
from pulse_core.conformance import DEFAULT_SPEC, check_message, load, message_frame

MESSAGES = DEFAULT_SPEC / "messages"

VECTORS = load(MESSAGES)
VECTORS_BY_NAME = dict(VECTORS)
SCHEMA = json.loads((MESSAGES / "schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
KNOWN_TYPES = {
    "unknown_message",
    "transcription_message",
    "speech_started_message",
    "speech_ended_message",
    "error_message",
}
MESSAGE_CLASSES = (
    TranscriptionMessage,
    SpeechStartedMessage,
    SpeechEndedMessage,
    ErrorMessage,
    UnknownMessage,
)


# -- the vectors -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "vector"), VECTORS, ids=[name for name, _ in VECTORS])
def test_vector_parses(name: str, vector: dict[str, Any]) -> None:
    problems = check_message(vector)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "vector"), VECTORS, ids=[name for name, _ in VECTORS])
def test_vector_follows_schema(name: str, vector: dict[str, Any]) -> None:
    VALIDATOR.validate(vector)
    assert vector["name"] == name


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_at_least_forty_vectors_cover_every_kind_of_result() -> None:
    assert len(VECTORS) >= 40
    results = {
        vector["expect"]["type"] if "expect" in vector else vector["error"] for _, vector in VECTORS
    }
    assert results >= KNOWN_TYPES | {"RemoteProtocolError"}, sorted(map(str, results))
    frames = {vector.get("frame", "object") for _, vector in VECTORS}
    assert frames == {"object", "text", "bytes"}
    assert any("max_size" in vector for _, vector in VECTORS)


def test_checker_reports_a_wrong_expectation() -> None:
    # The replay itself must be able to fail.
    vector = dict(VECTORS_BY_NAME["published-pulse-pci-redaction-final"])
    broken = json.loads(json.dumps(vector))
    broken["expect"]["words"][3]["speaker"] = "0"
    assert check_message(broken)
    broken = json.loads(json.dumps(vector))
    broken["expect"]["words"] = broken["expect"]["words"][:-1]
    assert check_message(broken)
    assert check_message({**vector, "expect": {"type": "some_new_type"}})
    assert check_message({**VECTORS_BY_NAME["malformed-nan"], "error_mentions": "no such text"})
    rejected = VECTORS_BY_NAME["malformed-json-array"]
    assert check_message(
        {key: value for key, value in rejected.items() if key != "error"} | {"expect": {}}
    )


# -- wrong field types -------------------------------------------------------------------

_T = {"type": "transcription", "transcript": "hi", "is_final": True}

FIELD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("text", {"text": 3}, "text"),
    ("is_final", {**_T, "is_final": "true"}, "is_final"),
    ("is_last", {**_T, "is_last": 0}, "is_last"),
    ("from_finalize", {**_T, "from_finalize": "false"}, "from_finalize"),
    ("session_id", {**_T, "session_id": 12}, "session_id"),
    ("status", {**_T, "status": True}, "status"),
    ("language", {**_T, "language": ["en"]}, "language"),
    ("languages", {**_T, "languages": "en"}, "languages"),
    ("languages-item", {**_T, "languages": ["en", 1]}, "languages"),
    ("words", {**_T, "words": "hi"}, "words"),
    ("words-item", {**_T, "words": [None]}, "words"),
    ("word-word", {**_T, "words": [{"word": None, "start": 0}]}, "word"),
    ("word-start", {**_T, "words": [{"word": "hi", "start": "0"}]}, "start"),
    ("word-end", {**_T, "words": [{"word": "hi", "end": False}]}, "end"),
    ("word-confidence", {**_T, "words": [{"word": "hi", "confidence": "high"}]}, "confidence"),
    ("word-speaker", {**_T, "words": [{"word": "hi", "speaker": True}]}, "speaker"),
    ("word-speaker-float", {**_T, "words": [{"word": "hi", "speaker": 0.5}]}, "speaker"),
    (
        "word-speaker-confidence",
        {**_T, "words": [{"word": "hi", "speaker_confidence": []}]},
        "speaker_confidence",
    ),
    ("utterances", {**_T, "utterances": {"text": "hi"}}, "utterances"),
    ("utterance-text", {**_T, "utterances": [{"text": 5}]}, "text"),
    ("utterance-start", {**_T, "utterances": [{"text": "hi", "start": "0"}]}, "start"),
    ("utterance-end", {**_T, "utterances": [{"text": "hi", "end": {}}]}, "end"),
    ("utterance-speaker", {**_T, "utterances": [{"text": "hi", "speaker": False}]}, "speaker"),
    ("redacted_entities", {**_T, "redacted_entities": "[NAME_1]"}, "redacted_entities"),
    ("redacted_entities-item", {**_T, "redacted_entities": [None, 1]}, "redacted_entities"),
    ("speaker", {**_T, "speaker": False}, "speaker"),
    ("speaker_confidence", {**_T, "speaker_confidence": "0.9"}, "speaker_confidence"),
    ("full_transcript", {**_T, "full_transcript": 1}, "full_transcript"),
    ("type", {"type": ["transcription"], "transcript": "hi"}, "type"),
    ("speech_started-timestamp", {"type": "speech_started", "timestamp": "1"}, "timestamp"),
    ("speech_ended-timestamp", {"type": "speech_ended", "timestamp": None}, "timestamp"),
    (
        "speech_started-session_id",
        {"type": "speech_started", "timestamp": 1, "session_id": 1},
        "session_id",
    ),
    (
        "speech_ended-session_id",
        {"type": "speech_ended", "timestamp": 1, "session_id": []},
        "session_id",
    ),
]

_UNNAMED = "the parser's message does not name the field"
UNNAMED_FIELD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("error-message", {"type": "error", "message": ["a"]}, "message"),
    ("error-error_code", {"type": "error", "message": "m", "error_code": {}}, "error_code"),
    ("error-code", {"status": "error", "message": "m", "code": [1]}, "code"),
    ("error-nested-message", {"status": "error", "error": {"message": True}}, "message"),
    ("error-nested-code", {"status": "error", "error": {"message": "m", "code": {}}}, "code"),
]


def names(message: str, field: str) -> bool:
    return re.search(rf"(?<![A-Za-z_]){re.escape(field)}(?![A-Za-z_])", message) is not None


@pytest.mark.parametrize(
    ("payload", "field"),
    [pytest.param(payload, field, id=case) for case, payload, field in FIELD_CASES],
)
def test_wrong_field_type_is_rejected_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_server_message(json.dumps(payload))
    assert names(str(info.value), field), str(info.value)


@pytest.mark.parametrize(
    ("payload", "field"),
    [pytest.param(payload, field, id=case) for case, payload, field in UNNAMED_FIELD_CASES],
)
def test_wrong_field_type_of_an_error_is_rejected_naming_the_field(
    payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_server_message(json.dumps(payload))
    assert names(str(info.value), field), str(info.value)


@pytest.mark.parametrize("key", ["transcript", "transcription"])
def test_wrong_text_alias_is_blamed_by_its_own_name(key: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_server_message(json.dumps({"type": "transcription", key: 7}))
    assert not names(str(info.value), "text"), str(info.value)


def test_null_error_code_is_absent_not_wrong() -> None:
    message = parse_server_message(
        json.dumps({"status": "error", "error": {"message": "m", "code": None}})
    )
    assert isinstance(message, ErrorMessage)
    assert message.code is None


def test_wrong_types_are_never_coerced() -> None:
    for payload in (
        {**_T, "is_final": 1},
        {**_T, "is_final": "false"},
        {**_T, "words": [{"word": "hi", "start": "1.5"}]},
        {**_T, "words": [{"word": "hi", "speaker": False}]},
        {**_T, "session_id": 5},
        {"type": "speech_started", "timestamp": False},
    ):
        with pytest.raises(RemoteProtocolError):
            parse_server_message(json.dumps(payload))


def test_timestamp_too_large_for_a_float_is_a_protocol_error() -> None:
    frame = '{"type": "speech_started", "timestamp": 1' + "0" * 400 + "}"
    with pytest.raises(RemoteProtocolError):
        parse_server_message(frame)


def test_word_time_too_large_for_a_float_is_a_protocol_error() -> None:
    frame = '{"transcript": "a", "words": [{"word": "a", "start": 1' + "0" * 400 + "}]}"
    with pytest.raises(RemoteProtocolError, match="start"):
        parse_server_message(frame)


# -- only RemoteProtocolError escapes --------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_MESSAGE_KEYS = [
    "type", "transcript", "transcription", "text", "is_final", "is_last", "from_finalize",
    "session_id", "status", "language", "languages", "words", "utterances", "redacted_entities",
    "speaker", "speaker_confidence", "full_transcript", "timestamp", "message", "error",
    "error_code", "code", "extra", "raw",
]  # fmt: skip
_ITEM_KEYS = [
    "word", "text", "transcript", "start", "end", "confidence", "speaker", "speaker_confidence",
    "message", "code",
]  # fmt: skip
# Message-shaped objects reach the field checks; shallow values keep generation fast.
_shallow = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=4), _scalars, max_size=2)
)
_items = st.dictionaries(st.sampled_from(_ITEM_KEYS), _shallow, max_size=6)
_field_values = _shallow | _items | st.lists(_items | _scalars, max_size=3)
_types = st.sampled_from(["transcription", "speech_started", "speech_ended", "error", "other"])
message_like = st.builds(
    lambda kind, body: body if kind is None else {**body, "type": kind},
    st.none() | _types | _scalars,
    st.dictionaries(st.sampled_from(_MESSAGE_KEYS), _field_values, max_size=8),
)


def as_bytes(frame: str | bytes) -> bytes:
    return frame.encode() if isinstance(frame, str) else frame


VALID_FRAMES = [as_bytes(message_frame(vector)) for _, vector in VECTORS if "expect" in vector]


def parse_or_reject(frame: str | bytes) -> None:
    try:
        message = parse_server_message(frame)
    except RemoteProtocolError:
        return
    assert isinstance(message, MESSAGE_CLASSES)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, message_like))
def test_any_json_value_parses_or_is_a_protocol_error(value: Any) -> None:
    text = json.dumps(value)
    parse_or_reject(text)
    parse_or_reject(text.encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_frame_parses_or_is_a_protocol_error(frame: bytes | str) -> None:
    parse_or_reject(frame)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_corrupted_valid_frames_parse_or_are_a_protocol_error(
    frame: bytes, data: st.DataObject
) -> None:
    corrupted = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(corrupted) - 1))
        corrupted[position] = data.draw(st.integers(0, 255))
    parse_or_reject(bytes(corrupted))
    parse_or_reject(bytes(corrupted).decode("utf-8", "replace"))


def test_deep_nesting_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_server_message("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RemoteProtocolError):
        parse_server_message('{"transcript": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


# -- the size limit ---------------------------------------------------------------------------


def transcription_of_size(size: int) -> str:
    frame = '{"transcript": "' + "a" * (size - 18) + '"}'
    assert len(frame) == size
    return frame


def test_default_size_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 1 << 20
    at_limit = transcription_of_size(DEFAULT_MAX_MESSAGE_SIZE)
    assert isinstance(parse_server_message(at_limit), TranscriptionMessage)
    assert isinstance(parse_server_message(at_limit.encode()), TranscriptionMessage)
    over = transcription_of_size(DEFAULT_MAX_MESSAGE_SIZE + 1)
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_server_message(over)
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_server_message(over.encode())


@pytest.mark.parametrize("kind", [str, bytes, bytearray, memoryview])
def test_size_limit_applies_to_every_frame_type(kind: type) -> None:
    frame = transcription_of_size(100)
    data = frame if kind is str else kind(frame.encode())
    message = parse_server_message(data, max_size=100)
    assert isinstance(message, TranscriptionMessage)
    assert message.text == "a" * 82
    with pytest.raises(RemoteProtocolError, match="99-byte limit"):
        parse_server_message(data, max_size=99)


def test_size_is_checked_before_decoding() -> None:
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_server_message(b"\xff" * 50, max_size=10)
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_server_message("not json at all", max_size=3)


def test_size_limit_counts_utf8_bytes_of_a_text_frame() -> None:
    frame = '{"transcript": "' + "\u20ac" * 30 + '"}'  # 48 characters, 108 bytes
    assert len(frame.encode()) > 100 > len(frame)
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse_server_message(frame, max_size=100)


# -- frozen messages, raw kept -------------------------------------------------------------------

SAMPLES = {
    "transcription": VECTORS_BY_NAME["published-pulse-pci-redaction-final"],
    "speech_started": VECTORS_BY_NAME["published-speech-started"],
    "speech_ended": VECTORS_BY_NAME["published-speech-ended"],
    "error": VECTORS_BY_NAME["error-nested-object"],
    "unknown": VECTORS_BY_NAME["unknown-type"],
}


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_messages_are_frozen(kind: str) -> None:
    message = parse_server_message(message_frame(SAMPLES[kind]))
    for field in attrs.fields(type(message)):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(message, field.name, None)


def test_words_and_utterances_are_frozen() -> None:
    message = parse_server_message(message_frame(SAMPLES["transcription"]))
    assert isinstance(message, TranscriptionMessage)
    assert isinstance(message.words, tuple)
    assert isinstance(message.utterances, tuple)
    word, utterance = message.words[0], message.utterances[0]
    assert isinstance(word, Word)
    assert isinstance(utterance, Utterance)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        word.word = "changed"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        utterance.text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_raw_is_the_whole_payload_and_read_only(kind: str) -> None:
    vector = SAMPLES[kind]
    message = parse_server_message(message_frame(vector))
    assert dict(message.raw) == vector["input"]
    with pytest.raises(TypeError):
        message.raw["type"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        del message.raw["type"]  # type: ignore[attr-defined]
    assert dict(message.raw) == vector["input"]


@pytest.mark.parametrize(
    ("name", "vector"),
    [(name, vector) for name, vector in VECTORS if "expect" in vector and "frame" not in vector],
    ids=[name for name, vector in VECTORS if "expect" in vector and "frame" not in vector],
)
def test_every_accepted_payload_is_kept_whole_in_raw(name: str, vector: dict[str, Any]) -> None:
    assert dict(parse_server_message(message_frame(vector)).raw) == vector["input"]


def test_extra_is_read_only_and_holds_only_unknown_fields() -> None:
    payload = {**_T, "transcription": "hi", "text": "hi", "latency_ms": 5, "beta": {"a": 1}}
    message = parse_server_message(json.dumps(payload))
    assert isinstance(message, TranscriptionMessage)
    assert dict(message.extra) == {"latency_ms": 5, "beta": {"a": 1}}
    with pytest.raises(TypeError):
        message.extra["latency_ms"] = 6  # type: ignore[index]


def test_unknown_fields_named_extra_or_raw_are_kept_in_extra() -> None:
    message = parse_server_message(json.dumps({**_T, "extra": 1, "raw": 2}))
    assert isinstance(message, TranscriptionMessage)
    assert dict(message.extra) == {"extra": 1, "raw": 2}


def test_raw_and_extra_do_not_affect_equality() -> None:
    first = parse_server_message(json.dumps({**_T, "unknown": 1}))
    second = parse_server_message(json.dumps({**_T, "unknown": 2}))
    assert first == second
