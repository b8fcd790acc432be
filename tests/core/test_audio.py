"""Encodings, Opus packet durations (RFC 6716 section 3.1) and Ogg page splitting."""

from __future__ import annotations

import struct
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse_core import SAMPLE_RATES, Encoding, OggPageSplitter, opus_packet_ticks
from tests.core.ogg import HEADERS, OPUS_HEAD, OPUS_TAGS, audio_page, ogg_page, toc

# -- Encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "width"),
    [
        (Encoding.LINEAR16, 2),
        (Encoding.LINEAR32, 4),
        (Encoding.ALAW, 1),
        (Encoding.MULAW, 1),
        (Encoding.OPUS, None),
        (Encoding.OGG_OPUS, None),
    ],
)
def test_sample_width(encoding: Encoding, width: int | None) -> None:
    assert encoding.sample_width == width


@pytest.mark.parametrize(
    ("encoding", "byte"),
    [
        (Encoding.LINEAR16, 0x00),
        (Encoding.LINEAR32, 0x00),
        (Encoding.MULAW, 0xFF),
        (Encoding.ALAW, 0xD5),
        (Encoding.OPUS, None),
        (Encoding.OGG_OPUS, None),
    ],
)
def test_silence_byte(encoding: Encoding, byte: int | None) -> None:
    assert encoding.silence_byte == byte
    silence = encoding.silence(8000, 0.01)
    if byte is None:
        assert silence is None
    else:
        assert silence is not None
        assert set(silence) == {byte}


def test_encoding_values_are_the_wire_names() -> None:
    assert [e.value for e in Encoding] == [
        "linear16",
        "linear32",
        "alaw",
        "mulaw",
        "opus",
        "ogg_opus",
    ]
    assert Encoding("ogg_opus") is Encoding.OGG_OPUS


def test_telephony_and_compressed() -> None:
    assert {e for e in Encoding if e.telephony} == {Encoding.ALAW, Encoding.MULAW}
    assert {e for e in Encoding if e.compressed} == {Encoding.OPUS, Encoding.OGG_OPUS}


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_clock_rate(rate: int) -> None:
    for encoding in Encoding:
        expected = 48000 if encoding.compressed else rate
        assert encoding.clock_rate(rate) == expected


@pytest.mark.parametrize("rate", SAMPLE_RATES)
@pytest.mark.parametrize(
    "encoding", [Encoding.LINEAR16, Encoding.LINEAR32, Encoding.ALAW, Encoding.MULAW]
)
def test_100_ms_of_silence_at_every_rate(rate: int, encoding: Encoding) -> None:
    silence = encoding.silence(rate, 0.1)
    assert silence is not None
    width = encoding.sample_width
    assert width is not None
    assert len(silence) == rate // 10 * width
    assert silence == bytes([encoding.silence_byte or 0]) * len(silence)


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_compressed_encodings_have_no_silence(rate: int) -> None:
    assert Encoding.OPUS.silence(rate, 0.1) is None
    assert Encoding.OGG_OPUS.silence(rate, 0.1) is None


def test_silence_lengths_are_whole_samples() -> None:
    assert Encoding.LINEAR16.silence(16000, 0) == b""
    assert len(Encoding.LINEAR16.silence(16000, 1.0) or b"") == 32000
    assert len(Encoding.LINEAR32.silence(22050, 0.02) or b"") == 441 * 4
    assert len(Encoding.MULAW.silence(8000, 0.0001) or b"x") == 1  # 0.8 samples rounds to 1


# -- opus_packet_ticks ------------------------------------------------------------

