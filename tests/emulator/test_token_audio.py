"""Token audio (pulse_trio.emulator.token_audio) and the G.711 codecs under it.

Token audio must decode back to exactly the words that made it, in every
encoding, at every sample rate, however it is cut into chunks, with word times
that follow the documented layout: ``lead`` seconds of silence, then each word
as two 10 ms symbols per UTF-8 byte, with ``gap`` seconds of silence between
words.
"""

from __future__ import annotations

import array
import itertools
import math
import struct
from collections.abc import Callable, Sequence

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse_core import SAMPLE_RATES, Encoding, OggPageSplitter, opus_packet_ticks
from pulse_trio._g711 import (
    alaw_to_linear16,
    linear16_to_alaw,
    linear16_to_mulaw,
    mulaw_to_linear16,
)
from pulse_trio.emulator.token_audio import (
    LEVEL_BASE,
    LEVEL_STEP,
    SILENCE_BELOW,
    SYMBOL_SECONDS,
    DecodedWord,
    TokenDecoder,
    encode,
    ogg_opus_stream,
    opus_packets,
    silence,
)

WORDS = ["hello", "naïve", "日本", "x1", "42", "Ωmega", "a"]
PCM_ENCODINGS = [Encoding.LINEAR16, Encoding.LINEAR32, Encoding.ALAW, Encoding.MULAW]
WIDTH = {Encoding.LINEAR16: 2, Encoding.LINEAR32: 4, Encoding.ALAW: 1, Encoding.MULAW: 1}
OPUS_RATE = 8000  # the token signal inside opus packets is 8 kHz
PACKET_SAMPLES = 160  # 20 ms at 8 kHz


# -- helpers ------------------------------------------------------------------------


def layout(
    words: Sequence[str], rate: int, *, lead: float = 0.0, gap: float = 0.1
) -> list[tuple[str, float, float]]:
    """Where each word should be, in seconds, from the documented signal layout."""
    symbol = max(2, round(rate * SYMBOL_SECONDS))
    gap_samples = max(symbol, round(rate * gap))
    position = round(rate * lead)
    spans = []
    for index, word in enumerate(words):
        if index:
            position += gap_samples
        length = 2 * len(word.encode("utf-8")) * symbol
        spans.append((word, position / rate, (position + length) / rate))
        position += length
    return spans


def spans(decoded: Sequence[DecodedWord]) -> list[tuple[str, float, float]]:
    return [(w.word, w.start, w.end) for w in decoded]


def assert_layout(decoded: Sequence[DecodedWord], expected: list[tuple[str, float, float]]) -> None:
    assert [w.word for w in decoded] == [word for word, _, _ in expected]
    for got, (_, start, end) in zip(decoded, expected, strict=True):
        assert got.start == pytest.approx(start, abs=1e-9)
        assert got.end == pytest.approx(end, abs=1e-9)


def decode_chunks(decoder: TokenDecoder, chunks: Sequence[bytes]) -> list[DecodedWord]:
    words: list[DecodedWord] = []
    for chunk in chunks:
        words.extend(decoder.feed(chunk))
    words.extend(decoder.end_word())
    return words


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def pcm16(data: bytes) -> list[int]:
    samples = array.array("h")
    samples.frombytes(data)
    return list(samples)


def pcm32(data: bytes) -> list[int]:
    samples = array.array("i")
    samples.frombytes(data)
    return list(samples)


# A word: letters, digits, punctuation, symbols and marks from all of Unicode
# (no whitespace, no surrogates), plus some fixed ones.
word_chars = st.characters(categories=("L", "N", "P", "S", "M")).filter(lambda c: not c.isspace())
words_strategy = st.lists(
    st.one_of(st.sampled_from(WORDS), st.text(word_chars, min_size=1, max_size=4)),
    max_size=4,
)


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", PCM_ENCODINGS)
def test_round_trip_every_pcm_encoding_at_8000(encoding: Encoding) -> None:
    audio = encode(WORDS, encoding=encoding, sample_rate=8000, lead=0.05, trail=0.1)
    decoder = TokenDecoder(encoding, 8000)
    words = decoder.feed(audio)
    assert_layout(words, layout(WORDS, 8000, lead=0.05))
    assert decoder.end_word() == []
    # the first word sits after the lead: 0.05 s, 5 bytes -> 10 symbols -> 0.1 s
    assert words[0] == DecodedWord("hello", pytest.approx(0.05), pytest.approx(0.15))


