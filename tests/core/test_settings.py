"""Settings: defaults, validation (field, value and what is allowed), wire form."""

from __future__ import annotations

import math
import string

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse_core import ConfigurationError, Keyword, Language, Settings
from pulse_core._settings import MAX_KEYWORDS

BOOL_FIELDS = (
    "word_timestamps",
    "sentence_timestamps",
    "full_transcript",
    "redact_pii",
    "redact_pci",
    "diarize",
    "itn_normalize",
    "format",
    "punctuate",
    "capitalize",
    "endpointing",
    "finalize_on_words",
    "vad_events",
)

EXPECTED_FIELDS = (
    "model",
    "language",
    "word_timestamps",
    "sentence_timestamps",
    "full_transcript",
    "redact_pii",
    "redact_pci",
    "numerals",
    "diarize",
    "itn_normalize",
    "format",
    "punctuate",
    "capitalize",
    "endpointing",
    "eou_timeout_ms",
    "finalize_on_words",
    "max_words",
    "vad_events",
    "keywords",
    "external_session_id",
)


def check_error(err: ConfigurationError, field: str, value: object, allowed: str) -> None:
    """The error names the field, shows the bad value and says what is allowed."""
    assert isinstance(err, ValueError)
    assert err.field == field
    assert f"invalid {field}={value!r}" in str(err)
    assert allowed in err.allowed
    assert allowed in str(err)


# -- defaults -----------------------------------------------------------------


def test_fields_are_the_service_parameter_names_in_a_fixed_order() -> None:
    assert Settings.FIELDS == EXPECTED_FIELDS


def test_defaults() -> None:
    settings = Settings()
    assert settings.model == "pulse"
    assert settings.language is Language.EN
    for name in EXPECTED_FIELDS[2:]:
        assert getattr(settings, name) is None, name


def test_default_query_has_only_model_and_language() -> None:
    assert Settings().query() == [("model", "pulse"), ("language", "en")]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.model = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.language = Language.HI  # type: ignore[misc]
    assert settings == Settings()


def test_keyword_is_frozen() -> None:
    keyword = Keyword("pulse", 2.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        keyword.word = "other"  # type: ignore[misc]


def test_settings_are_hashable_and_compare_by_value() -> None:
    a = Settings(language="hi", keywords=["x:2"])
    b = Settings(language=Language.HI, keywords=[("x", 2)])
    assert a == b
    assert hash(a) == hash(b)


# -- booleans -----------------------------------------------------------------


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", [True, False, None])
def test_boolean_fields_accept_bools_and_none(name: str, value: bool | None) -> None:
    assert getattr(Settings(**{name: value}), name) is value


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["true", "false", "True", "", 1, 0, 1.0, [True]])
def test_boolean_fields_reject_non_bools(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(**{name: value})
    check_error(info.value, name, value, "True, False or None")


# -- eou_timeout_ms / max_words ----------------------------------------------


@pytest.mark.parametrize("value", [100, 101, 700, 9999, 10_000, None])
def test_eou_timeout_accepts_100_to_10000(value: int | None) -> None:
    assert Settings(eou_timeout_ms=value).eou_timeout_ms == value


@pytest.mark.parametrize(
    "value", [99, 0, -1, 10_001, 1_000_000, True, False, 500.0, "500", math.nan]
)
def test_eou_timeout_rejects_out_of_range_and_non_ints(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(eou_timeout_ms=value)
    check_error(info.value, "eou_timeout_ms", value, "an integer from 100 to 10000")


@given(st.integers())
def test_eou_timeout_range_property(value: int) -> None:
    if 100 <= value <= 10_000:
        assert Settings(eou_timeout_ms=value).eou_timeout_ms == value
    else:
        with pytest.raises(ConfigurationError):
            Settings(eou_timeout_ms=value)


@pytest.mark.parametrize("value", [1, 2, 50, 10**9])
def test_max_words_accepts_positive_ints(value: int) -> None:
    assert Settings(max_words=value).max_words == value


@pytest.mark.parametrize("value", [0, -1, -100, True, False, 3.0, "3"])
def test_max_words_rejects_below_one_and_non_ints(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(max_words=value)
    check_error(info.value, "max_words", value, "an integer of at least 1")


# -- model --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["pulse", "pulse-2", "Pulse_v1.5", "a", "a" * 64])
def test_model_accepts_plain_names(value: str) -> None:
    assert Settings(model=value).model == value


def test_model_pulse_pro_is_rejected_with_the_reason() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(model="pulse-pro")
    check_error(info.value, "model", "pulse-pro", "'pulse'")
    assert "no streaming worker" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-pulse",
        ".pulse",
        "pul se",
        "pulse/x",
        "pulse?x=1",
        "pulse&a",
        "a" * 65,
        "pulse\n",
        None,
        1,
        b"pulse",
    ],
)
def test_model_rejects_malformed_names(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(model=value)  # type: ignore[arg-type]
    check_error(info.value, "model", value, "a model name such as 'pulse'")


# -- language -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("en", Language.EN),
        ("EN", Language.EN),
        (" hi ", Language.HI),
        ("Yue", Language.YUE),
        ("north_indic", Language.NORTH_INDIC),
        ("north-indic", Language.NORTH_INDIC),
        ("NORTH-INDIC", Language.NORTH_INDIC),
        ("multi_asian", Language.MULTI_ASIAN),
        ("Multi-Asian", Language.MULTI_ASIAN),
        ("MULTI_SOUTH_INDIC", Language.MULTI_SOUTH_INDIC),
        ("multi_eu", Language.MULTI_EU),
        (Language.TA, Language.TA),
    ],
)
def test_language_accepts_codes_ignoring_case_and_separator(
    given_value: str, expected: Language
) -> None:
    assert Settings(language=given_value).language is expected
    assert Language.coerce(given_value) is expected


