"""Transcription settings: the query parameters of the upgrade request.

Field names are exactly the service's parameter names. ``None`` means "not
set": the parameter is left out of the URL and the server default applies.
Everything is validated when a ``Settings`` is built, so a bad value fails
before any connection is attempted.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final

import attrs

from ._errors import ConfigurationError
from ._languages import Language

__all__ = ["Keyword", "Settings"]

MAX_KEYWORDS: Final = 10_000
# Controls (C0, DEL, C1), lone surrogates and line/paragraph separators cannot
# travel in a keyword; format characters such as ZWJ/ZWNJ can (Indic scripts).
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Documented spellings of numerals mapped to what the server takes on the wire.
_NUMERALS: Final = {
    "auto": "auto",
    "true": "true",
    "false": "false",
    "always": "true",
    "none": "false",
}


@attrs.frozen
class Keyword:
    """A word or phrase to boost, with an optional intensifier (server default 1)."""

    word: str
    intensifier: float | None = None

    def to_wire(self) -> str:
        if self.intensifier is None:
            return self.word
        value = self.intensifier
        text = str(int(value)) if value == int(value) else repr(value)
        return f"{self.word}:{text}"


def _keyword(item: object) -> Keyword:
    word: object
    intensifier: object = None
    if isinstance(item, Keyword):
        word, intensifier = item.word, item.intensifier
    elif isinstance(item, str):
        word, sep, rest = item.rpartition(":")
        if not sep:
            word = rest
        else:
            try:
                intensifier = float(rest)
            except ValueError:
                word = item  # a colon that is not an intensifier: rejected below
                intensifier = None
    elif isinstance(item, tuple) and len(item) == 2:
        word, intensifier = item
    else:
        raise ConfigurationError(
            "keywords", item, "each keyword is a string or a (word, intensifier) pair"
        )
    if not isinstance(word, str) or not word.strip():
        raise ConfigurationError("keywords", item, "a keyword must be a non-empty string")
    word = word.strip()
    if any(ch in word for ch in ",:") or any(
        unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in word
    ):
        raise ConfigurationError(
            "keywords",
            item,
            "a keyword may not contain ',' or ':' or control characters "
            "(they separate entries and intensifiers on the wire)",
        )
    if intensifier is not None:
        if (
            isinstance(intensifier, bool)
            or not isinstance(intensifier, int | float)
            or not math.isfinite(intensifier)
            or intensifier <= 0
        ):
            raise ConfigurationError(
                "keywords", item, "an intensifier is a positive finite number (1 to 3 is typical)"
            )
        intensifier = float(intensifier)
    return Keyword(word, intensifier)


def _convert_keywords(value: object) -> tuple[Keyword, ...] | None:
    if value is None:
        return None
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray | Mapping):
        items = value
    else:
        raise ConfigurationError(
            "keywords", value, "a sequence of words or (word, intensifier) pairs"
        )
    converted = tuple(_keyword(item) for item in items)
    if not converted:
        raise ConfigurationError(
            "keywords",
            value,
            "at least one keyword; leave keywords unset for none",
            detail="an empty value registers one empty keyword on the server",
        )
    if len(converted) > MAX_KEYWORDS:
        raise ConfigurationError(
            "keywords", f"<{len(converted)} keywords>", f"at most {MAX_KEYWORDS} keywords"
        )
    return converted


def _convert_language(value: object) -> Language:
    try:
        return Language.coerce(value)
    except ValueError:
        raise ConfigurationError(
            "language", value, "one of " + ", ".join(member.value for member in Language)
        ) from None


def _convert_numerals(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in _NUMERALS:
        return _NUMERALS[value.lower()]
    raise ConfigurationError(
        "numerals", value, "one of 'auto', 'true', 'false' (or the documented 'always', 'none')"
    )


def _check_bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(attribute.name, value, "True, False or None (unset)")


def _bool() -> Any:
    return attrs.field(default=None, validator=_check_bool)


def _check_model(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _MODEL.fullmatch(value):
        raise ConfigurationError("model", value, "a model name such as 'pulse'")
    if value.lower() == "pulse-pro":
        raise ConfigurationError(
            "model", value, "'pulse' (pulse-pro has no streaming worker; the server answers 400)"
        )


def _check_eou(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 10_000:
        raise ConfigurationError("eou_timeout_ms", value, "an integer from 100 to 10000")


def _check_max_words(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError("max_words", value, "an integer of at least 1")


def _check_external_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _EXTERNAL_ID.fullmatch(value):
        raise ConfigurationError(
            "external_session_id", value, "1 to 128 characters from A-Z a-z 0-9 _ . -"
        )


@attrs.frozen(kw_only=True)
class Settings:
    """What to transcribe and how: the service's query parameters.

    Can be changed during a session (``PulseConnection.update_settings``); the
    engine finishes the current turn before it switches connections.
    """

    model: str = attrs.field(default="pulse", validator=_check_model)
    language: Language = attrs.field(default=Language.EN, converter=_convert_language)
    word_timestamps: bool | None = _bool()
    sentence_timestamps: bool | None = _bool()
    full_transcript: bool | None = _bool()
    redact_pii: bool | None = _bool()
    redact_pci: bool | None = _bool()
    numerals: str | None = attrs.field(default=None, converter=_convert_numerals)
    diarize: bool | None = _bool()
    itn_normalize: bool | None = _bool()
    format: bool | None = _bool()
    punctuate: bool | None = _bool()
    capitalize: bool | None = _bool()
    endpointing: bool | None = _bool()
    eou_timeout_ms: int | None = attrs.field(default=None, validator=_check_eou)
    finalize_on_words: bool | None = _bool()
    max_words: int | None = attrs.field(default=None, validator=_check_max_words)
    vad_events: bool | None = _bool()
    keywords: tuple[Keyword, ...] | None = attrs.field(default=None, converter=_convert_keywords)
    external_session_id: str | None = attrs.field(default=None, validator=_check_external_id)

    FIELDS: ClassVar[tuple[str, ...]]

    def evolve(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated.

        Unknown names raise ``ConfigurationError`` naming the valid ones.
        """
        for name, value in changes.items():
            if name not in Settings.FIELDS:
                raise ConfigurationError(
                    name, value, "a Settings field: " + ", ".join(Settings.FIELDS)
                )
        return attrs.evolve(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build from a mapping of field names, rejecting unknown names."""
        return cls().evolve(**dict(values))

    def changed_fields(self, other: Settings) -> tuple[str, ...]:
        """Names of the fields whose value differs in ``other``."""
        return tuple(
            name for name in Settings.FIELDS if getattr(self, name) != getattr(other, name)
        )

    def query(self, *, include_model: bool = True) -> list[tuple[str, str]]:
        """The query parameters, in field order, leaving out unset fields.

        Booleans become ``true``/``false``; keywords become one comma-separated
        string with ``word:intensifier`` entries.
        """
        params: list[tuple[str, str]] = []
        for name in Settings.FIELDS:
            if name == "model" and not include_model:
                continue
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif name == "keywords":
                text = ",".join(keyword.to_wire() for keyword in value)
            else:
                text = str(value)
            params.append((name, text))
        return params


Settings.FIELDS = tuple(field.name for field in attrs.fields(Settings))
