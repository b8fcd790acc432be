"""Server messages: parse JSON text frames into typed, frozen values.

The service has sent several shapes over time and its published documents
disagree in places, so the parser accepts every documented form:

* transcriptions with or without ``type``, text in ``transcript``,
  ``transcription`` or (oldest) ``text``;
* ``speaker`` as an integer or a string;
* errors as ``{"type": "error", "message"}``, ``{"type": "error",
  "error_code", "message"}`` or ``{"status": "error", "error": {"message",
  "code"}}``;
* unknown fields anywhere (kept in ``extra``), unknown message types
  (``UnknownMessage``).

Anything else (not UTF-8, not JSON, not an object, a field of the wrong type,
larger than the limit) raises :class:`RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import attrs
import cattrs

from ._errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ErrorMessage",
    "ServerMessage",
    "SpeechEndedMessage",
    "SpeechStartedMessage",
    "TranscriptionMessage",
    "UnknownMessage",
    "Utterance",
    "Word",
    "parse_server_message",
]

DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class Word:
    """One recognised word. Times are seconds (connection time in messages,
    session time in events)."""

    word: str
    start: float | None = None
    end: float | None = None
    confidence: float | None = None
    speaker: int | str | None = None
    speaker_confidence: float | None = None


@attrs.frozen(kw_only=True)
class Utterance:
    """One sentence with its time span."""

    text: str
    start: float | None = None
    end: float | None = None
    speaker: int | str | None = None


@attrs.frozen(kw_only=True)
class TranscriptionMessage:
    """An interim (``is_final=False``) or final transcription of one segment."""

    text: str = ""
    is_final: bool = False
    is_last: bool = False
    #: ``True`` when this final answers a ``finalize``; ``None`` when the server
    #: did not say (older servers never do).
    from_finalize: bool | None = None
    session_id: str | None = None
    status: str | None = None
    language: str | None = None
    languages: tuple[str, ...] = ()
    words: tuple[Word, ...] = ()
    utterances: tuple[Utterance, ...] = ()
    redacted_entities: tuple[str, ...] = ()
    speaker: int | str | None = None
    speaker_confidence: float | None = None
    full_transcript: str | None = None
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SpeechStartedMessage:
    """Server-side voice activity: speech began at ``timestamp`` (connection seconds)."""

    timestamp: float
    session_id: str | None = None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SpeechEndedMessage:
    """Server-side voice activity: speech ended at ``timestamp`` (connection seconds)."""

    timestamp: float
    session_id: str | None = None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class ErrorMessage:
    """An error reported by the server, in any of its three shapes."""

    message: str
    code: str | None = None
    session_id: str | None = None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class UnknownMessage:
    """A JSON object of a type this version does not know; kept whole."""

    #: The message's ``type`` field, if it had one.
    message_type: str | None
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False)


ServerMessage: TypeAlias = (
    TranscriptionMessage | SpeechStartedMessage | SpeechEndedMessage | ErrorMessage | UnknownMessage
)


# -- structuring ---------------------------------------------------------------
# cattrs' defaults coerce (str(5) == "5", bool("false") is True); a protocol
# parser must not, so the primitive hooks only accept the JSON type itself.


class _WrongTypeError(TypeError):
    pass


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _WrongTypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _WrongTypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongTypeError(f"expected a number, got {type(value).__name__}")
    return _finite(value)


def _finite(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise _WrongTypeError("number out of range") from None
    if not math.isfinite(number):
        raise _WrongTypeError("expected a finite number")
    return number


def _speaker(value: Any, _: type) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _WrongTypeError(f"expected an integer or string speaker, got {type(value).__name__}")


def _optional(hook: Any) -> Any:
    def structure(value: Any, cls: type) -> Any:
        return None if value is None else hook(value, cls)

    return structure


def _passthrough(value: Any, _: type) -> Any:
    return value


_NUMBER = (int, float)


def _fast_word(value: Any, _: type) -> Word:
    # The hot path of a final with word timestamps: plain type checks instead of
    # one dispatched hook per field. Anything unusual falls back to the
    # detailed converter, which produces the error message.
    if type(value) is not dict:
        raise _WrongTypeError("word is not an object")
    word = value.get("word")
    start = value.get("start")
    end = value.get("end")
    confidence = value.get("confidence")
    speaker = value.get("speaker")
    speaker_confidence = value.get("speaker_confidence")
    if (
        type(word) is not str
        or (start is not None and type(start) not in _NUMBER)
        or (end is not None and type(end) not in _NUMBER)
        or (confidence is not None and type(confidence) not in _NUMBER)
        or (speaker is not None and type(speaker) not in (int, str))
        or (speaker_confidence is not None and type(speaker_confidence) not in _NUMBER)
    ):
        raise _WrongTypeError("word field of the wrong type")
    return Word(
        word=word,
        start=None if start is None else _finite(start),
        end=None if end is None else _finite(end),
        confidence=None if confidence is None else _finite(confidence),
        speaker=speaker,
        speaker_confidence=None if speaker_confidence is None else _finite(speaker_confidence),
    )


def _make_converter(detailed: bool) -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=detailed)
    for cls, hook in ((str, _strict_str), (bool, _strict_bool), (float, _strict_float)):
        converter.register_structure_hook(cls, hook)
        converter.register_structure_hook(cls | None, _optional(hook))
    converter.register_structure_hook(int | str | None, _speaker)
    converter.register_structure_hook_func(lambda cls: cls == Mapping[str, Any], _passthrough)
    if not detailed:
        converter.register_structure_hook(Word, _fast_word)
    # The generic tuple hook is slow and takes any iterable; these take lists only.
    for item_cls in (Word, Utterance, str):
        converter.register_structure_hook_func(
            _is_tuple_of(item_cls), _tuple_of(converter.get_structure_hook(item_cls), item_cls)
        )
    return converter


def _is_tuple_of(item_cls: type) -> Callable[[Any], bool]:
    expected = tuple[item_cls, ...]  # type: ignore[valid-type]

    def predicate(cls: Any) -> bool:
        return bool(cls == expected)

    return predicate


def _tuple_of(item_hook: Any, item_cls: type) -> Any:
    def structure(value: Any, _: type) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _WrongTypeError(f"expected a list, got {type(value).__name__}")
        return tuple([item_hook(item, item_cls) for item in value])

    return structure


_FAST = _make_converter(detailed=False)
_DETAILED = _make_converter(detailed=True)

_TRANSCRIPT_TEXT_KEYS: Final = ("transcript", "transcription", "text")
# Payload keys that are not "extra". Our own ``extra`` and ``raw`` attributes
# are not payload keys: a payload field of that name is extra like any other.
_TRANSCRIPTION_KEYS: Final = (
    frozenset(field.name for field in attrs.fields(TranscriptionMessage))
    | set(_TRANSCRIPT_TEXT_KEYS)
    | {"type"}
) - {"extra", "raw"}


def _structure(data: Mapping[str, Any], cls: type[Any], where: str) -> Any:
    try:
        return _FAST.structure(data, cls)
    except Exception:  # noqa: S110 - every failure is re-run below for its message
        pass
    try:
        _DETAILED.structure(data, cls)
    except Exception as exc:
        problems = (
            cattrs.transform_error(exc, path=where)
            if isinstance(exc, cattrs.BaseValidationError)
            else [f"{exc} @ {where}"]
        )
        raise RemoteProtocolError("malformed " + where + ": " + "; ".join(problems)) from None
    raise AssertionError("structuring failed once and succeeded on retry")  # pragma: no cover


def _utterances(value: Any) -> Any:
    # One document names the sentence text ``transcript`` instead of ``text``.
    if not isinstance(value, list):
        return value
    return [
        {**item, "text": item["transcript"]}
        if isinstance(item, dict) and "text" not in item and "transcript" in item
        else item
        for item in value
    ]


def _transcription(raw: dict[str, Any]) -> TranscriptionMessage:
    # JSON null means "absent" for every field (the spec marks several fields
    # nullable; treating them all alike is the tolerant reading).
    data = {key: value for key, value in raw.items() if value is not None}
    text: Any = ""
    for key in _TRANSCRIPT_TEXT_KEYS:
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise RemoteProtocolError(
                    f"malformed transcription: {key} must be a string, got {type(value).__name__}"
                )
            text = value
            break
    data["text"] = text
    if "utterances" in data:
        data["utterances"] = _utterances(data["utterances"])
    extra = {key: value for key, value in raw.items() if key not in _TRANSCRIPTION_KEYS}
    data["extra"] = MappingProxyType(extra) if extra else _EMPTY
    data["raw"] = MappingProxyType(raw)
    message: TranscriptionMessage = _structure(data, TranscriptionMessage, "transcription")
    return message


def _speech(
    raw: Mapping[str, Any], cls: type[SpeechStartedMessage | SpeechEndedMessage]
) -> SpeechStartedMessage | SpeechEndedMessage:
    timestamp = raw.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise RemoteProtocolError(f"malformed {raw['type']}: timestamp must be a number")
    try:
        timestamp = _finite(timestamp)
    except _WrongTypeError as exc:
        raise RemoteProtocolError(f"malformed {raw['type']}: timestamp: {exc}") from None
    session_id = raw.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise RemoteProtocolError(f"malformed {raw['type']}: session_id must be a string")
    return cls(timestamp=float(timestamp), session_id=session_id, raw=MappingProxyType(dict(raw)))


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # numeric error codes are still codes
    raise RemoteProtocolError(
        f"malformed error: {field} must be a string, got {type(value).__name__}"
    )


def _error(raw: Mapping[str, Any]) -> ErrorMessage:
    nested = raw.get("error")
    code = _text(raw.get("error_code"), "error_code") or _text(raw.get("code"), "code")
    message = _text(raw.get("message"), "message")
    if isinstance(nested, Mapping):
        message = message or _text(nested.get("message"), "error.message")
        code = (
            code
            or _text(nested.get("code"), "error.code")
            or _text(nested.get("error_code"), "error.error_code")
        )
    elif nested is not None:
        message = message or _text(nested, "error")
    session_id = raw.get("session_id")
    return ErrorMessage(
        message=message or "(no message)",
        code=code,
        session_id=session_id if isinstance(session_id, str) else None,
        raw=MappingProxyType(dict(raw)),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_server_message(
    data: str | bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> ServerMessage:
    """Parse one text frame from the server.

    Raises :class:`RemoteProtocolError` (and nothing else) when ``data`` is not
    a valid message.
    """
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if isinstance(data, str) and size <= max_size < size * 4:
        size = len(data.encode("utf-8", "surrogatepass"))  # a character may take 4 bytes
    if size > max_size:
        raise RemoteProtocolError(
            f"message of {size} bytes is larger than the {max_size}-byte limit"
        )
    try:
        if not isinstance(data, str):
            data = bytes(data).decode("utf-8")
        raw = _DECODER.decode(data)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"message is a JSON {type(raw).__name__}, not an object")
    kind = raw.get("type")
    if kind is not None and not isinstance(kind, str):
        raise RemoteProtocolError("message type must be a string")
    if kind == "transcription":
        return _transcription(raw)
    if kind == "speech_started":
        return _speech(raw, SpeechStartedMessage)
    if kind == "speech_ended":
        return _speech(raw, SpeechEndedMessage)
    if kind == "error" or raw.get("status") == "error" or isinstance(raw.get("error"), dict):
        return _error(raw)
    if kind is None and any(key in raw for key in (*_TRANSCRIPT_TEXT_KEYS, "is_final")):
        return _transcription(raw)
    return UnknownMessage(message_type=kind, raw=MappingProxyType(raw))