@given(
    st.sampled_from(list(Language)),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.booleans(),
)
def test_every_language_code_coerces_in_any_case_and_spelling(
    member: Language, upper: list[bool], underscores: bool
) -> None:
    code = "".join(
        ch.upper() if flip else ch for ch, flip in zip(member.value, upper, strict=False)
    )
    code = code.replace("-", "_") if underscores else code.replace("_", "-")
    assert Settings(language=code).language is member


@pytest.mark.parametrize("value", ["xx", "english", "", "en-US", "multi asian", None, 1, Language])
def test_unknown_language_is_rejected_listing_the_codes(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(language=value)
    err = info.value
    check_error(err, "language", value, "one of en, hi")
    for member in Language:
        assert member.value in err.allowed


def test_language_coerce_raises_value_error_for_unknown() -> None:
    with pytest.raises(ValueError, match="xx"):
        Language.coerce("xx")


# -- numerals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("auto", "auto"),
        ("AUTO", "auto"),
        ("always", "true"),
        ("Always", "true"),
        ("none", "false"),
        ("NONE", "false"),
        ("true", "true"),
        ("false", "false"),
        ("True", "true"),
        (True, "true"),
        (False, "false"),
    ],
)
def test_numerals_spellings_and_wire_values(value: object, wire: str) -> None:
    settings = Settings(numerals=value)
    assert settings.numerals == wire
    assert ("numerals", wire) in settings.query()


def test_numerals_unset_is_left_out() -> None:
    assert Settings(numerals=None).numerals is None
    assert all(name != "numerals" for name, _ in Settings().query())


