"""The API key, kept out of everything pulse shows: :class:`Redactor`.

A server may echo the ``Authorization`` header back in an error message, a
close reason, a ping payload or a refusal body, whole, cut short or in pieces
(PROTOCOL.md §6 rule 12). Whatever a server sends can end up in an event, an
exception or a log line, so the engine passes server text through a
:class:`Redactor` before it becomes any of those, and transports pass what their
own stack logs through the same one.

The rule: every run of characters that is a piece of the key at least
:data:`PIECE` characters long (the whole key, if it is shorter) is replaced by
``<redacted>``, ignoring case. Text is redacted *before* it is cut to a length,
so the cut cannot leave a prefix of the key behind.

Checking every message whole would cost a sliding window per character, on
every transcript. :meth:`Redactor.suspects` is the cheap test that comes first:
a piece of :data:`PIECE` characters always contains one of the key's aligned
blocks of ``PIECE // 2`` characters, so a text holding none of those blocks
(after undoing JSON escapes) holds no piece, and is passed through untouched.
Even that test costs about as much as parsing the message when run over a
transcript with word timings, so :func:`hide_in_message` runs it over a
transcription's other fields only: what was said (the transcript, its words,
utterances and full transcript) comes from the audio, not from the request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from ._messages import ServerMessage, TranscriptionMessage

__all__ = ["MARK", "PIECE", "SPOKEN_FIELDS", "Redactor", "hide_in_message"]

#: The shortest piece of the key that is hidden. Shorter runs are too common in
#: ordinary text (``sk_``, ``Bearer``) to hide without mangling it, and too
#: short to help anyone guess the rest.
PIECE = 8
#: What a hidden piece becomes.
MARK = "<redacted>"

T = TypeVar("T")

#: A transcription's fields that hold what was said: not searched for the key
#: (they come from the audio), though redacted with the rest when another
#: field of the same message holds a piece of it.
SPOKEN_FIELDS = frozenset({"transcript", "words", "utterances", "full_transcript"})


class Redactor:
    """Hides the pieces of one secret in text and in values built from text.

    Invariants: :meth:`text` returns its input unchanged (the same object) when
    it holds no piece of the secret; otherwise, no run of :data:`PIECE`
    characters of the result (ignoring case) is a piece of the secret, since
    every character that belonged to a piece is covered by one mark.
    """

    __slots__ = ("_blocks", "_pieces", "_size")

    def __init__(self, secret: str) -> None:
        folded = secret.lower()
        self._size = size = max(1, min(PIECE, len(folded)))
        self._pieces = frozenset(folded[i : i + size] for i in range(len(folded) - size + 1))
        # Every window of `size` characters holds a whole aligned block of
        # `step` characters: its start is at most `step - 1` past the window's
        # start, and it ends at most `2 * step - 1 <= size` characters in.
        step = max(1, size // 2)
        self._blocks = tuple(
            folded[i : i + step] for i in range(0, len(folded) - step + 1, step)
        ) or (folded,)

    def __repr__(self) -> str:
        return "Redactor(<redacted>)"

    def suspects(self, text: str) -> bool:
        """Whether ``text`` may hold a piece of the secret: a cheap test that
        is never wrong when it says no. JSON ``\\u`` escapes are undone first,
        so a server cannot hide a piece from it by escaping its letters."""
        folded = text.lower()
        if any(map(folded.__contains__, self._blocks)):
            return True
        if "\\" not in folded:
            return False
        unescaped = _ESCAPE.sub(_unescape, folded).lower()
        return any(map(unescaped.__contains__, self._blocks))

    def text(self, text: str) -> str:
        """``text`` with every piece of the secret replaced by :data:`MARK`."""
        if not text or not self.suspects(text):
            return text
        folded = text.lower()
        size = self._size
        spans: list[list[int]] = []
        for start in range(len(folded) - size + 1):
            if folded[start : start + size] in self._pieces:
                if spans and start <= spans[-1][1]:
                    spans[-1][1] = start + size
                else:
                    spans.append([start, start + size])
        if not spans:
            return text
        parts: list[str] = []
        done = 0
        for start, end in spans:
            parts += (text[done:start], MARK)
            done = end
        parts.append(text[done:])
        return "".join(parts)

    def value(self, value: T) -> T:
        """``value`` with :meth:`text` applied to every string in it: through
        mappings (keys and values), lists, tuples and attrs instances. Other
        values are returned as they are."""
        return self._walk(value, 0)  # type: ignore[no-any-return]

    def _walk(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_DEPTH:
            # Parsed JSON is bounded by the message size limit, so this only
            # guards against a value built to be deeper than any real message.
            return MARK
        if isinstance(value, Mapping):
            return {self._walk(k, depth + 1): self._walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._walk(item, depth + 1) for item in value)
        if attrs.has(type(value)):
            changes = {
                field.alias: self._walk(getattr(value, field.name), depth + 1)
                for field in attrs.fields(type(value))
                if field.init
            }
            return attrs.evolve(value, **changes)
        return value


_MAX_DEPTH = 64


def hide_in_message(redactor: Redactor, message: ServerMessage, text: str) -> ServerMessage:
    """``message``, parsed from ``text``, with every string redacted if any
    may hold a piece of the key; the same object otherwise. A transcription
    is searched outside :data:`SPOKEN_FIELDS` only; other messages (errors,
    unknown types: rare, and where servers echo requests) whole."""
    if isinstance(message, TranscriptionMessage):
        # One search over the other fields, names included, joined by a
        # character no key holds (so no piece spans two of them).
        shown = [*message.raw]
        for name, value in message.raw.items():
            if name in SPOKEN_FIELDS or value is None or isinstance(value, bool | int | float):
                continue
            shown.append(value if isinstance(value, str) else repr(value))
        suspect = redactor.suspects("\0".join(shown))
    else:
        suspect = redactor.suspects(text)
    return redactor.value(message) if suspect else message


#: A JSON escape: ``\\u`` and four hex digits, or a backslash and one character.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)


def _unescape(match: re.Match[str]) -> str:
    """One JSON escape undone, leniently (an unknown escape is its character)."""
    code, char = match.groups()
    return chr(int(code, 16)) if code is not None else char
