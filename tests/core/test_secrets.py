"""``Redactor`` on its own: the API key kept out of text (PROTOCOL §6 rule 12).

Invariants checked (pulse_core/_secrets.py):

* no run of ``PIECE`` characters of the result is a piece of the key, ignoring
  case, wherever and however often pieces of the key appear, overlapping,
  back to back or reordered;
* text holding no piece comes back as the same object (nothing copied);
* ``suspects`` never says no to text holding a piece, also when the piece is
  written with JSON escapes;
* a key shorter than ``PIECE`` is hidden whole, and only whole;
* ``value`` reaches every string in mappings (keys too), lists, tuples and
  attrs instances, keeps their types, and stops at a bounded depth.
"""

from __future__ import annotations

import json
import string

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pulse_core import Redactor, TranscriptionMessage, Word, parse_server_message
from pulse_core._secrets import MARK, PIECE, hide_in_message

KEY = "sk_live_3f9a2c7e1b8d4a6f0e5c"


def pieces_in(text: str, key: str = KEY) -> list[str]:
    """Every ``PIECE``-character piece of ``key`` in ``text``, ignoring case."""
    size = min(PIECE, len(key))
    folded, key = text.lower(), key.lower()
    return [key[i : i + size] for i in range(len(key) - size + 1) if key[i : i + size] in folded]


def test_the_whole_key_is_hidden() -> None:
    assert Redactor(KEY).text(f"Bearer {KEY} rejected") == f"Bearer {MARK} rejected"


def test_a_piece_of_eight_is_hidden_and_seven_is_not() -> None:
    hide = Redactor(KEY)
    assert hide.text(f"[{KEY[5:13]}]") == f"[{MARK}]"
    assert hide.text(f"[{KEY[5:12]}]") == f"[{KEY[5:12]}]"


def test_case_does_not_matter() -> None:
    assert Redactor(KEY).text(KEY.upper()) == MARK


def test_pieces_back_to_back_and_reordered_are_hidden() -> None:
    half = len(KEY) // 2
    shown = Redactor(KEY).text(f"bye {KEY[half:]}{KEY[:half]}!")
    assert pieces_in(shown) == []
    assert shown.startswith("bye ") and shown.endswith("!")


def test_text_without_a_piece_is_the_same_object() -> None:
    text = "a perfectly ordinary transcript, sk_ and all"
    assert Redactor(KEY).text(text) is text


def test_json_escapes_do_not_hide_a_piece_from_the_quick_test() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    assert Redactor(KEY).suspects(f'{{"message":"{escaped}"}}')
    # and the parsed string is then hidden
    assert Redactor(KEY).text(json.loads(f'"{escaped}"')) == MARK


def test_a_short_key_is_hidden_whole_only() -> None:
    hide = Redactor("abc12")
    assert hide.text("xabc12y abc1") == f"x{MARK}y abc1"


def test_the_repr_shows_nothing_of_the_key() -> None:
    assert pieces_in(repr(Redactor(KEY))) == []


def test_value_reaches_every_string_and_keeps_types() -> None:
    hide = Redactor(KEY)
    raw = {"error": {"message": f"bad {KEY}", KEY: [KEY, 1, None]}, "t": (KEY, 2.5)}
    shown = hide.value(raw)
    assert shown == {"error": {"message": f"bad {MARK}", MARK: [MARK, 1, None]}, "t": (MARK, 2.5)}
    word = Word(word=KEY, start=0.0, end=0.5)
    assert hide.value(word) == attrs.evolve(word, word=MARK)
    assert hide.value(7) == 7


def test_value_stops_at_a_bounded_depth() -> None:
    deep: list[object] = [KEY]
    for _ in range(200):
        deep = [deep]
    shown = Redactor(KEY).value(deep)
    assert pieces_in(json.dumps(shown)) == []


ALPHABET = string.ascii_letters + string.digits + "_-"


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(ALPHABET, min_size=1, max_size=48),
    filler=st.lists(st.text(string.printable, max_size=12), min_size=1, max_size=6),
    cuts=st.lists(st.tuples(st.integers(0, 47), st.integers(0, 47)), max_size=6),
    upper=st.booleans(),
)
def test_no_piece_survives(
    key: str, filler: list[str], cuts: list[tuple[int, int]], upper: bool
) -> None:
    """Pieces of the key (any slices, maybe upper-cased) mixed with other text:
    no piece survives, and the text between them is kept."""
    parts = []
    for index, text in enumerate(filler):
        parts.append(text)
        if index < len(cuts):
            start, length = cuts[index]
            piece = key[start : start + length]
            parts.append(piece.upper() if upper else piece)
    text = "".join(parts)
    shown = Redactor(key).text(text)
    # (the mark itself may hold letters of a key a few characters long)
    assert pieces_in(shown.replace(MARK, "\0"), key) == []
    if not pieces_in(text, key):
        assert shown is text


@settings(max_examples=300, deadline=None)
@given(key=st.text(ALPHABET, min_size=PIECE, max_size=48), data=st.data())
def test_the_quick_test_never_says_no_to_a_piece(key: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(key) - PIECE))
    end = data.draw(st.integers(start + PIECE, len(key)))
    around = data.draw(st.text(string.printable, max_size=20))
    escaped = data.draw(st.booleans())
    piece = key[start:end]
    if escaped:
        piece = "".join(f"\\u{ord(c):04x}" for c in piece)
    assume(piece)
    assert Redactor(key).suspects(around + piece + around)


@pytest.mark.parametrize("text", ["", "\\", "\\u12", "\\uzzzz", "trailing \\"])
def test_odd_escapes_are_harmless(text: str) -> None:
    hide = Redactor(KEY)
    assert hide.text(text) == text


def transcription(**fields: object) -> str:
    return json.dumps({"type": "transcription", "transcript": "hi", "is_final": False, **fields})


def test_what_was_said_is_not_searched() -> None:
    """The spoken fields come from the audio: a transcription whose only piece
    of the key is in them is passed on as it is (the same object)."""
    text = transcription(transcript=f"say {KEY}", words=[{"word": KEY, "start": 0, "end": 1}])
    message = parse_server_message(text)
    assert hide_in_message(Redactor(KEY), message, text) is message


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": KEY},
        {"echo": {"authorization": f"Bearer {KEY}"}},
        {KEY: 1},
        {"languages": ["en", KEY.upper()]},
    ],
    ids=["session-id", "nested-extra", "field-name", "list"],
)
def test_a_piece_in_any_other_field_redacts_the_whole_message(fields: dict[str, object]) -> None:
    text = transcription(transcript=f"said {KEY}", **fields)
    message = hide_in_message(Redactor(KEY), parse_server_message(text), text)
    assert isinstance(message, TranscriptionMessage)
    assert pieces_in(repr(message) + repr(message.raw) + message.text) == []


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"type": "error", "message": f"no {KEY}"}),
        json.dumps({"type": "novel", "deep": [{"x": KEY}]}),
    ],
)
def test_other_messages_are_searched_whole(text: str) -> None:
    message = hide_in_message(Redactor(KEY), parse_server_message(text), text)
    assert pieces_in(repr(message) + repr(getattr(message, "raw", None))) == []