@pytest.mark.parametrize("value", ["yes", "no", "", "on", 1, 0, 1.0, ["auto"]])
def test_numerals_rejects_other_values(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(numerals=value)
    check_error(info.value, "numerals", value, "'auto', 'true', 'false'")
    assert "'always', 'none'" in str(info.value)


# -- external_session_id ------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "call-42", "A.b_c-D.9", "x" * 128])
def test_external_session_id_accepts_the_documented_alphabet(value: str) -> None:
    settings = Settings(external_session_id=value)
    assert settings.external_session_id == value
    assert ("external_session_id", value) in settings.query()


@pytest.mark.parametrize(
    "value",
    ["", "x" * 129, "a b", "a/b", "a:b", "a,b", "caf\u00e9", "a\n", "\na", "id#1", "a+b", 42],
)
def test_external_session_id_rejects_other_values(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(external_session_id=value)  # type: ignore[arg-type]
    check_error(info.value, "external_session_id", value, "1 to 128 characters")


ID_ALPHABET = string.ascii_letters + string.digits + "_.-"


@given(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_external_session_id_valid_property(value: str) -> None:
    assert Settings(external_session_id=value).external_session_id == value


@given(
    st.text(alphabet=ID_ALPHABET, max_size=60),
    st.characters(blacklist_characters=ID_ALPHABET, blacklist_categories=("Cs",)),
    st.text(alphabet=ID_ALPHABET, max_size=60),
)
def test_external_session_id_with_any_foreign_character_is_rejected(
    head: str, bad: str, tail: str
) -> None:
    with pytest.raises(ConfigurationError):
        Settings(external_session_id=head + bad + tail)


# -- keywords -----------------------------------------------------------------


def test_keywords_from_plain_words() -> None:
    settings = Settings(keywords=["Smallest", "Pulse"])
    assert settings.keywords == (Keyword("Smallest"), Keyword("Pulse"))
    assert ("keywords", "Smallest,Pulse") in settings.query()


def test_keywords_from_tuples_strings_and_keyword_objects() -> None:
    settings = Settings(keywords=[("alpha", 2), "beta:1.5", Keyword("gamma", 3), "delta"])
    assert settings.keywords == (
        Keyword("alpha", 2.0),
        Keyword("beta", 1.5),
        Keyword("gamma", 3.0),
        Keyword("delta", None),
    )
    assert all(
        isinstance(k.intensifier, float)
        for k in settings.keywords[:3]  # type: ignore[index]
    )
    assert ("keywords", "alpha:2,beta:1.5,gamma:3,delta") in settings.query()


def test_keywords_from_a_comma_separated_string() -> None:
    settings = Settings(keywords="alpha:2, beta ,gamma:1.5")
    assert settings.keywords == (Keyword("alpha", 2.0), Keyword("beta"), Keyword("gamma", 1.5))
    assert ("keywords", "alpha:2,beta,gamma:1.5") in settings.query()


def test_keywords_from_a_generator() -> None:
    settings = Settings(keywords=(word for word in ["a", "b"]))
    assert settings.keywords == (Keyword("a"), Keyword("b"))


def test_keyword_words_are_stripped() -> None:
    assert Settings(keywords=["  New York  "]).keywords == (Keyword("New York"),)


@pytest.mark.parametrize(
    ("intensifier", "wire"),
    [(2, "w:2"), (2.0, "w:2"), (1.5, "w:1.5"), (0.25, "w:0.25"), (10, "w:10"), (None, "w")],
)
def test_keyword_wire_form(intensifier: float | None, wire: str) -> None:
    assert Keyword("w", intensifier).to_wire() == wire
    assert Settings(keywords=[Keyword("w", intensifier)]).query()[-1] == ("keywords", wire)


def test_keywords_empty_list_is_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[])
    check_error(info.value, "keywords", [], "at least one keyword")
    assert "leave keywords unset" in str(info.value)


@pytest.mark.parametrize("value", ["", " ", "a,,b", "a, ,b", ","])
def test_keywords_string_with_an_empty_entry_is_rejected(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=value)
    assert info.value.field == "keywords"
    assert "non-empty" in str(info.value)


@pytest.mark.parametrize("item", ["", "   ", ("", 2), (" ", 2), Keyword(""), ":2"])
def test_keywords_empty_word_is_rejected(item: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "a keyword must be a non-empty string")


@pytest.mark.parametrize(
    "item",
    [
        ("a,b", 2),
        ("a:b", 2),
        ("a,b", None),
        Keyword("a,b"),
        Keyword("a:b", 2),
        "a:b",
        "a:b:2",
        "a:",
        "time:12:30x",
        "line\nbreak",
        "tab\there",
        ("nul\x00", 1),
    ],
)
def test_keyword_with_separator_or_control_character_is_rejected(item: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "may not contain ',' or ':'")


@pytest.mark.parametrize("word", ["del\x7f", "c1\x85x"])
def test_keyword_with_del_or_c1_control_is_rejected(word: str) -> None:
    with pytest.raises(ConfigurationError):
        Settings(keywords=[word])


BAD_INTENSIFIERS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "2", "x"]


@pytest.mark.parametrize("intensifier", BAD_INTENSIFIERS)
def test_bad_intensifier_in_a_pair_is_rejected(intensifier: object) -> None:
    item = ("word", intensifier)
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "an intensifier is a positive finite number")