@pytest.mark.parametrize("rate", SAMPLE_RATES)
@pytest.mark.parametrize("encoding", [Encoding.LINEAR16, Encoding.LINEAR32])
def test_round_trip_linear_pcm_at_every_rate(encoding: Encoding, rate: int) -> None:
    audio = encode(WORDS, encoding=encoding, sample_rate=rate, lead=0.02, gap=0.05, trail=0.05)
    assert len(audio) % WIDTH[encoding] == 0
    decoder = TokenDecoder(encoding, rate)
    assert_layout(decode_chunks(decoder, [audio]), layout(WORDS, rate, lead=0.02, gap=0.05))
    assert decoder.seconds == pytest.approx(len(audio) / WIDTH[encoding] / rate)


@pytest.mark.parametrize("encoding", [Encoding.ALAW, Encoding.MULAW])
@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_g711_token_audio_survives_any_rate(encoding: Encoding, rate: int) -> None:
    audio = encode(WORDS[:3], encoding=encoding, sample_rate=rate, trail=0.05)
    assert len(audio) == len(encode(WORDS[:3], sample_rate=rate, trail=0.05)) // 2
    decoder = TokenDecoder(encoding, rate)
    assert_layout(decode_chunks(decoder, [audio]), layout(WORDS[:3], rate))


def test_round_trip_opus_packet_by_packet() -> None:
    packets = opus_packets(WORDS, lead=0.03, gap=0.1, trail=0.1)
    decoder = TokenDecoder(Encoding.OPUS)
    assert_layout(decode_chunks(decoder, packets), layout(WORDS, OPUS_RATE, lead=0.03))
    assert decoder.seconds == pytest.approx(len(packets) * 0.02)


def test_encode_opus_is_the_packets_joined() -> None:
    assert encode(WORDS, encoding="opus", gap=0.2) == b"".join(opus_packets(WORDS, gap=0.2))
    assert encode(WORDS, encoding="ogg_opus", lead=0.1) == ogg_opus_stream(WORDS, lead=0.1)


def test_round_trip_ogg_opus_in_one_piece_and_byte_by_byte() -> None:
    stream = ogg_opus_stream(WORDS, lead=0.01, trail=0.1)
    expected = layout(WORDS, OPUS_RATE, lead=0.01)
    assert_layout(decode_chunks(TokenDecoder(Encoding.OGG_OPUS), [stream]), expected)
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    assert_layout(decode_chunks(TokenDecoder(Encoding.OGG_OPUS), one_by_one), expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ogg_opus_stream_cut_anywhere(data: st.DataObject) -> None:
    words = data.draw(words_strategy, label="words")
    stream = ogg_opus_stream(words, lead=0.02, trail=0.05)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    decoded = decode_chunks(TokenDecoder(Encoding.OGG_OPUS), cut(stream, points))
    assert_layout(decoded, layout(words, OPUS_RATE, lead=0.02))


@settings(max_examples=60, deadline=None)
@given(words=words_strategy, gap=st.sampled_from([0.0, 0.02, 0.1]))
def test_opus_packets_any_words(words: list[str], gap: float) -> None:
    packets = opus_packets(words, gap=gap)
    decoded = decode_chunks(TokenDecoder(Encoding.OPUS), packets)
    assert_layout(decoded, layout(words, OPUS_RATE, gap=gap))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    words=words_strategy,
    encoding=st.sampled_from(PCM_ENCODINGS),
    rate=st.sampled_from([8000, 16000, 22050]),
    lead=st.sampled_from([0.0, 0.013, 0.1]),
    gap=st.sampled_from([0.0, 0.01, 0.037, 0.1]),
    trail=st.sampled_from([0.0, 0.004, 0.2]),
)
def test_any_words_any_chunking_decode_exactly(
    data: st.DataObject,
    words: list[str],
    encoding: Encoding,
    rate: int,
    lead: float,
    gap: float,
    trail: float,
) -> None:
    audio = encode(words, encoding=encoding, sample_rate=rate, lead=lead, gap=gap, trail=trail)
    points = data.draw(st.lists(st.integers(0, len(audio)), max_size=10), label="cuts")
    decoded = decode_chunks(TokenDecoder(encoding, rate), cut(audio, points))
    assert_layout(decoded, layout(words, rate, lead=lead, gap=gap))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), words=words_strategy.filter(bool), rate=st.sampled_from([8000, 16000]))
