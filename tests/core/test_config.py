"""ConnectionConfig and ReconnectPolicy: URL, headers, validation, and the API key's secrecy."""

from __future__ import annotations

import math
import re
import traceback
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse_core import (
    DEFAULT_BASE_URL,
    LEGACY_PATH,
    LIVE_PATH,
    SAMPLE_RATES,
    ConfigurationError,
    Connect,
    ConnectionConfig,
    Encoding,
    Language,
    ReconnectPolicy,
    Region,
    Settings,
)

KEY = "sk_live_TOPSECRET_4f9a1c2e7b"
US_HOST = "api.us.smallest.ai"
INDIA_HOST = "api.smallest.ai"
QUERY_TAIL = "encoding=linear16&sample_rate=16000&word_timestamps=true"


def config(**options: Any) -> ConnectionConfig:
    return ConnectionConfig(api_key=KEY, **options)


def error_text(err: BaseException) -> str:
    """Every rendering of an exception a user might see or log."""
    return "\n".join(
        [
            str(err),
            repr(err),
            repr(err.args),
            repr(vars(err)),
            "".join(traceback.format_exception(err)),
        ]
    )


# -- url() --------------------------------------------------------------------


def test_default_url_exactly() -> None:
    assert config().url() == (
        "wss://api.smallest.ai/waves/v1/stt/live?model=pulse&language=en&" + QUERY_TAIL
    )


def test_url_percent_encodes_spaces_as_20_and_keeps_comma_and_colon() -> None:
    settings = Settings(keywords=["New York:2", "AT&T", "x y z:1.5", "a/b=c?d#e+f"])
    url = config(settings=settings).url()
    assert url == (
        "wss://api.smallest.ai/waves/v1/stt/live?model=pulse&language=en"
        "&keywords=New%20York:2,AT%26T,x%20y%20z:1.5,a%2Fb%3Dc%3Fd%23e%2Bf&" + QUERY_TAIL
    )
    assert " " not in url
    assert "+" not in url


def test_url_percent_encodes_non_ascii_as_utf8() -> None:
    url = config(settings=Settings(keywords=["Zürich"])).url()
    assert "keywords=Z%C3%BCrich&" in url


def test_url_with_every_kind_of_setting() -> None:
    settings = Settings(
        language="hi",
        word_timestamps=False,
        numerals="none",
        eou_timeout_ms=800,
        max_words=5,
        external_session_id="call.1",
    )
    assert config(settings=settings).url() == (
        "wss://api.smallest.ai/waves/v1/stt/live?model=pulse&language=hi&word_timestamps=false"
        "&numerals=false&eou_timeout_ms=800&max_words=5&external_session_id=call.1"
        "&encoding=linear16&sample_rate=16000"
    )


def test_legacy_path_omits_model() -> None:
    cfg = config(path=LEGACY_PATH, settings=Settings(model="pulse-2"))
    assert cfg.legacy
    assert cfg.url() == ("wss://api.smallest.ai/waves/v1/pulse/get_text?language=en&" + QUERY_TAIL)
    assert config(path=LEGACY_PATH + "/").legacy
    assert not config().legacy
    assert "model=" not in config(path=LEGACY_PATH + "/").url()


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [
        ("linear16", 48000),
        ("linear32", 22050),
        ("mulaw", 8000),
        ("alaw", 8000),
        ("opus", 24000),
        ("ogg_opus", 16000),
    ],
)
def test_url_carries_encoding_and_sample_rate(encoding: str, rate: int) -> None:
    url = config(encoding=encoding, sample_rate=rate).url()
    assert url.endswith(f"&encoding={encoding}&sample_rate={rate}&word_timestamps=true")