@pytest.mark.parametrize("intensifier", BAD_INTENSIFIERS)
def test_bad_intensifier_in_a_keyword_object_is_rejected(intensifier: object) -> None:
    item = Keyword("word", intensifier)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "an intensifier is a positive finite number")


@pytest.mark.parametrize(
    "item", ["word:0", "word:-1", "word:nan", "word:inf", "word:-inf", "word:1e999"]
)
def test_bad_intensifier_in_a_string_is_rejected(item: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "an intensifier is a positive finite number")


@pytest.mark.parametrize("item", [42, None, b"bytes", ("a", 1, 2), ("a",), ["a", 2], {"a": 2}])
def test_keyword_items_of_other_types_are_rejected(item: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[item])
    check_error(info.value, "keywords", item, "string or a (word, intensifier) pair")


@pytest.mark.parametrize("value", [42, b"a,b", {"a": 2}, 1.5])
def test_keywords_of_other_types_are_rejected(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=value)
    check_error(info.value, "keywords", value, "a sequence of words")


def test_keywords_up_to_the_limit_are_accepted() -> None:
    settings = Settings(keywords=[f"w{i}" for i in range(MAX_KEYWORDS)])
    assert MAX_KEYWORDS == 10_000
    assert settings.keywords is not None
    assert len(settings.keywords) == 10_000


def test_more_than_ten_thousand_keywords_are_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(keywords=[f"w{i}" for i in range(MAX_KEYWORDS + 1)])
    err = info.value
    assert err.field == "keywords"
    assert "10001" in str(err)
    assert "at most 10000 keywords" in str(err)


def test_more_than_ten_thousand_keywords_in_a_string_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="at most 10000"):
        Settings(keywords=",".join("w" for _ in range(MAX_KEYWORDS + 1)))


KEYWORD_WORD = st.text(
    alphabet=st.characters(
        blacklist_characters=",:", blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs")
    ),
    min_size=1,
    max_size=20,
)