def test_a_word_is_reported_by_the_chunk_that_completes_it(
    data: st.DataObject, words: list[str], rate: int
) -> None:
    """A word ends after half a symbol of silence: the chunk holding that sample reports it."""
    audio = encode(words, sample_rate=rate, trail=0.05)
    points = data.draw(st.lists(st.integers(0, len(audio)), max_size=10), label="cuts")
    half = max(2, round(rate * SYMBOL_SECONDS)) // 2
    decoder = TokenDecoder(Encoding.LINEAR16, rate)
    fed = 0
    for chunk in cut(audio, points):
        before = fed // 2
        fed += len(chunk)
        for word in decoder.feed(chunk):
            done = round(word.end * rate) + half
            assert before < done <= fed // 2, (word, before, fed // 2)
    assert decoder.end_word() == []


def test_a_string_is_split_on_spaces() -> None:
    assert encode("naïve 日本  x1") == encode(["naïve", "日本", "x1"])
    assert opus_packets("a b") == opus_packets(["a", "b"])


def test_gap_is_at_least_one_symbol() -> None:
    """With gap=0 the words are still separated (by one symbol of silence)."""
    decoded = decode_chunks(TokenDecoder(), [encode(["ab", "cd"], gap=0.0)])
    assert spans(decoded) == [("ab", 0.0, 0.04), ("cd", 0.05, 0.09)]


# -- the signal itself -------------------------------------------------------------


def test_symbols_are_levels_with_alternating_signs() -> None:
    # "A" is 0x41: nibbles 4 then 1, 10 ms each (80 samples at 8 kHz), + then -.
    samples = pcm16(encode(["A"], sample_rate=8000, trail=0.01))
    assert samples == (
        [LEVEL_BASE + 4 * LEVEL_STEP] * 80 + [-(LEVEL_BASE + 1 * LEVEL_STEP)] * 80 + [0] * 80
    )
    # "é" is 0xC3 0xA9: four symbols, signs keep alternating across bytes.
    samples = pcm16(encode(["é"], sample_rate=8000))
    levels = [samples[i] for i in range(0, len(samples), 80)]
    assert levels == [
        LEVEL_BASE + 0xC * LEVEL_STEP,
        -(LEVEL_BASE + 0x3 * LEVEL_STEP),
        LEVEL_BASE + 0xA * LEVEL_STEP,
        -(LEVEL_BASE + 0x9 * LEVEL_STEP),
    ]


def test_levels_fit_16_bits_and_clear_silence() -> None:
    assert LEVEL_BASE - LEVEL_STEP // 2 > SILENCE_BELOW
    assert LEVEL_BASE + 15 * LEVEL_STEP + LEVEL_STEP // 2 < 32768


def test_linear32_is_linear16_shifted() -> None:
    narrow = pcm16(encode(WORDS, sample_rate=16000, lead=0.01))
    wide = pcm32(encode(WORDS, encoding="linear32", sample_rate=16000, lead=0.01))
    assert wide == [value << 16 for value in narrow]


def test_lead_gap_and_trail_are_silence_of_the_right_length() -> None:
    audio = pcm16(encode(["ab", "c"], sample_rate=16000, lead=0.25, gap=0.3, trail=0.5))
    assert audio[:4000] == [0] * 4000 and audio[4000] != 0
    assert audio[-8000:] == [0] * 8000 and audio[-8001] != 0
    # ab: 4 symbols of 160 samples, then 0.3 s gap, then c: 2 symbols
    assert len(audio) == 4000 + 4 * 160 + 4800 + 2 * 160 + 8000
    assert audio[4000 + 640 : 4000 + 640 + 4800] == [0] * 4800


@pytest.mark.parametrize("encoding", PCM_ENCODINGS)
@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_silence_decodes_to_nothing(encoding: Encoding, rate: int) -> None:
    audio = silence(0.5, encoding=encoding, sample_rate=rate)
    assert len(audio) == round(rate * 0.5) * WIDTH[encoding]
    assert audio == encode([], encoding=encoding, sample_rate=rate, lead=0.5)
    decoder = TokenDecoder(encoding, rate)
    assert decoder.feed(audio) == []
    assert decoder.end_word() == []
    assert decoder.seconds == pytest.approx(0.5)


