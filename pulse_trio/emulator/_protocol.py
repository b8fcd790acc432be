"""The emulator's side of the protocol, without I/O.

``check_request`` decides a handshake (accept, or reject with a status and a
reason) and ``ServerSession`` turns what a client sends into what the service
would answer. The trio server in ``_server.py`` only moves bytes; the
property tests use ``ServerSession`` directly as a model of the service.

What the session needs of a recogniser is ``RecognitionEngine`` (one
``RecognitionStream`` per connection); the engines live in modules of their
own (``_token_engine.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import attrs

from pulse_core import SAMPLE_RATES, Encoding, Language, Region

from ._vad import Quiet, Sound, VoiceActivity
from .token_audio import DecodedWord

__all__ = [
    "Accept",
    "Close",
    "RecognitionEngine",
    "RecognitionStream",
    "Reject",
    "ServerParams",
    "ServerSession",
    "check_request",
]

LIVE_PATH = "/waves/v1/stt/live"
LEGACY_PATH = "/waves/v1/pulse/get_text"
_BOOLEANS = (
    "word_timestamps",
    "sentence_timestamps",
    "diarize",
    "full_transcript",
    "redact_pii",
    "redact_pci",
    "itn_normalize",
    "format",
    "punctuate",
    "capitalize",
    "endpointing",
    "finalize_on_words",
    "vad_events",
    "vad",
)
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SPEECH_ENDED_AFTER = 0.2
#: Characters of ``full_transcript`` a session keeps: past it the earliest
#: words are left out, so a long session's memory stays bounded.
FULL_TRANSCRIPT_CHARS = 64 * 1024
#: Models with a streaming worker. pulse-2 is offered by some clients; it is
#: English-only (the socket is closed for other languages).
_STREAMING_MODELS = ("pulse", "pulse-2")
# Accepted spellings of redaction: a boolean, or a list of entity kinds (on).
_ENTITY_LIST = re.compile(r"[a-z_]+(,[a-z_]+)*")


class RecognitionStream(Protocol):
    """One connection's recogniser: audio in, timed words out."""

    @property
    def seconds(self) -> float: ...

    def feed(self, data: bytes) -> list[DecodedWord]: ...

    def end_word(self) -> list[DecodedWord]: ...


class RecognitionEngine(Protocol):
    """Makes a recogniser for each connection."""

    name: str

    def stream(self, encoding: Encoding, sample_rate: int) -> RecognitionStream: ...