def test_word_timestamps_added_only_when_unset_and_replay_alignment_on() -> None:
    assert config().url().endswith("&word_timestamps=true")
    unset_off = config(replay_alignment=False).url()
    assert "word_timestamps" not in unset_off
    assert unset_off.endswith("&sample_rate=16000")
    user_false = config(settings=Settings(word_timestamps=False)).url()
    assert user_false.count("word_timestamps") == 1
    assert "word_timestamps=false" in user_false
    assert "word_timestamps=true" not in user_false
    user_true = config(settings=Settings(word_timestamps=True)).url()
    assert user_true.count("word_timestamps") == 1
    assert "language=en&word_timestamps=true&encoding" in user_true
    user_false_no_align = config(
        settings=Settings(word_timestamps=False), replay_alignment=False
    ).url()
    assert user_false_no_align.count("word_timestamps=false") == 1


def test_url_for_other_settings_leaves_config_untouched() -> None:
    cfg = config()
    url = cfg.url(Settings(language="de", diarize=True))
    assert "language=de&diarize=true&" in url
    assert "language=en" in cfg.url()
    assert cfg.settings == Settings()


@pytest.mark.parametrize(
    ("base_url", "prefix"),
    [
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/waves/v1/stt/live?"),
        ("ws://127.0.0.1:8765/", "ws://127.0.0.1:8765/waves/v1/stt/live?"),
        ("wss://proxy.example.com/pulse", "wss://proxy.example.com/pulse/waves/v1/stt/live?"),
        ("wss://proxy.example.com/pulse//", "wss://proxy.example.com/pulse/waves/v1/stt/live?"),
        ("ws://[::1]:9000", "ws://[::1]:9000/waves/v1/stt/live?"),
    ],
)
def test_url_joins_base_url_and_path(base_url: str, prefix: str) -> None:
    assert config(base_url=base_url).url().startswith(prefix)