@given(
    st.lists(
        st.tuples(
            KEYWORD_WORD,
            st.one_of(
                st.none(),
                st.integers(min_value=1, max_value=1000),
                st.floats(min_value=0.01, max_value=1000, allow_nan=False),
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_keywords_round_trip_through_the_wire_form(pairs: list[tuple[str, float | None]]) -> None:
    items = [word if n is None else (word, n) for word, n in pairs]
    settings = Settings(keywords=items)
    (text,) = [value for name, value in settings.query() if name == "keywords"]
    entries = text.split(",")
    assert len(entries) == len(pairs)
    for entry, (word, n) in zip(entries, pairs, strict=True):
        if n is None:
            assert entry == word.strip()
        else:
            got_word, _, got_n = entry.rpartition(":")
            assert got_word == word.strip()
            assert float(got_n) == float(n)
    # The wire form parses back to the same keywords.
    assert Settings(keywords=text).keywords == settings.keywords


# -- query --------------------------------------------------------------------


def test_query_full_example() -> None:
    settings = Settings(
        external_session_id="call-7",
        keywords=[("Smallest", 2), ("Pulse", 1.5), "Waves"],
        max_words=12,
        eou_timeout_ms=700,
        numerals="always",
        redact_pii=False,
        word_timestamps=True,
        language="hi",
    )
    assert settings.query() == [
        ("model", "pulse"),
        ("language", "hi"),
        ("word_timestamps", "true"),
        ("redact_pii", "false"),
        ("numerals", "true"),
        ("eou_timeout_ms", "700"),
        ("max_words", "12"),
        ("keywords", "Smallest:2,Pulse:1.5,Waves"),
        ("external_session_id", "call-7"),
    ]


def test_query_without_model() -> None:
    settings = Settings(model="pulse-2", diarize=True)
    assert settings.query(include_model=False) == [("language", "en"), ("diarize", "true")]
    assert settings.query()[0] == ("model", "pulse-2")


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_query_booleans_are_lowercase(name: str) -> None:
    assert (name, "true") in Settings(**{name: True}).query()
    assert (name, "false") in Settings(**{name: False}).query()
    assert all(key != name for key, _ in Settings(**{name: None}).query())


SETTABLE: dict[str, st.SearchStrategy[object]] = {
    **{name: st.booleans() for name in BOOL_FIELDS},
    "language": st.sampled_from(list(Language)),
    "numerals": st.sampled_from(["auto", "always", "none", True, False]),
    "eou_timeout_ms": st.integers(100, 10_000),
    "max_words": st.integers(1, 100),
    "keywords": st.lists(st.sampled_from(["a", "b:2", ("c", 1.5)]), min_size=1, max_size=3),
    "external_session_id": st.text(alphabet=ID_ALPHABET, min_size=1, max_size=10),
}


@given(st.data())
def test_query_order_is_field_order_whatever_the_argument_order(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(SETTABLE)), unique=True))
    names = data.draw(st.permutations(names))
    kwargs = {name: data.draw(SETTABLE[name]) for name in names}
    settings = Settings(**kwargs)
    keys = [key for key, _ in settings.query()]
    assert keys == [name for name in Settings.FIELDS if getattr(settings, name) is not None]
    assert set(keys) == {"model", "language", *names}
    assert settings.query() == Settings(**dict(reversed(kwargs.items()))).query()
    assert all(isinstance(value, str) for _, value in settings.query())


# -- evolve / from_mapping / changed_fields -----------------------------------


def test_evolve_applies_and_validates_changes() -> None:
    base = Settings()
    changed = base.evolve(language="ES", diarize=True)
    assert changed.language is Language.ES
    assert changed.diarize is True
    assert base.language is Language.EN  # the original is untouched
    with pytest.raises(ConfigurationError) as info:
        base.evolve(eou_timeout_ms=5)
    check_error(info.value, "eou_timeout_ms", 5, "an integer from 100 to 10000")


@pytest.mark.parametrize("name", ["lang", "Language", "encoding", "sample_rate", "wordTimestamps"])
def test_evolve_rejects_unknown_field_names(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings().evolve(**{name: "x"})
    err = info.value
    check_error(err, name, "x", "a Settings field")
    for field in Settings.FIELDS:
        assert field in err.allowed


def test_from_mapping() -> None:
    settings = Settings.from_mapping({"language": "de", "punctuate": False})
    assert settings == Settings(language=Language.DE, punctuate=False)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"language": "de", "bogus": 1})
    assert info.value.field == "bogus"


def test_changed_fields() -> None:
    base = Settings()
    assert base.changed_fields(Settings()) == ()
    other = Settings(language="hi", keywords=["x"], diarize=False)
    assert base.changed_fields(other) == ("language", "diarize", "keywords")
    assert other.changed_fields(base) == ("language", "diarize", "keywords")
    # Equal after conversion counts as unchanged.
    assert Settings(keywords=[("x", 2)]).changed_fields(Settings(keywords="x:2")) == ()
    assert Settings(numerals="always").changed_fields(Settings(numerals=True)) == ()


@given(st.data())
def test_changed_fields_property(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(SETTABLE)), unique=True))
    base = Settings()
    other = base.evolve(**{name: data.draw(SETTABLE[name]) for name in names})
    changed = base.changed_fields(other)
    assert changed == tuple(n for n in Settings.FIELDS if getattr(base, n) != getattr(other, n))
    assert set(changed) <= {"language", *names}
    for name in changed:
        assert base.evolve(**{name: getattr(other, name)}).changed_fields(base) == (name,)
