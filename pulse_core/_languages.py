"""Language codes and which regional host serves them."""

from __future__ import annotations

import enum

__all__ = ["CURRENT_STREAMING_LANGUAGES", "Language", "Region"]


class Region(enum.StrEnum):
    """A Pulse deployment. Each region is its own host."""

    INDIA = "india"
    US = "us"

    @property
    def host(self) -> str:
        return _REGION_HOSTS[self]


_REGION_HOSTS = {Region.INDIA: "api.smallest.ai", Region.US: "api.us.smallest.ai"}


class Language(enum.StrEnum):
    """Every language code the streaming API has documented.

    Plain strings are accepted wherever a ``Language`` is: ``Settings(language="hi")``.
    """

    # Current streaming codes (21 single languages).
    EN = "en"
    HI = "hi"
    DE = "de"
    ES = "es"
    RU = "ru"
    IT = "it"
    FR = "fr"
    NL = "nl"
    PT = "pt"
    ZH = "zh"
    YUE = "yue"
    JA = "ja"
    KO = "ko"
    GU = "gu"
    MR = "mr"
    OR = "or"
    BN = "bn"
    TA = "ta"
    TE = "te"
    KN = "kn"
    ML = "ml"
    # Auto-detecting aggregators.
    NORTH_INDIC = "north_indic"
    MULTI_ASIAN = "multi-asian"
    MULTI_SOUTH_INDIC = "multi-south-indic"
    # Codes from the older language list (legacy endpoint documentation).
    BG = "bg"
    CS = "cs"
    DA = "da"
    ET = "et"
    FI = "fi"
    HU = "hu"
    LT = "lt"
    LV = "lv"
    MT = "mt"
    PA = "pa"
    PL = "pl"
    RO = "ro"
    SK = "sk"
    SV = "sv"
    UK = "uk"
    MULTI = "multi"
    MULTI_EU = "multi-eu"

    @property
    def regions(self) -> frozenset[Region]:
        """The regions whose host serves this language."""
        return _ONLY_IN.get(self, _EVERYWHERE)

    @classmethod
    def coerce(cls, value: object) -> Language:
        """Return the ``Language`` for ``value`` (a member or its code).

        Raises ``ValueError`` for anything else.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = _BY_KEY.get(_key(value))
            if member is not None:
                return member
        raise ValueError(value)


def _key(code: str) -> str:
    return code.strip().lower().replace("_", "-")


# Codes are matched ignoring case and the -/_ spelling (``north-indic``, ``MULTI_EU``).
_BY_KEY = {_key(member.value): member for member in Language}
_EVERYWHERE = frozenset(Region)
# East Asian codes are only served from the US host; the India host closes the
# socket without a transcript. South Indian codes are only served from the India
# host; the US host answers LANGUAGE_NOT_ENABLED_IN_REGION.
_ONLY_IN: dict[Language, frozenset[Region]] = {
    **{
        code: frozenset({Region.US})
        for code in (Language.ZH, Language.YUE, Language.JA, Language.KO, Language.MULTI_ASIAN)
    },
    **{
        code: frozenset({Region.INDIA})
        for code in (
            Language.TA,
            Language.TE,
            Language.KN,
            Language.ML,
            Language.MULTI_SOUTH_INDIC,
        )
    },
}

#: The codes the current streaming endpoint documents (21 languages, 3 aggregators).
CURRENT_STREAMING_LANGUAGES: frozenset[Language] = frozenset(list(Language)[:24])