def test_silence_bytes_are_the_codec_silence() -> None:
    assert set(silence(0.01, encoding="mulaw", sample_rate=8000)) == {0xFF}
    assert set(silence(0.01, encoding="alaw", sample_rate=8000)) == {0xD5}
    assert set(silence(0.01, encoding="linear32", sample_rate=8000)) == {0}
    assert silence(0.01) == bytes(320)  # linear16 at 16 kHz by default


def test_opus_silence_decodes_to_nothing() -> None:
    packets = opus_packets([], lead=0.3, trail=0.2)
    assert len(packets) == 25
    decoder = TokenDecoder(Encoding.OPUS)
    assert decode_chunks(decoder, packets) == []
    stream = ogg_opus_stream([], lead=0.5)
    assert decode_chunks(TokenDecoder(Encoding.OGG_OPUS), [stream]) == []


@pytest.mark.parametrize("encoding", [Encoding.OPUS, Encoding.OGG_OPUS, "opus"])
def test_silence_for_opus_raises(encoding: Encoding | str) -> None:
    with pytest.raises(ValueError, match="no byte-level silence"):
        silence(1.0, encoding=encoding)


def test_noise_below_the_silence_threshold_is_silence() -> None:
    quiet = array.array("h", [(SILENCE_BELOW - 1) * (-1) ** i for i in range(16000)]).tobytes()
    decoder = TokenDecoder()
    assert decoder.feed(quiet) == [] and decoder.end_word() == []


# -- end_word -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [(Encoding.LINEAR16, 16000), (Encoding.MULAW, 8000), (Encoding.LINEAR32, 44100)],
)
def test_end_word_closes_a_word_in_progress(encoding: Encoding, rate: int) -> None:
    audio = encode(["first", "last"], encoding=encoding, sample_rate=rate)  # no trail
    decoder = TokenDecoder(encoding, rate)
    assert [w.word for w in decoder.feed(audio)] == ["first"]
    assert_layout(decoder.end_word(), layout(["first", "last"], rate)[1:])
    assert decoder.end_word() == []


def test_end_word_closes_an_opus_word_in_progress() -> None:
    packets = opus_packets(["ab"])  # 40 ms: exactly two packets, no silence after
    assert len(packets) == 2
    decoder = TokenDecoder(Encoding.OPUS)
    assert decoder.feed(packets[0]) == [] and decoder.feed(packets[1]) == []
    assert spans(decoder.end_word()) == [("ab", 0.0, 0.04)]


def test_end_word_with_nothing_in_progress() -> None:
    decoder = TokenDecoder()
    assert decoder.end_word() == []
    decoder.feed(encode(["done"], trail=0.1))
    assert decoder.end_word() == []


def test_words_after_end_word_keep_connection_time() -> None:
    decoder = TokenDecoder(Encoding.LINEAR16, 8000)
    decoder.feed(encode(["one"], sample_rate=8000))
    assert spans(decoder.end_word()) == [("one", 0.0, pytest.approx(0.06))]
    words = decoder.feed(encode(["two"], sample_rate=8000, lead=0.1, trail=0.1))
    assert spans(words) == [("two", pytest.approx(0.16), pytest.approx(0.22))]


def test_seconds_counts_whole_samples_fed() -> None:
    decoder = TokenDecoder(Encoding.LINEAR32, 8000)
    decoder.feed(b"\x00" * 7)  # one sample and three bytes of the next
    assert decoder.seconds == pytest.approx(1 / 8000)
    decoder.feed(b"\x00")
    assert decoder.seconds == pytest.approx(2 / 8000)


def test_decoder_rate_for_compressed_encodings_is_8k() -> None:
    assert TokenDecoder(Encoding.OPUS, 48000).rate == OPUS_RATE
    assert TokenDecoder("ogg_opus", 16000).rate == OPUS_RATE
    assert TokenDecoder("linear16", 22050).rate == 22050


# -- bad words ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[""], ["a b"], ["ok", "tab\there"], ["new\nline"], ["", "x"]])
@pytest.mark.parametrize("encoding", list(Encoding))
def test_bad_words_raise(bad: list[str], encoding: Encoding) -> None:
    with pytest.raises(ValueError, match="non-empty and without spaces"):
        encode(bad, encoding=encoding)