KEYWORD_WORD = st.text(
    alphabet=st.characters(blacklist_characters=",:", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=12,
).filter(lambda word: word.strip() != "")


@given(
    words=st.lists(KEYWORD_WORD, min_size=1, max_size=8),
    language=st.sampled_from([lang for lang in Language if Region.INDIA in lang.regions]),
    diarize=st.one_of(st.none(), st.booleans()),
    legacy=st.booleans(),
    align=st.booleans(),
)
def test_url_query_decodes_back_to_the_parameters(
    words: list[str], language: Language, diarize: bool | None, legacy: bool, align: bool
) -> None:
    settings = Settings(keywords=words, language=language, diarize=diarize)
    cfg = config(
        settings=settings, path=LEGACY_PATH if legacy else LIVE_PATH, replay_alignment=align
    )
    parts = urlsplit(cfg.url())
    assert parts.fragment == ""
    expected = [
        *settings.query(include_model=not legacy),
        ("encoding", "linear16"),
        ("sample_rate", "16000"),
    ]
    if align:
        expected.append(("word_timestamps", "true"))
    assert parse_qsl(parts.query, keep_blank_values=True) == expected
    assert " " not in parts.query


# -- headers ------------------------------------------------------------------


def test_headers_put_the_bearer_key_first() -> None:
    assert config().headers() == (("Authorization", f"Bearer {KEY}"),)
    cfg = config(extra_headers={"X-Trace-Id": "abc", "User-Agent": "me/1.0"})
    assert cfg.headers() == (
        ("Authorization", f"Bearer {KEY}"),
        ("X-Trace-Id", "abc"),
        ("User-Agent", "me/1.0"),
    )


def test_extra_headers_as_pairs_keep_order_and_duplicates() -> None:
    cfg = config(extra_headers=[("X-B", "2"), ["X-A", "1"], ("X-B", "3")])
    assert cfg.extra_headers == (("X-B", "2"), ("X-A", "1"), ("X-B", "3"))
    assert cfg.headers()[1:] == cfg.extra_headers


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "authorization",
        "AUTHORIZATION",
        "Host",
        "host",
        "Sec-WebSocket-Key",
        "sec-websocket-key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
        "Connection",
        "Upgrade",
        "Content-Length",
        "Transfer-Encoding",
    ],
)
def test_extra_headers_reject_reserved_names(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(extra_headers={name: "x"})
    err = info.value
    assert err.field == "extra_headers"
    assert err.value == name
    assert f"invalid extra_headers={name!r}" in str(err)
    assert "handshake" in err.allowed


@pytest.mark.parametrize("name", ["", "X Trace", "X:Trace", "X-Tr\u00e4ce", "X\r\nY", "(x)", 42])
def test_extra_headers_reject_names_that_are_not_tokens(name: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(extra_headers=[(name, "v")])
    assert info.value.field == "extra_headers"
    assert f"invalid extra_headers={name!r}" in str(info.value)
    assert "token characters" in str(info.value)


@pytest.mark.parametrize(
    "value", ["a\r\nX-Injected: 1", "a\nb", "nul\x00", "del\x7f", "\x1b[0m", 7]
)
def test_extra_headers_reject_values_with_control_characters(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(extra_headers={"X-Note": value})
    err = info.value
    assert err.field == "extra_headers"
    assert "X-Note" in str(err)
    assert "without control characters" in str(err)


@pytest.mark.parametrize("value", ["X-A: b", 5, None, [("X-A",)], [("X-A", "b", "c")], ["X-A"]])
def test_extra_headers_of_the_wrong_shape_are_rejected(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(extra_headers=value)
    assert info.value.field == "extra_headers"


# -- region -------------------------------------------------------------------


def test_region_shortcut_sets_the_host() -> None:
    us = config(region=Region.US)
    assert us.resolved_base_url == "wss://api.us.smallest.ai"
    assert us.url().startswith("wss://api.us.smallest.ai/waves/v1/stt/live?")
    assert us.resolved_region is Region.US
    india = config(region="INDIA")
    assert india.region is Region.INDIA
    assert india.resolved_base_url == "wss://api.smallest.ai"
    assert config(region="us").region is Region.US


def test_default_host_is_the_india_host() -> None:
    cfg = config()
    assert cfg.resolved_base_url == DEFAULT_BASE_URL == "wss://api.smallest.ai"
    assert cfg.resolved_region is Region.INDIA
    assert Region.US.host == US_HOST
    assert Region.INDIA.host == INDIA_HOST


def test_known_host_sets_the_region() -> None:
    assert config(base_url="wss://api.us.smallest.ai").resolved_region is Region.US
    assert config(base_url="wss://api.smallest.ai/").resolved_region is Region.INDIA
    assert config(base_url="wss://proxy.example.com").resolved_region is None


@pytest.mark.parametrize("region", ["eu", "", "USA", 1])
def test_unknown_region_is_rejected(region: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(region=region)
    assert info.value.field == "region"
    assert f"invalid region={region!r}" in str(info.value)
    assert "'india' or 'us'" in str(info.value)


@pytest.mark.parametrize(
    ("region", "base_url", "other"),
    [
        (Region.US, "wss://api.smallest.ai", "india"),
        (Region.INDIA, "wss://api.us.smallest.ai", "us"),
        (Region.US, "wss://api.smallest.ai:443/", "india"),
    ],
)
def test_region_conflicting_with_base_url_is_rejected(
    region: Region, base_url: str, other: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(region=region, base_url=base_url)
    err = info.value
    assert err.field == "region"
    assert f"invalid region={region.value!r}" in str(err)
    assert f"the region of base_url ({other})" in str(err)


def test_region_matching_or_naming_a_custom_host_is_accepted() -> None:
    cfg = config(region=Region.US, base_url="wss://api.us.smallest.ai")
    assert cfg.resolved_region is Region.US
    proxy = config(region=Region.US, base_url="wss://proxy.example.com")
    assert proxy.resolved_base_url == "wss://proxy.example.com"
    assert proxy.resolved_region is Region.US


# -- language / region ---------------------------------------------------------

US_ONLY = ["ja", "zh", "yue", "ko", "multi-asian"]
INDIA_ONLY = ["ta", "te", "kn", "ml", "multi-south-indic"]


@pytest.mark.parametrize("code", US_ONLY)
def test_east_asian_languages_need_the_us_host(code: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(settings=Settings(language=code))
    err = info.value
    assert err.field == "language"
    assert f"invalid language={code!r}" in str(err)
    assert "india host (api.smallest.ai)" in str(err)
    assert "wss://api.us.smallest.ai" in str(err)
    assert "region='us'" in str(err)
    with pytest.raises(ConfigurationError, match=re.escape("api.us.smallest.ai")):
        config(region=Region.INDIA, settings={"language": code})
    assert config(region=Region.US, settings=Settings(language=code)).settings.language == code
    assert config(base_url="wss://api.us.smallest.ai", settings={"language": code})


@pytest.mark.parametrize("code", INDIA_ONLY)
def test_south_indian_languages_need_the_india_host(code: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(region=Region.US, settings=Settings(language=code))
    err = info.value
    assert err.field == "language"
    assert f"invalid language={code!r}" in str(err)
    assert "us host (api.us.smallest.ai)" in str(err)
    assert "wss://api.smallest.ai" in str(err)
    assert "region='india'" in str(err)
    with pytest.raises(ConfigurationError, match=re.escape("wss://api.smallest.ai")):
        config(base_url="wss://api.us.smallest.ai", settings={"language": code})
    assert config(settings=Settings(language=code)).settings.language == code
    assert config(region="india", settings=Settings(language=code))


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("region", list(Region))
def test_language_region_table(language: Language, region: Region) -> None:
    expected_ok = not (
        (language.value in US_ONLY and region is Region.INDIA)
        or (language.value in INDIA_ONLY and region is Region.US)
    )
    assert (region in language.regions) == expected_ok
    if expected_ok:
        assert config(region=region, settings=Settings(language=language))
    else:
        with pytest.raises(ConfigurationError):
            config(region=region, settings=Settings(language=language))


@pytest.mark.parametrize(
    "base_url",
    ["ws://127.0.0.1:8765", "ws://localhost:9000", "ws://[::1]:9000", "wss://proxy.example.com"],
)
@pytest.mark.parametrize("code", US_ONLY + INDIA_ONLY)
def test_custom_hosts_skip_the_language_check(base_url: str, code: str) -> None:
    cfg = config(base_url=base_url, settings=Settings(language=code))
    assert cfg.resolved_region is None
    assert f"language={code}&" in cfg.url()


def test_with_settings_checks_the_language() -> None:
    cfg = config()
    switched = cfg.with_settings(Settings(language="hi"))
    assert switched.settings.language is Language.HI
    assert cfg.settings.language is Language.EN
    with pytest.raises(ConfigurationError, match=re.escape("api.us.smallest.ai")):
        cfg.with_settings(Settings(language="ja"))
    us = config(region="us")
    with pytest.raises(ConfigurationError, match="region='india'"):
        us.with_settings(Settings(language="ta"))
    assert us.with_settings(Settings(language="ja")).settings.language is Language.JA


def test_settings_may_be_a_mapping_but_nothing_else() -> None:
    assert config(settings={"language": "de"}).settings == Settings(language="de")
    with pytest.raises(ConfigurationError) as info:
        config(settings={"bogus": True})
    assert info.value.field == "bogus"
    with pytest.raises(ConfigurationError) as info:
        config(settings="language=de")
    assert info.value.field == "settings"


# -- base_url -----------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "ws://127.0.0.1",
        "ws://127.0.0.1:8765",
        "ws://127.9.9.9:1",
        "ws://[::1]:8765",
        "ws://localhost",
        "ws://localhost:8765/emulator",
        "ws://LOCALHOST:8765",
        "ws://emulator.localhost:8765",
    ],
)
def test_plain_ws_to_loopback_is_allowed(base_url: str) -> None:
    assert config(base_url=base_url).url().startswith("ws://")


@pytest.mark.parametrize(
    "base_url",
    [
        "ws://example.com",
        "ws://api.smallest.ai",
        "ws://10.0.0.1:8765",
        "ws://192.168.1.5",
        "ws://0.0.0.0:8765",
        "ws://[::]:8765",
        "ws://localhost.example.com",
        "ws://127.0.0.1.nip.io",
    ],
)
def test_plain_ws_elsewhere_needs_allow_insecure(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    err = info.value
    assert err.field == "base_url"
    assert f"invalid base_url={base_url!r}" in str(err)
    assert "wss://" in err.allowed
    assert "allow_insecure=True" in err.allowed
    assert config(base_url=base_url, allow_insecure=True).url().startswith(base_url + "/")


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.smallest.ai",
        "http://127.0.0.1:8765",
        "api.smallest.ai",
        "wss://",
        "wss:///path",
        "",
    ],
)
def test_base_url_needs_a_websocket_scheme_and_host(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    assert info.value.field == "base_url"
    assert "a ws:// or wss:// URL with a host" in str(info.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "wss://a..b",
        "wss://-api.example.com",
        "wss://api-.example.com",
        "wss://api_example.com",
        "wss://api example.com",
        "wss://" + "a" * 64 + ".example.com",
        "wss://" + ".".join(["abcdefghij"] * 24),  # 263 characters
        "wss://...",
        "wss://" + "ü" * 70 + ".example",  # IDNA cannot encode it
    ],
)
def test_base_url_host_must_be_a_name_or_an_address(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    assert info.value.field == "base_url"
    assert "a host name or IP address" in str(info.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "wss://api.smallest.ai.",
        "wss://xn--bcher-kva.example",
        "wss://bücher.example",
        "wss://10.0.0.7:443",
        "wss://[2001:db8::1]",
        "wss://" + "a" * 63 + ".example.com",
        "wss://localhost",
    ],
)
def test_base_url_hosts_that_are_names_or_addresses_are_taken(base_url: str) -> None:
    assert config(base_url=base_url).url().startswith(base_url.rstrip("/") + "/")


@pytest.mark.parametrize(
    "base_url",
    [
        "wss://api.smallest.ai?x=1",
        "wss://api.smallest.ai/?token=abc",
        "wss://api.smallest.ai#frag",
        "wss://api.example.com/?",  # an empty query or fragment is one too
        "wss://api.example.com#",
        "wss://user@api.smallest.ai",
        "wss://user:pw@api.smallest.ai",
        "wss://:pw@api.smallest.ai",
    ],
)
def test_base_url_with_query_fragment_or_credentials_is_rejected(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    assert info.value.field == "base_url"
    assert "no query, fragment or credentials" in str(info.value)


@pytest.mark.parametrize("base_url", ["wss://api.example.com:99999", "wss://api.example.com:ab"])
def test_base_url_with_an_invalid_port_is_rejected(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    assert info.value.field == "base_url"
    assert "a port from 1 to 65535" in str(info.value)


@pytest.mark.parametrize(
    "path", ["waves/v1/stt/live", "", "/live?x=1", "/waves/v1/stt/live#x", None]
)
def test_path_must_be_absolute_without_query_or_fragment(path: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(path=path)
    assert info.value.field == "path"
    assert "/waves/v1/stt/live" in info.value.allowed


# -- audio format -------------------------------------------------------------


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_every_documented_sample_rate_is_accepted(rate: int) -> None:
    assert SAMPLE_RATES == (8000, 16000, 22050, 24000, 44100, 48000)
    cfg = config(sample_rate=rate)
    assert f"&sample_rate={rate}&" in cfg.url()
    assert cfg.ticks_per_second == rate


@pytest.mark.parametrize("rate", [0, -16000, 11025, 16001, 32000, 96000, True, "16000", None])
def test_other_sample_rates_are_rejected(rate: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(sample_rate=rate)
    err = info.value
    assert err.field == "sample_rate"
    assert f"invalid sample_rate={rate!r}" in str(err)
    assert "one of 8000, 16000, 22050, 24000, 44100, 48000" in str(err)


def test_float_sample_rate_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        config(sample_rate=16000.0)


@pytest.mark.parametrize("encoding", ["mulaw", "alaw", Encoding.MULAW])
@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_g711_needs_8000(encoding: str, rate: int) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(encoding=encoding, sample_rate=rate)
    err = info.value
    assert err.field == "sample_rate"
    assert f"invalid sample_rate={rate}" in str(err)
    assert f"8000 with encoding={Encoding(encoding).value}" in str(err)
    assert config(encoding=encoding, sample_rate=8000).encoding is Encoding(encoding)


@pytest.mark.parametrize("encoding", ["LINEAR16", "pcm", "wav", "", None, 16])
def test_unknown_encoding_is_rejected(encoding: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(encoding=encoding)
    assert info.value.field == "encoding"
    for member in Encoding:
        assert member.value in info.value.allowed


@pytest.mark.parametrize(
    ("encoding", "rate", "good", "bad"),
    [
        ("linear16", 16000, [2, 4096, 8192], [1, 4095, 4097]),
        ("linear32", 16000, [4, 4096, 4100], [2, 4098, 4097]),
        ("mulaw", 8000, [1, 4095], []),
        ("alaw", 8000, [1, 4097], []),
        ("opus", 48000, [1, 4095], []),
        ("ogg_opus", 48000, [1, 65307], []),
    ],
)
def test_chunk_bytes_is_a_multiple_of_the_sample_width(
    encoding: str, rate: int, good: list[int], bad: list[int]
) -> None:
    for size in good:
        assert config(encoding=encoding, sample_rate=rate, chunk_bytes=size).chunk_bytes == size
    width = Encoding(encoding).sample_width
    for size in bad:
        with pytest.raises(ConfigurationError) as info:
            config(encoding=encoding, sample_rate=rate, chunk_bytes=size)
        assert info.value.field == "chunk_bytes"
        assert f"invalid chunk_bytes={size}" in str(info.value)
        assert f"a multiple of the {width}-byte sample size" in str(info.value)


# -- numeric options ----------------------------------------------------------

POSITIVE = [
    "keepalive_interval",
    "keepalive_silence",
    "finalize_timeout",
    "close_timeout",
    "connect_timeout",
    "replay_seconds",
    "ttfs_p99_latency",
]
COUNTS = [
    "chunk_bytes",
    "max_message_size",
    "max_pending_finalizes",
    "max_pending_outputs",
    "latency_samples",
]
NOT_A_NUMBER = [math.nan, math.inf, -math.inf, True, False, "1", None]


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.001, *NOT_A_NUMBER])
def test_positive_options_reject_bad_values(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(**{name: value})
    err = info.value
    assert err.field == name
    assert f"invalid {name}={value!r}" in str(err)
    assert "a finite number > 0" in str(err)


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("value", [0.001, 1, 2.5, 1e6])
def test_positive_options_accept_positive_numbers(name: str, value: float) -> None:
    assert getattr(config(**{name: value}), name) == value


@pytest.mark.parametrize("value", [-1, -0.001, *NOT_A_NUMBER])
def test_max_chunk_delay_rejects_bad_values(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(max_chunk_delay=value)
    assert info.value.field == "max_chunk_delay"
    assert "a finite number >= 0" in str(info.value)


def test_max_chunk_delay_accepts_zero() -> None:
    assert config(max_chunk_delay=0).max_chunk_delay == 0


@pytest.mark.parametrize("name", COUNTS)
@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, math.nan, math.inf, "8", None])
def test_count_options_reject_bad_values(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(**{name: value})
    err = info.value
    assert err.field == name
    assert f"invalid {name}={value!r}" in str(err)
    assert "an integer of at least 1" in str(err)


@pytest.mark.parametrize("name", COUNTS)
def test_count_options_accept_positive_ints(name: str) -> None:
    assert getattr(config(**{name: 2}), name) == 2


def test_config_is_frozen() -> None:
    cfg = config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.api_key = "sk_other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.sample_rate = 8000  # type: ignore[misc]


def test_ticks_per_second() -> None:
    assert config(sample_rate=24000).ticks_per_second == 24000
    assert config(encoding="opus", sample_rate=16000).ticks_per_second == 48000
    assert config(encoding="ogg_opus", sample_rate=8000).ticks_per_second == 48000
    assert config(encoding="mulaw", sample_rate=8000).ticks_per_second == 8000


# -- ReconnectPolicy ------------------------------------------------------------


def test_reconnect_policy_defaults_and_sequence() -> None:
    policy = ReconnectPolicy()
    assert [policy.raw_delay(n) for n in range(1, 9)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        8.0,
        8.0,
    ]
    assert policy.delay(1, 0.0) == 0.25
    assert policy.delay(3, 0.5) == 0.75
    assert policy.delay(6, 0.999) == pytest.approx(8.0 * (1 - 0.5 * 0.999))
    # Draws outside [0, 1) are clamped.
    assert policy.delay(2, -5.0) == 0.5
    assert policy.delay(2, 7.0) == 0.25
    assert policy.max_attempts == 10


def test_reconnect_policy_from_a_mapping() -> None:
    cfg = config(reconnect={"base_delay": 1.0, "max_attempts": None})
    assert cfg.reconnect == ReconnectPolicy(base_delay=1.0, max_attempts=None)
    with pytest.raises(ConfigurationError) as info:
        config(reconnect="fast")
    assert info.value.field == "reconnect"
    with pytest.raises(ConfigurationError) as info:
        config(reconnect={"jitter": 2.0})
    assert info.value.field == "jitter"


def test_reconnect_mapping_with_unknown_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        config(reconnect={"base_dealy": 1.0})


@given(
    base=st.floats(min_value=0, max_value=1000),
    multiplier=st.floats(min_value=1, max_value=100),
    max_delay=st.floats(min_value=0, max_value=10_000),
    jitter=st.floats(min_value=0, max_value=1),
    attempt=st.integers(min_value=1, max_value=100_000),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_delay_lies_between_jittered_and_raw(
    base: float, multiplier: float, max_delay: float, jitter: float, attempt: int, draw: float
) -> None:
    policy = ReconnectPolicy(
        base_delay=base, multiplier=multiplier, max_delay=max_delay, jitter=jitter
    )
    raw = policy.raw_delay(attempt)
    delay = policy.delay(attempt, draw)
    assert raw * (1 - jitter) <= delay <= raw <= max_delay
    assert delay >= 0
    if attempt <= 65:
        assert raw == min(max_delay, base * multiplier ** (attempt - 1))


def test_delay_with_a_large_multiplier_is_capped() -> None:
    policy = ReconnectPolicy(multiplier=1e6, max_attempts=None)
    assert policy.delay(100, 0.0) == policy.max_delay


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("jitter", 1.01, "a fraction from 0 to 1"),
        ("jitter", 5, "a fraction from 0 to 1"),
        ("jitter", -0.1, ">= 0"),
        ("multiplier", 0.99, "a number >= 1"),
        ("multiplier", 0.5, "a number >= 1"),
        ("multiplier", 0, "> 0"),
        ("multiplier", math.inf, "> 0"),
        ("max_attempts", 0, "an integer of at least 1"),
        ("max_attempts", True, "an integer of at least 1"),
        ("max_attempts", 2.0, "an integer of at least 1"),
        ("base_delay", -1, ">= 0"),
        ("max_delay", math.nan, ">= 0"),
        ("stable_after", True, ">= 0"),
        ("max_retry_after", math.inf, ">= 0"),
        ("concurrency_delay", -0.5, ">= 0"),
    ],
)
def test_reconnect_policy_rejects_bad_values(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ReconnectPolicy(**{name: value})
    err = info.value
    assert err.field == name
    assert f"invalid {name}={value!r}" in str(err)
    assert allowed in str(err)


def test_reconnect_policy_accepts_edges() -> None:
    policy = ReconnectPolicy(base_delay=0, multiplier=1, max_delay=0, jitter=1, max_attempts=1)
    assert policy.delay(5, 0.5) == 0.0
    assert ReconnectPolicy(jitter=0).delay(3, 0.9) == ReconnectPolicy().raw_delay(3)


# -- the API key stays secret ---------------------------------------------------


def test_key_absent_from_repr_and_str() -> None:
    cfg = config(extra_headers={"X-A": "b"}, settings=Settings(keywords=["x"]))
    for text in (repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}", repr([cfg]), repr({"c": cfg})):
        assert KEY not in text
        assert "api_key=<redacted>" in text
    assert "extra_headers=(('X-A', 'b'),)" in repr(cfg)


def test_key_absent_from_every_url() -> None:
    cfg = config(settings=Settings(keywords=["x"], external_session_id="s1"))
    assert KEY not in cfg.url()
    assert KEY not in cfg.url(Settings(language="hi"))
    assert KEY not in config(path=LEGACY_PATH).url()


def test_key_absent_from_the_connect_command_repr() -> None:
    cfg = config(extra_headers={"X-Trace": "t1"})
    command = Connect(url=cfg.url(), headers=cfg.headers(), attempt=1, timeout=1.0)
    assert command.headers[0] == ("Authorization", f"Bearer {KEY}")  # the transport needs it
    for text in (repr(command), str(command), repr([command])):
        assert KEY not in text
        assert "('Authorization', '<redacted>')" in text
        assert "('X-Trace', 't1')" in text


def test_lowercase_authorization_is_redacted_in_connect_repr() -> None:
    command = Connect(
        url="wss://x", headers=(("authorization", f"Bearer {KEY}"),), attempt=2, timeout=3.0
    )
    assert KEY not in repr(command)


BAD_KEYS = [
    f"{KEY} ",
    f"{KEY}\n",
    f"{KEY}\r\n",
    f" {KEY}",
    f"{KEY}\t",
    f"Bearer {KEY}",
    f"{KEY}\x00",
    f"{KEY}\x7f",
    f"{KEY}\u00e9",
    f"{KEY}\u200b",
]


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_invalid_key_is_not_echoed(bad_key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionConfig(api_key=bad_key)
    err = info.value
    assert err.field == "api_key"
    assert err.value == "<redacted>"
    assert "printable ASCII without spaces" in str(err)
    assert KEY not in error_text(err)


@pytest.mark.parametrize("bad_key", ["", None, 42, b"sk_bytes_key"])
def test_missing_or_non_string_key_is_rejected(bad_key: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        ConnectionConfig(api_key=bad_key)  # type: ignore[arg-type]
    assert info.value.field == "api_key"
    assert info.value.value == "<redacted>"
    assert "sk_bytes_key" not in error_text(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"base_url": "wss://api.smallest.ai?x=1"},
        {"base_url": "ws://example.com"},
        {"region": "eu"},
        {"region": "us", "base_url": "wss://api.smallest.ai"},
        {"sample_rate": 12345},
        {"encoding": "mulaw"},
        {"encoding": "flac"},
        {"chunk_bytes": 4095},
        {"keepalive_interval": 0},
        {"max_chunk_delay": -1},
        {"path": "live"},
        {"settings": {"language": "ja"}},
        {"settings": {"bogus": 1}},
        {"settings": "nope"},
        {"reconnect": {"jitter": 3}},
        {"reconnect": 1},
        {"extra_headers": {"Authorization": f"Bearer {KEY}"}},
        {"extra_headers": {"X-Api-Key": f"{KEY}\r\n"}},
        {"extra_headers": "nope"},
    ],
)
def test_other_configuration_errors_do_not_contain_the_key(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(**options)
    assert KEY not in error_text(info.value)


def test_language_error_from_with_settings_does_not_contain_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        config().with_settings(Settings(language="ko"))
    assert KEY not in error_text(info.value)


@pytest.mark.parametrize(
    "base_url", [f"wss://{KEY}@api.smallest.ai", f"wss://user:{KEY}@api.smallest.ai"]
)
def test_credentials_in_base_url_are_not_echoed(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config(base_url=base_url)
    assert KEY not in error_text(info.value)