# RFC 6716 section 3.1, Table 2, frame sizes in milliseconds, written out config by config.
RFC_FRAME_MS: dict[int, Fraction] = {}
for _config in range(32):
    if _config < 12:  # SILK-only NB/MB/WB: 10, 20, 40, 60 ms
        RFC_FRAME_MS[_config] = Fraction((10, 20, 40, 60)[_config % 4])
    elif _config < 16:  # Hybrid SWB/FB: 10, 20 ms
        RFC_FRAME_MS[_config] = Fraction((10, 20)[_config % 2])
    else:  # CELT-only NB/WB/SWB/FB: 2.5, 5, 10, 20 ms
        RFC_FRAME_MS[_config] = (Fraction(5, 2), Fraction(5), Fraction(10), Fraction(20))[
            _config % 4
        ]


def frame_ticks(config: int) -> int:
    ticks = RFC_FRAME_MS[config] * 48
    assert ticks.denominator == 1
    return int(ticks)


def test_rfc_table_spot_checks() -> None:
    # SILK NB 10 ms, SILK WB 60 ms, Hybrid FB 20 ms, CELT NB 2.5 ms, CELT FB 20 ms.
    assert opus_packet_ticks(bytes([toc(0, 0)])) == 480
    assert opus_packet_ticks(bytes([toc(11, 0)])) == 2880
    assert opus_packet_ticks(bytes([toc(15, 0)])) == 960
    assert opus_packet_ticks(bytes([toc(16, 0)])) == 120
    assert opus_packet_ticks(bytes([toc(31, 0)])) == 960
    # The common 20 ms CELT FB stereo packet: TOC 0xFC.
    assert opus_packet_ticks(b"\xfc" + bytes(100)) == 960


@pytest.mark.parametrize("config", range(32))
@pytest.mark.parametrize("stereo", [False, True])
def test_code_0_is_one_frame(config: int, stereo: bool) -> None:
    assert opus_packet_ticks(bytes([toc(config, 0, stereo)]) + b"\x01\x02") == frame_ticks(config)


@pytest.mark.parametrize("config", range(32))
@pytest.mark.parametrize("code", [1, 2])
def test_codes_1_and_2_are_two_frames(config: int, code: int) -> None:
    packet = bytes([toc(config, code), 3]) + bytes(6)
    assert opus_packet_ticks(packet) == 2 * frame_ticks(config)


@pytest.mark.parametrize("config", range(32))
@pytest.mark.parametrize("count", [1, 2, 3, 6, 48])
@pytest.mark.parametrize("flags", [0x00, 0x40, 0x80, 0xC0])  # VBR and padding bits
def test_code_3_counts_frames_from_the_second_byte(config: int, count: int, flags: int) -> None:
    packet = bytes([toc(config, 3), flags | count]) + bytes(4)
    assert opus_packet_ticks(packet) == count * frame_ticks(config)


def test_empty_and_truncated_code_3_packets_last_zero() -> None:
    assert opus_packet_ticks(b"") == 0
    assert opus_packet_ticks(bytearray()) == 0
    for config in range(32):
        assert opus_packet_ticks(bytes([toc(config, 3)])) == 0
        assert opus_packet_ticks(bytes([toc(config, 3, stereo=True)])) == 0


def test_packet_types() -> None:
    packet = bytes([toc(19, 3), 0x85, 0, 0])
    expected = 5 * 960
    assert opus_packet_ticks(packet) == expected
    assert opus_packet_ticks(bytearray(packet)) == expected
    assert opus_packet_ticks(memoryview(packet)) == expected
    assert opus_packet_ticks(memoryview(b"xx" + packet)[2:]) == expected


@given(st.binary(min_size=1, max_size=20))
def test_any_packet_duration_is_a_whole_number_of_frames(packet: bytes) -> None:
    config, code = packet[0] >> 3, packet[0] & 3
    ticks = opus_packet_ticks(packet)
    frames = {0: 1, 1: 2, 2: 2}.get(code)
    if frames is None:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    assert ticks == frames * frame_ticks(config)


# -- OggPageSplitter ------------------------------------------------------------