@pytest.mark.parametrize("bad", [[""], ["a\u00a0b"], ["x\u3000y"]])
def test_bad_words_raise_for_opus_helpers(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="non-empty and without spaces"):
        opus_packets(bad)
    with pytest.raises(ValueError, match="non-empty and without spaces"):
        ogg_opus_stream(bad)


@given(
    st.text(word_chars, max_size=3),
    st.characters(categories=("Zs", "Cc", "Zl", "Zp")).filter(str.isspace),
    st.text(word_chars, max_size=3),
)
def test_any_whitespace_inside_a_word_raises(left: str, space: str, right: str) -> None:
    with pytest.raises(ValueError, match="without spaces"):
        encode([left + space + right])


# -- G.711 --------------------------------------------------------------------------

ALL_SAMPLES = array.array("h", range(-32768, 32768)).tobytes()
ALL_CODES = bytes(range(256))


def mu(*samples: int) -> bytes:
    return linear16_to_mulaw(array.array("h", samples).tobytes())


def al(*samples: int) -> bytes:
    return linear16_to_alaw(array.array("h", samples).tobytes())


def test_g711_silence_points() -> None:
    assert mu(0) == b"\xff"
    assert al(0) == b"\xd5"
    assert pcm16(mulaw_to_linear16(b"\xff\x7f")) == [0, 0]
    assert pcm16(alaw_to_linear16(b"\xd5\x55")) == [8, -8]


def test_g711_extremes() -> None:
    assert mu(32767, -32768, 32635, -32635) == b"\x80\x00\x80\x00"
    assert al(32767, -32768) == b"\xaa\x2a"
    assert pcm16(mulaw_to_linear16(b"\x80\x00")) == [32124, -32124]
    assert pcm16(alaw_to_linear16(b"\xaa\x2a")) == [32256, -32256]


# G.711 mu-law reconstruction values (14-bit scale) at the start and end of each
# of the eight segments, for positive codes 0xFF - 0x80 (x4 on a 16-bit scale).
MU_SEGMENT_FIRST = [0, 33, 99, 231, 495, 1023, 2079, 4191]
MU_SEGMENT_LAST = [30, 93, 219, 471, 975, 1983, 3999, 8031]
# G.711 a-law reconstruction values (13-bit scale, x8 on a 16-bit scale).
A_SEGMENT_FIRST = [1, 33, 66, 132, 264, 528, 1056, 2112]
A_SEGMENT_LAST = [31, 63, 126, 252, 504, 1008, 2016, 4032]


@pytest.mark.parametrize("segment", range(8))
def test_mulaw_decoding_matches_the_standard_table(segment: int) -> None:
    first = 0xFF - 16 * segment
    last = first - 15
    decoded = pcm16(mulaw_to_linear16(bytes([first, last, first & 0x7F, last & 0x7F])))
    assert decoded == [
        4 * MU_SEGMENT_FIRST[segment],
        4 * MU_SEGMENT_LAST[segment],
        -4 * MU_SEGMENT_FIRST[segment],
        -4 * MU_SEGMENT_LAST[segment],
    ]


@pytest.mark.parametrize("segment", range(8))
def test_alaw_decoding_matches_the_standard_table(segment: int) -> None:
    first = (0x80 | segment << 4) ^ 0x55
    last = (0x80 | segment << 4 | 0x0F) ^ 0x55
    decoded = pcm16(alaw_to_linear16(bytes([first, last, first ^ 0x80, last ^ 0x80])))
    assert decoded == [
        8 * A_SEGMENT_FIRST[segment],
        8 * A_SEGMENT_LAST[segment],
        -8 * A_SEGMENT_FIRST[segment],
        -8 * A_SEGMENT_LAST[segment],
    ]


def test_g711_decoding_is_sign_symmetric() -> None:
    for decode in (mulaw_to_linear16, alaw_to_linear16):
        values = pcm16(decode(ALL_CODES))
        flipped = pcm16(decode(bytes(code ^ 0x80 for code in ALL_CODES)))
        assert flipped == [-value for value in values]