@attrs.frozen(kw_only=True)
class ServerParams:
    """The query parameters of an accepted connection."""

    path: str
    language: str
    encoding: Encoding
    sample_rate: int
    word_timestamps: bool = False
    sentence_timestamps: bool = False
    diarize: bool = False
    full_transcript: bool = False
    redact_pii: bool = False
    redact_pci: bool = False
    endpointing: bool = True
    eou_timeout_ms: int = 800
    max_words: int | None = None
    vad_events: bool = False
    keywords: tuple[str, ...] = ()
    #: pulse-2 with a language other than English: accepted, then closed.
    english_only_refusal: bool = False
    raw: Mapping[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class Accept:
    params: ServerParams


@attrs.frozen
class Reject:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Close:
    """Close the socket with this code (after sending what precedes it)."""

    code: int
    reason: str = ""


def _bool(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"{name} must be true or false")
    return value == "true"


_NUMERALS = ("auto", "true", "false", "always", "none", "words", "digits")


def _redaction(name: str, value: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    if _ENTITY_LIST.fullmatch(value):
        return True  # a list of entity kinds to redact
    raise ValueError(f"{name} must be true, false or a list of entity kinds")


def _int(name: str, value: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if number < low or (high is not None and number > high):
        raise ValueError(
            f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}"
        )
    return number


def check_request(
    target: str, headers: Sequence[tuple[str, str]], *, api_keys: frozenset[str] | None
) -> Accept | Reject:
    """Decide a handshake as the service does: path, key, then parameters.

    ``api_keys=None`` accepts any non-empty bearer key.
    """
    parts = urlsplit(target)
    path = parts.path.rstrip("/")
    if path not in (LIVE_PATH, LEGACY_PATH):
        return Reject(404, f"no such endpoint: {parts.path}")
    authorization = next((value for name, value in headers if name.lower() == "authorization"), "")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key or (api_keys is not None and key not in api_keys):
        return Reject(401, "invalid or missing API key")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    try:
        params = _params(path, query)
    except ValueError as exc:
        return Reject(400, str(exc))
    return Accept(params)


def _params(path: str, query: dict[str, str]) -> ServerParams:
    if path == LIVE_PATH:
        model = query.get("model")
        if model is None:
            raise ValueError("model is required")
        if model not in _STREAMING_MODELS:
            if model == "pulse-pro":
                raise ValueError(
                    "Pulse Pro has no streaming transport. Use POST /waves/v1/stt/?model=pulse-pro instead."
                )
            raise ValueError(f"unknown model {model!r}")
    if path == LIVE_PATH and "language" not in query:
        raise ValueError("language is required")
    language = query.get("language", "multi-eu")  # the older path defaults to multi-eu
    model_only_english = query.get("model") == "pulse-2" and language != "en"
    try:
        Language.coerce(language)
    except ValueError:
        raise ValueError(f"unsupported language {language!r}") from None
    try:
        encoding = Encoding(query.get("encoding", "linear16"))
    except ValueError:
        raise ValueError(f"unsupported encoding {query.get('encoding')!r}") from None
    rate = _int("sample_rate", query.get("sample_rate", "16000"), 1)
    if rate not in SAMPLE_RATES:
        raise ValueError(f"unsupported sample_rate {rate}")
    flags = {
        name: _redaction(name, query[name])
        if name.startswith("redact_")
        else _bool(name, query[name])
        for name in _BOOLEANS
        if name in query
    }
    if "vad_events" not in flags and "vad" in flags:
        flags["vad_events"] = flags["vad"]
    flags.pop("vad", None)
    for ignored in ("itn_normalize", "format", "punctuate", "capitalize", "finalize_on_words"):
        flags.pop(ignored, None)  # accepted; the token engine's text has no formatting to change
    eou = (
        _int("eou_timeout_ms", query["eou_timeout_ms"], 100, 10_000)
        if "eou_timeout_ms" in query
        else 800
    )
    max_words = _int("max_words", query["max_words"], 1) if "max_words" in query else None
    if "numerals" in query and query["numerals"] not in _NUMERALS:
        raise ValueError("numerals must be one of " + ", ".join(_NUMERALS))
    keywords: tuple[str, ...] = ()
    if "keywords" in query:
        keywords = tuple(
            entry.rpartition(":")[0] or entry for entry in query["keywords"].split(",")
        )
    external = query.get("external_session_id")
    if external is not None and not _EXTERNAL_ID.fullmatch(external):
        raise ValueError("external_session_id must be 1-128 characters of A-Z a-z 0-9 _ . -")
    return ServerParams(
        path=path,
        english_only_refusal=model_only_english,
        language=language,
        encoding=encoding,
        sample_rate=rate,
        eou_timeout_ms=eou,
        max_words=max_words,
        keywords=keywords,
        raw=query,
        **flags,
    )


def region_refusal(language: str, region: Region | None) -> list[dict[str, Any] | Close] | None:
    """What a regional host does with a language it does not serve."""
    if region is None:
        return None
    served = Language.coerce(language).regions
    if region in served:
        return None
    if region is Region.US:
        return [
            {
                "type": "error",
                "error_code": "LANGUAGE_NOT_ENABLED_IN_REGION",
                "message": f"language {language!r} is not enabled in this region",
            },
            Close(1008, "language not enabled in region"),
        ]
    # The India host closes without a transcript for East Asian languages.
    return [Close(1011, "")]


class ServerSession:
    """One accepted connection, as the service would run it.

    ``audio()`` and ``control()`` return what to send back, in order: JSON
    objects (dicts) and at most one ``Close``, always last.
    """

    def __init__(
        self,
        params: ServerParams,
        stream: RecognitionStream,
        *,
        session_id: str,
        send_from_finalize: bool = True,
    ) -> None:
        self.params = params
        self._stream = stream
        self.session_id = session_id
        self._send_from_finalize = send_from_finalize
        self._segment: list[DecodedWord] = []
        self._full_transcript = ""  # the finals so far, if asked for (bounded)
        self._last_word_end: float | None = None
        self._speaking = False
        # Voice activity and the end of an utterance are decided in the audio's
        # own time, the same however the audio is cut into frames (PROTOCOL.md §4).
        self._activity = VoiceActivity(
            params.encoding,
            params.sample_rate,
            silences=(_SPEECH_ENDED_AFTER, params.eou_timeout_ms / 1000),
        )
        self.closed = False
        self.audio_bytes = 0
        self._redactions = 0

    @property
    def seconds(self) -> float:
        """Audio time received on this connection."""
        return self._stream.seconds

    def audio(self, data: bytes) -> list[dict[str, Any] | Close]:
        if self.closed:
            return []
        self.audio_bytes += len(data)
        out: list[dict[str, Any] | Close] = []
        # Words and voice activity in the order they happened in the audio: a
        # word is known at its end, sound at its start, a silence once it has
        # lasted long enough.
        happenings: list[tuple[float, int, DecodedWord | Sound | Quiet]] = [
            (word.end, 1, word) for word in self._stream.feed(data)
        ]
        happenings += [
            (mark.at, 0 if isinstance(mark, Sound) else 2, mark)
            for mark in self._activity.feed(data)
        ]
        happenings.sort(key=lambda happening: happening[:2])
        for _, _, what in happenings:
            if isinstance(what, DecodedWord):
                self._add_word(what, out)
            elif isinstance(what, Sound):
                if self.params.vad_events and not self._speaking:
                    out.append(self._vad("speech_started", what.at))
                self._speaking = True
            else:
                self._on_quiet(what, out)
        self._check_late_words(out)
        return out

    def control(self, text: str) -> list[dict[str, Any] | Close]:
        if self.closed:
            return []
        try:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
        except ValueError:
            kind = None
        if kind == "finalize":
            out: list[dict[str, Any] | Close] = []
            for word in self._stream.end_word():
                self._add_word(word, out)
            out.append(self._final(from_finalize=True))
            return out
        if kind == "close_stream":
            out = []
            for word in self._stream.end_word():
                self._add_word(word, out)
            if self._speaking and self.params.vad_events:
                ended = self._activity.last_sound_end or self._last_word_end or self.seconds
                out.append(self._vad("speech_ended", ended))
            self._speaking = False
            # The final with is_last is the last message; the close follows it.
            out.append(self._final(from_finalize=False, is_last=True))
            out.append(Close(1000, "stream closed"))
            self.closed = True
            return out
        return [
            {
                "type": "error",
                "status": "error",
                "message": f"unknown control message: {text[:100]}",
            }
        ]

    # -- internals -----------------------------------------------------------

    def _add_word(self, word: DecodedWord, out: list[dict[str, Any] | Close]) -> None:
        if self.params.vad_events and not self._speaking:
            out.append(self._vad("speech_started", word.start))
        self._speaking = True
        self._segment.append(word)
        self._last_word_end = word.end
        out.append(self._transcription(self._segment, is_final=False))
        if self.params.max_words is not None and len(self._segment) >= self.params.max_words:
            out.append(self._final(from_finalize=False))

    def _on_quiet(self, quiet: Quiet, out: list[dict[str, Any] | Close]) -> None:
        if quiet.after == _SPEECH_ENDED_AFTER and self._speaking:
            if self.params.vad_events:
                out.append(self._vad("speech_ended", quiet.since))
            self._speaking = False
        if (
            quiet.after == self.params.eou_timeout_ms / 1000
            and self.params.endpointing
            and self._segment
        ):
            out.append(self._final(from_finalize=False))

    def _check_late_words(self, out: list[dict[str, Any] | Close]) -> None:
        """The end of an utterance for words an engine gave only after the
        silence that ends it had already been reached."""
        if not (self.params.endpointing and self._segment and self._last_word_end is not None):
            return
        since = self._activity.last_sound_end
        if self._activity.sounding or since is None:
            return
        quiet = self.seconds - max(since, self._last_word_end)
        # Half a sample of slack: times are sample counts in float seconds.
        if quiet + 0.5 / self._activity.rate >= self.params.eou_timeout_ms / 1000:
            out.append(self._final(from_finalize=False))

    def _vad(self, kind: str, timestamp: float) -> dict[str, Any]:
        return {"type": kind, "session_id": self.session_id, "timestamp": round(timestamp, 4)}

    def _final(self, *, from_finalize: bool, is_last: bool = False) -> dict[str, Any]:
        message = self._transcription(self._segment, is_final=True, is_last=is_last)
        if self._send_from_finalize:
            message["from_finalize"] = from_finalize
        self._segment = []
        return message

    def _transcription(
        self, words: list[DecodedWord], *, is_final: bool, is_last: bool = False
    ) -> dict[str, Any]:
        params = self.params
        texts = [word.word for word in words]
        entities: list[str] = []
        if is_final and (params.redact_pii or params.redact_pci):
            texts, entities = self._redact(texts)
        text = " ".join(texts)
        message: dict[str, Any] = {
            "type": "transcription",
            "status": "success",
            "session_id": self.session_id,
            "transcript": text,
            "transcription": text,
            "is_final": is_final,
            "is_last": is_last,
        }
        if is_final:
            message["language"] = self._language()
            message["languages"] = [self._language()]
        if params.full_transcript:
            full = f"{self._full_transcript} {text}".strip()
            if is_final:
                if len(full) > FULL_TRANSCRIPT_CHARS:
                    cut = full.find(" ", len(full) - FULL_TRANSCRIPT_CHARS)
                    full = full[cut + 1 :] if cut >= 0 else full[-FULL_TRANSCRIPT_CHARS:]
                self._full_transcript = full
            message["full_transcript"] = full
        if params.word_timestamps:
            message["words"] = [
                {
                    "word": shown,
                    "start": round(word.start, 4),
                    "end": round(word.end, 4),
                    "confidence": 1.0,
                    **({"speaker": 0, "speaker_confidence": 1.0} if params.diarize else {}),
                }
                for word, shown in zip(words, texts, strict=True)
            ]
        if params.sentence_timestamps and is_final and words:
            message["utterances"] = [
                {
                    "text": text,
                    "start": round(words[0].start, 4),
                    "end": round(words[-1].end, 4),
                    **({"speaker": 0} if params.diarize else {}),
                }
            ]
        if params.diarize and words:
            message["speaker"] = 0
            message["speaker_confidence"] = 1.0
        if entities:
            message["redacted_entities"] = entities
        return message

    def _language(self) -> str:
        language = self.params.language
        return "en" if language.startswith("multi") or language == "north_indic" else language

    def _redact(self, texts: list[str]) -> tuple[list[str], list[str]]:
        label = "ACCOUNTNUMBER" if self.params.redact_pci else "PHONENUMBER"
        shown: list[str] = []
        entities: list[str] = []
        for text in texts:
            if any(ch.isdigit() for ch in text):
                self._redactions += 1
                placeholder = f"[{label}_{self._redactions}]"
                shown.append(placeholder)
                entities.append(placeholder)
            else:
                shown.append(text)
        return shown, entities