def test_ogg_page_helper_layout() -> None:
    page = ogg_page(b"x" * 300, 960, seqno=7)
    assert page[:4] == b"OggS"
    assert page[4] == 0
    assert struct.unpack_from("<q", page, 6) == (960,)
    assert struct.unpack_from("<I", page, 18) == (7,)
    assert page[26] == 2
    assert page[27:29] == bytes([255, 45])
    assert len(page) == 27 + 2 + 300
    # A body of exactly 255 bytes needs a terminating zero lacing value.
    assert ogg_page(bytes(255), 1)[26:29] == bytes([2, 255, 0])


def test_header_pages_are_kept_not_returned() -> None:
    splitter = OggPageSplitter()
    assert splitter.feed(HEADERS) == []
    assert splitter.headers == HEADERS
    assert splitter.pending == 0


def test_audio_pages_come_out_with_granule_differences() -> None:
    pages = [audio_page(1272, 2), audio_page(2232, 3), audio_page(4152, 4, size=300)]
    splitter = OggPageSplitter()
    out = splitter.feed(HEADERS + b"".join(pages))
    assert out == [(pages[0], 1272), (pages[1], 960), (pages[2], 1920)]
    assert splitter.headers == HEADERS
    assert splitter.pending == 0


def test_page_without_a_granule_lasts_zero_and_the_next_takes_the_difference() -> None:
    # Granule -1: no packet ends on this page (RFC 3533).
    pages = [audio_page(960, 2), audio_page(-1, 3), audio_page(2880, 4)]
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    assert splitter.feed(b"".join(pages)) == [(pages[0], 960), (pages[1], 0), (pages[2], 1920)]


def test_granule_going_backwards_lasts_zero() -> None:
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    first, back, after = audio_page(9600, 2), audio_page(4800, 3), audio_page(5760, 4)
    assert splitter.feed(first + back + after) == [(first, 9600), (back, 0), (after, 960)]


def test_headers_only_at_the_start() -> None:
    splitter = OggPageSplitter()
    late = ogg_page(b"late", 0, seqno=9)
    first = audio_page(960, 2)
    assert splitter.feed(HEADERS + first + late) == [(first, 960), (late, 0)]
    assert splitter.headers == HEADERS


def test_headers_fed_across_calls_accumulate() -> None:
    splitter = OggPageSplitter()
    assert splitter.feed(OPUS_HEAD) == []
    assert splitter.headers == OPUS_HEAD
    assert splitter.feed(OPUS_TAGS) == []
    assert splitter.headers == HEADERS


def test_empty_body_page() -> None:
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    page = audio_page(480, 2, size=0)
    assert len(page) == 28
    assert splitter.feed(page) == [(page, 480)]


@pytest.mark.parametrize("size", [0, 1, 254, 255, 256, 600])
def test_a_page_split_at_every_offset_comes_out_whole_and_once(size: int) -> None:
    page = audio_page(1920, 2, size=size)
    for cut in range(len(page) + 1):
        splitter = OggPageSplitter()
        assert splitter.feed(HEADERS) == []
        first = splitter.feed(page[:cut])
        second = splitter.feed(page[cut:])
        assert first + second == [(page, 1920)], cut
        assert splitter.pending == 0
        assert splitter.flush() == b""


def test_headers_split_at_every_offset() -> None:
    after = audio_page(960, 2)
    stream = HEADERS + after
    for cut in range(len(stream) + 1):
        splitter = OggPageSplitter()
        out = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert out == [(after, 960)], cut
        assert splitter.headers == HEADERS, cut


def test_byte_by_byte() -> None:
    pages = [audio_page(960 * n, n, size=10 * n) for n in range(1, 6)]
    stream = HEADERS + b"".join(pages)
    splitter = OggPageSplitter()
    out = [item for i in range(len(stream)) for item in splitter.feed(stream[i : i + 1])]
    assert out == [(page, 960) for page in pages]
    assert splitter.headers == HEADERS


def test_feed_accepts_bytearray_and_memoryview() -> None:
    page = audio_page(960, 2)
    splitter = OggPageSplitter()
    splitter.feed(bytearray(HEADERS))
    assert splitter.feed(memoryview(page)) == [(page, 960)]