def test_g711_encoding_is_sign_symmetric() -> None:
    positive = array.array("h", range(1, 32768)).tobytes()
    negative = array.array("h", range(-1, -32768, -1)).tobytes()
    assert linear16_to_mulaw(negative) == bytes(b ^ 0x80 for b in linear16_to_mulaw(positive))
    # a-law is symmetric in one's complement: x and ~x (-x-1) differ only in sign
    zero_up = array.array("h", range(32768)).tobytes()
    complement = array.array("h", (~x for x in range(32768))).tobytes()
    assert linear16_to_alaw(complement) == bytes(b ^ 0x80 for b in linear16_to_alaw(zero_up))


@pytest.mark.parametrize(
    ("encode_", "decode"),
    [(linear16_to_mulaw, mulaw_to_linear16), (linear16_to_alaw, alaw_to_linear16)],
    ids=["mulaw", "alaw"],
)
def test_g711_is_monotonic_and_close(
    encode_: Callable[[bytes], bytes], decode: Callable[[bytes], bytes]
) -> None:
    quantised = pcm16(decode(encode_(ALL_SAMPLES)))
    assert all(a <= b for a, b in itertools.pairwise(quantised))
    for sample, value in zip(range(-32768, 32768), quantised, strict=True):
        # the error grows with the magnitude (steps double per segment): a few percent
        assert abs(value - sample) <= max(16, abs(sample) // 16 + 8), sample


def test_g711_reconstruction_values_encode_to_their_own_code() -> None:
    mu_values = mulaw_to_linear16(ALL_CODES)
    assert linear16_to_mulaw(mu_values) == bytes(
        0xFF if code == 0x7F else code
        for code in ALL_CODES  # 0x7F is "-0": encodes as +0
    )
    assert linear16_to_alaw(alaw_to_linear16(ALL_CODES)) == ALL_CODES


def test_g711_token_levels_stay_within_half_a_step() -> None:
    levels = [sign * (LEVEL_BASE + n * LEVEL_STEP) for n in range(16) for sign in (1, -1)]
    raw = array.array("h", levels).tobytes()
    for back in (
        mulaw_to_linear16(linear16_to_mulaw(raw)),
        alaw_to_linear16(linear16_to_alaw(raw)),
    ):
        for level, value in zip(levels, pcm16(back), strict=True):
            assert abs(value - level) < LEVEL_STEP // 2


def test_g711_odd_trailing_byte_is_ignored() -> None:
    assert linear16_to_mulaw(b"\x00\x00\x01") == b"\xff"
    assert linear16_to_alaw(b"\x00") == b""


# -- Opus packets ---------------------------------------------------------------------


def test_opus_packets_have_a_valid_toc_for_20_ms() -> None:
    packets = opus_packets(WORDS, lead=0.01, trail=0.013)
    samples = len(pcm16(encode(WORDS, sample_rate=OPUS_RATE, lead=0.01, trail=0.013)))
    assert len(packets) == math.ceil(samples / PACKET_SAMPLES)
    for packet in packets:
        toc = packet[0]
        config, stereo, code = toc >> 3, (toc >> 2) & 1, toc & 3
        assert config == 31  # CELT, fullband, 20 ms (RFC 6716 table 2)
        assert stereo == 0 and code == 0  # mono, one frame
        assert opus_packet_ticks(packet) == 960  # 20 ms of 48 kHz ticks
        assert len(packet) == 1 + PACKET_SAMPLES


def test_opus_packet_payload_is_mulaw_of_the_8k_signal() -> None:
    packets = opus_packets(["hi"], trail=0.013)
    signal = encode(["hi"], encoding="mulaw", sample_rate=OPUS_RATE, trail=0.013)
    payload = b"".join(packet[1:] for packet in packets)
    assert len(payload) > len(signal)
    assert payload[: len(signal)] == signal
    assert set(payload[len(signal) :]) <= {0xFF}  # padding to a whole packet is silence


def test_packets_with_another_toc_are_ignored() -> None:
    packets = opus_packets(["hi"], trail=0.1)
    decoder = TokenDecoder(Encoding.OPUS)
    assert decoder.feed(b"\x00" + packets[0][1:]) == []
    assert decoder.feed(b"") == []
    assert decoder.seconds == 0


# -- Ogg --------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for index in range(256):
        value = index << 24
        for _ in range(8):
            value = (value << 1) ^ 0x04C11DB7 if value & 0x80000000 else value << 1
        table.append(value & 0xFFFFFFFF)
    return table


CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32: polynomial 0x04C11DB7, initial 0, not reflected, no final xor."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ CRC_TABLE[(crc >> 24) ^ byte]
    return crc


@attrs.frozen
class Page:
    flags: int
    granule: int
    serial: int
    sequence: int
    crc: int
    lacing: bytes
    body: bytes
    raw: bytes


def parse_ogg(stream: bytes) -> list[Page]:
    pages = []
    position = 0
    while position < len(stream):
        assert stream[position : position + 4] == b"OggS", position
        version, flags, granule, serial, sequence, crc, count = struct.unpack_from(
            "<BBqIIIB", stream, position + 4
        )
        assert version == 0
        lacing = stream[position + 27 : position + 27 + count]
        end = position + 27 + count + sum(lacing)
        assert end <= len(stream)
        raw = stream[position:end]
        pages.append(Page(flags, granule, serial, sequence, crc, lacing, raw[27 + count :], raw))
        position = end
    return pages


def test_the_test_crc_is_ogg_crc() -> None:
    # CRC-32/CKSUM has the same polynomial, init 0, and xors the result with ~0
    assert ogg_crc(b"123456789") == 0x765E7680 ^ 0xFFFFFFFF
    assert ogg_crc(b"") == 0


@pytest.mark.parametrize("words", [WORDS, [], ["x" * 30]])
def test_ogg_pages_have_valid_crcs_and_structure(words: list[str]) -> None:
    stream = ogg_opus_stream(words, lead=0.02, trail=0.02)
    pages = parse_ogg(stream)
    packets = opus_packets(words, lead=0.02, trail=0.02)
    assert len(pages) == 2 + len(packets)
    for index, page in enumerate(pages):
        zeroed = page.raw[:22] + bytes(4) + page.raw[26:]
        assert page.crc == ogg_crc(zeroed), index
        assert page.sequence == index
        assert page.serial == pages[0].serial
        assert all(value == 255 for value in page.lacing[:-1]) and page.lacing[-1] < 255
    flags = [0x02, 0] + [0] * len(packets)
    if packets:
        flags[-1] = 0x04  # end of stream on the last page
    assert [page.flags for page in pages] == flags
    assert [page.body for page in pages[2:]] == packets
    assert [page.granule for page in pages] == [0, 0] + [960 * (i + 1) for i in range(len(packets))]


def test_ogg_stream_starts_with_opus_head_then_opus_tags() -> None:
    head, tags, *audio = parse_ogg(ogg_opus_stream(["hello"], trail=0.1, serial=1234))
    assert head.flags == 0x02 and head.granule == 0 and head.serial == 1234
    assert len(head.body) == 19
    magic, version, channels, pre_skip, rate, gain, mapping = struct.unpack("<8sBBHIhB", head.body)
    assert (magic, version, channels, rate, gain, mapping) == (b"OpusHead", 1, 1, 48000, 0, 0)
    assert pre_skip == 0
    assert tags.body.startswith(b"OpusTags") and tags.granule == 0
    (vendor_length,) = struct.unpack_from("<I", tags.body, 8)
    (comments,) = struct.unpack_from("<I", tags.body, 12 + vendor_length)
    assert comments == 0 and len(tags.body) == 16 + vendor_length
    assert audio and not any(page.body.startswith(b"Opus") for page in audio)
    assert audio[-1].flags == 0x04


def test_a_corrupted_page_fails_the_crc() -> None:
    stream = bytearray(ogg_opus_stream(["hi"]))
    stream[-1] ^= 0x01
    last = parse_ogg(bytes(stream))[-1]
    assert last.crc != ogg_crc(last.raw[:22] + bytes(4) + last.raw[26:])


def test_the_project_splitter_sees_two_header_pages_and_20_ms_pages() -> None:
    stream = ogg_opus_stream(WORDS, trail=0.05)
    pages = parse_ogg(stream)
    splitter = OggPageSplitter()
    out = splitter.feed(stream)
    assert splitter.headers == pages[0].raw + pages[1].raw
    assert [ticks for _, ticks in out] == [960] * (len(pages) - 2)
    assert b"".join(page for page, _ in out) == stream[len(splitter.headers) :]