@pytest.mark.parametrize("junk", [b"xyz", b"\x00" * 26, b"JUNK" * 10, b"Ogg" + b"-" * 30])
def test_junk_before_a_page_is_passed_through_without_duration(junk: bytes) -> None:
    page = audio_page(960, 2)
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    assert splitter.feed(junk + page) == [(junk, 0), (page, 960)]
    assert splitter.pending == 0


def test_junk_between_pages_does_not_disturb_durations() -> None:
    first, second = audio_page(960, 2), audio_page(1920, 3)
    junk = b"garbage!" * 5
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    assert splitter.feed(first + junk + second) == [(first, 960), (junk, 0), (second, 960)]


def test_short_junk_is_held_until_flushed() -> None:
    splitter = OggPageSplitter()
    assert splitter.feed(b"abc") == []
    assert splitter.pending == 3
    assert splitter.flush() == b"abc"
    assert splitter.pending == 0
    assert splitter.flush() == b""


def test_long_junk_without_a_page_is_passed_through_at_once() -> None:
    splitter = OggPageSplitter()
    junk = bytes(range(100))
    assert splitter.feed(junk) == [(junk, 0)]
    assert splitter.pending == 0


def test_junk_then_a_page_split_at_every_offset() -> None:
    junk = b"J" * 40
    page = audio_page(960, 2)
    stream = junk + page
    for cut in range(len(stream) + 1):
        splitter = OggPageSplitter()
        splitter.feed(HEADERS)
        out = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        junk_out = b"".join(data for data, ticks in out if data != page)
        assert [item for item in out if item[0] == page] == [(page, 960)], cut
        assert junk_out == junk, cut
        assert splitter.pending == 0


def test_flush_returns_the_held_back_part_of_a_page() -> None:
    page = audio_page(960, 2, size=100)
    splitter = OggPageSplitter()
    splitter.feed(HEADERS)
    assert splitter.feed(page[:50]) == []
    assert splitter.pending == 50
    assert splitter.flush() == page[:50]
    assert splitter.pending == 0
    # After a flush, a new whole page is split normally; the abandoned page's
    # granule was never seen, so the duration counts from the last whole page.
    again = audio_page(1920, 3)
    assert splitter.feed(again) == [(again, 1920)]


def test_flush_keeps_headers_and_granule() -> None:
    splitter = OggPageSplitter()
    splitter.feed(HEADERS + audio_page(960, 2))
    splitter.feed(b"OggS\x00")
    assert splitter.flush() == b"OggS\x00"
    nxt = audio_page(2880, 3)
    assert splitter.feed(nxt) == [(nxt, 1920)]
    assert splitter.headers == HEADERS


@st.composite
def ogg_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[int]]:
    count = draw(st.integers(min_value=1, max_value=12))
    pages: list[bytes] = []
    ticks: list[int] = []
    granule = 0
    for n in range(count):
        if draw(st.booleans()) and n:
            pages.append(audio_page(-1, n + 2, size=draw(st.integers(0, 700))))
            ticks.append(0)
            continue
        step = draw(st.sampled_from([120, 480, 960, 1920, 2880]))
        granule += step
        pages.append(audio_page(granule, n + 2, size=draw(st.integers(0, 700))))
        ticks.append(step)
    total = sum(len(page) for page in pages) + len(HEADERS)
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=10)))
    return pages, ticks, cuts


@given(ogg_streams())
def test_any_stream_cut_anywhere_splits_into_the_same_pages(
    stream: tuple[list[bytes], list[int], list[int]],
) -> None:
    pages, ticks, cuts = stream
    data = HEADERS + b"".join(pages)
    splitter = OggPageSplitter()
    out: list[tuple[bytes, int]] = []
    start = 0
    for cut in [*cuts, len(data)]:
        out += splitter.feed(data[start:cut])
        start = cut
    assert out == list(zip(pages, ticks, strict=True))
    assert splitter.headers == HEADERS
    assert splitter.pending == 0
