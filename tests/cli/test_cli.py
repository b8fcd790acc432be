"""`pulse transcribe`, run as a user runs it: the real command in a subprocess.

Audio is token audio (pulse_trio.emulator.token_audio) in WAV files written
here, byte by byte, so every header flavour is exercised. The server is the emulator:
in-process with `--local`, or `pulse emulator` started once as a subprocess
(with `--api-key`, so a wrong key is refused). Independent runs go
concurrently to keep the file fast.
"""

from __future__ import annotations

import array
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import trio

from pulse_core import Transcript, Word
from pulse_trio.cli import main
from pulse_trio.cli._input import InputError, open_source
from pulse_trio.cli._output import make_formatter, timestamp
from pulse_trio.emulator.token_audio import TokenDecoder, encode, ogg_opus_stream
from tests.command import ROOT, Result, closed_port, command_env, pulse

GOOD_KEY = "sk_cli_test_good_key"
BAD_KEY = "sk_cli_test_WRONG_key_123"
RATE = 16000
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and ptys")


# -- running the command ---------------------------------------------------------------


async def concurrently(*runs: Callable[[], Awaitable[Result]]) -> list[Result]:
    results: list[Result | None] = [None] * len(runs)
    limit = trio.CapacityLimiter(max(2, (os.cpu_count() or 2) + 1))

    async def one(index: int) -> None:
        async with limit:
            results[index] = await runs[index]()

    async with trio.open_nursery() as nursery:
        for index in range(len(runs)):
            nursery.start_soon(one, index)
    return [result for result in results if result is not None]


def call(*args: str | Path, **kwargs: object) -> Callable[[], Awaitable[Result]]:
    return lambda: pulse(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`pulse emulator` in a subprocess, accepting only GOOD_KEY: its URL."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "pulse_trio", "emulator", "--engine", "token"),
            *("--port", "0", "--api-key", GOOD_KEY),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=command_env(None),
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"(ws://[0-9.]+:\d+)", banner)
        assert match, banner
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def remote(url: str) -> tuple[str, ...]:
    return ("--base-url", url)


KEY = {"SMALLEST_API_KEY": GOOD_KEY}


# -- audio -----------------------------------------------------------------------------


def riff(
    data: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = RATE,
    bits: int = 16,
    extensible: bool = False,
    before: bytes = b"",
    data_size: int | None = None,
) -> bytes:
    """A WAV file, written by hand (the wave module cannot write G.711 or float)."""
    align = channels * bits // 8
    if extensible:
        guid = struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack(
            "<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22, bits, 3
        )
        fmt += guid
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + before + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", size) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk(name: bytes, body: bytes) -> bytes:
    """A RIFF chunk, padded to an even size."""
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def samples16(pcm: bytes) -> array.array[int]:
    values = array.array("h")
    values.frombytes(pcm)
    return values


def interleave(pcm: bytes, channels: int, code: str = "h") -> bytes:
    mono = array.array(code)
    mono.frombytes(pcm)
    return array.array(code, [v for v in mono for _ in range(channels)]).tobytes()


def layout(*segments: tuple[str, float, float]) -> tuple[bytes, list[tuple[str, float, float]]]:
    """Token audio for (text, gap, trail) segments, and each word's time span.

    A word lasts 20 ms per UTF-8 byte; ``gap`` separates words and ``trail``
    (longer than the emulator's 0.8 s end of utterance) ends the segment with
    a final.
    """
    audio = b""
    words: list[tuple[str, float, float]] = []
    offset = 0.0
    for text, gap, trail in segments:
        at = offset
        for word in text.split():
            end = at + 0.02 * len(word.encode())
            words.append((word, at, end))
            at = end + gap
        piece = encode(text, gap=gap, trail=trail)
        audio += piece
        offset += len(piece) / (2 * RATE)
    return audio, words


def srt_time(seconds: float, sep: str = ",") -> str:
    ms = round(seconds * 1000)
    return (
        f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"
    )


def parse_srt(text: str) -> list[tuple[int, str, str, str]]:
    """(index, start, end, text) per cue; checks the block structure strictly."""
    assert text.endswith("\n\n")
    cues = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert len(lines) >= 3, block
        times = re.fullmatch(r"(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})", lines[1])
        assert times, lines[1]
        cues.append((int(lines[0]), times[1], times[2], "\n".join(lines[2:])))
    return cues


def parse_vtt(text: str) -> list[tuple[str, str, str]]:
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for block in text[len("WEBVTT\n\n") :].strip("\n").split("\n\n"):
        lines = block.split("\n")
        times = re.fullmatch(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})", lines[0])
        assert times, lines[0]
        cues.append((times[1], times[2], "\n".join(lines[1:])))
    return cues


WORDS = "left right centre"


@pytest.fixture
def hello(tmp_path: Path) -> Path:
    path = tmp_path / "hello.wav"
    path.write_bytes(riff(encode("hello world.", trail=1.0) + encode("second line", trail=0.3)))
    return path


# -- transcribing ----------------------------------------------------------------------


async def test_local_transcribes_a_wav_and_says_which_engine(hello: Path) -> None:
    result = await pulse("transcribe", hello, "--local", "--engine", "token")
    assert result.code == 0, result.err
    assert result.lines == ["hello world.", "second line"]
    assert "\r" not in result.out  # piped: finals only, no in-place rewriting
    assert "engine: token audio" in result.err
    assert "recognises only token audio" in result.err and "not speech" in result.err


def flavours() -> dict[str, bytes]:
    """WAV files of every kind pulse reads (and one Ogg Opus), all saying WORDS."""
    pcm16 = encode(WORDS, trail=0.3)
    pcm32_24k = encode(WORDS, encoding="linear32", sample_rate=24000, trail=0.3)
    pcm32_48k = encode(WORDS, encoding="linear32", sample_rate=48000, trail=0.3)
    mulaw = encode(WORDS, encoding="mulaw", sample_rate=8000, trail=0.3)
    pcm44 = samples16(encode(WORDS, sample_rate=44100, trail=0.3))
    return {
        "stereo_with_odd_chunks.wav": riff(
            interleave(pcm16, 2),
            channels=2,
            before=chunk(b"LIST", b"odd") + chunk(b"junk", b"x" * 7),
        ),
        "pcm32_3ch.wav": riff(interleave(pcm32_24k, 3, "i"), channels=3, bits=32, rate=24000),
        "alaw.wav": riff(
            encode(WORDS, encoding="alaw", sample_rate=8000, trail=0.3), tag=6, rate=8000, bits=8
        ),
        "mulaw.wav": riff(mulaw, tag=7, rate=8000, bits=8),
        "voice.ogg": ogg_opus_stream(WORDS, trail=0.3),
        # Read in-process below (the subprocess runs above cover the same code path).
        "pcm16.wav": riff(pcm16),
        "mulaw_stereo.wav": riff(
            bytes(b for x in mulaw for b in (x, x)), tag=7, channels=2, rate=8000, bits=8
        ),
        "pcm24.wav": riff(
            b"".join(pcm32_48k[i + 1 : i + 4] for i in range(0, len(pcm32_48k), 4)),
            rate=48000,
            bits=24,
        ),
        "float32.wav": riff(
            array.array("f", [v / 32768 for v in pcm44]).tobytes(), tag=3, rate=44100, bits=32
        ),
        "pcm8.wav": riff(bytes(((v >> 8) + 128) & 0xFF for v in samples16(pcm16)), bits=8),
        "extensible.wav": riff(interleave(pcm16, 2), channels=2, extensible=True),
        "extensible_mulaw.wav": riff(mulaw, tag=7, rate=8000, bits=8, extensible=True),
        "streamed_size_unknown.wav": riff(pcm16, data_size=0xFFFFFFFF),
        "rf64.wav": rf64(pcm16),
    }


def rf64(data: bytes) -> bytes:
    """An RF64 file: sizes in the ds64 chunk, 0xFFFFFFFF in the usual places."""
    ds64 = struct.pack("<QQQI", 0, len(data), len(data) // 2, 0)
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, 2 * RATE, 2, 16)
    body = b"WAVE" + chunk(b"ds64", ds64) + chunk(b"fmt ", fmt)
    body += b"data" + struct.pack("<I", 0xFFFFFFFF) + data
    return b"RF64" + struct.pack("<I", 0xFFFFFFFF) + body


async def test_stereo_32_bit_alaw_and_mulaw_wav_from_files_and_stdin(
    tmp_path: Path, server: str
) -> None:
    files = flavours()
    names = ["stereo_with_odd_chunks.wav", "pcm32_3ch.wav", "alaw.wav"]
    for name in names:
        (tmp_path / name).write_bytes(files[name])
    pcm = encode(WORDS, trail=0.3)
    runs = [
        *(call("transcribe", tmp_path / name, *remote(server), env=KEY) for name in names),
        call("transcribe", "-", *remote(server), stdin=files["mulaw.wav"], env=KEY),
        call(
            "transcribe",
            "-",
            "--encoding",
            "mulaw",
            *remote(server),
            stdin=encode(WORDS, encoding="mulaw", sample_rate=8000, trail=0.3),
            env=KEY,
        ),
        call(
            "transcribe",
            "-",
            "--encoding",
            "linear16",
            "--sample-rate",
            "16000",
            "--channels",
            "2",
            *remote(server),
            stdin=interleave(pcm, 2),
            env=KEY,
        ),
    ]
    what = [*names, "mulaw.wav on stdin", "raw mulaw on stdin", "raw stereo linear16 on stdin"]
    for name, result in zip(what, await concurrently(*runs), strict=True):
        assert (result.code, result.lines) == (0, [WORDS]), (name, result.err)


def test_every_wav_flavour_decodes_to_the_same_words(tmp_path: Path) -> None:
    """What the command sends for each file, read back by the emulator's decoder."""
    described = {
        "pcm16.wav": ("WAV, 16-bit PCM, 16000 Hz", "linear16", 16000),
        "stereo_with_odd_chunks.wav": (
            "WAV, 16-bit PCM, 2 channels mixed to mono, 16000 Hz",
            "linear16",
            16000,
        ),
        "pcm32_3ch.wav": ("WAV, 32-bit PCM, 3 channels mixed to mono, 24000 Hz", "linear32", 24000),
        "alaw.wav": ("WAV, a-law, 8000 Hz", "alaw", 8000),
        "mulaw.wav": ("WAV, mu-law, 8000 Hz", "mulaw", 8000),
        "mulaw_stereo.wav": (
            "WAV, mu-law, 2 channels mixed to mono, sent as linear16, 8000 Hz",
            "linear16",
            8000,
        ),
        "pcm24.wav": ("WAV, 24-bit PCM, sent as linear32, 48000 Hz", "linear32", 48000),
        "float32.wav": ("WAV, 32-bit float, sent as linear16, 44100 Hz", "linear16", 44100),
        "pcm8.wav": ("WAV, 8-bit PCM, sent as linear16, 16000 Hz", "linear16", 16000),
        "extensible.wav": (
            "WAV, 16-bit PCM, 2 channels mixed to mono, 16000 Hz",
            "linear16",
            16000,
        ),
        "extensible_mulaw.wav": ("WAV, mu-law, 8000 Hz", "mulaw", 8000),
        "streamed_size_unknown.wav": ("WAV, 16-bit PCM, 16000 Hz", "linear16", 16000),
        "rf64.wav": ("WAV, 16-bit PCM, 16000 Hz", "linear16", 16000),
        "voice.ogg": ("Ogg Opus", "ogg_opus", 48000),
    }
    for name, data in flavours().items():
        path = tmp_path / name
        path.write_bytes(data)
        source = open_source(str(path))
        try:
            assert (source.description, source.encoding, source.sample_rate) == described[name]
            decoder = TokenDecoder(source.encoding, source.sample_rate)
            words: list[str] = []
            seconds = 0.0
            while not source.eof:
                piece, duration = source.read(0.1)
                seconds += duration
                words += [w.word for w in decoder.feed(piece)]
            words += [w.word for w in decoder.end_word()]
        finally:
            source.close()
        assert " ".join(words) == WORDS, name
        assert source.duration == pytest.approx(seconds, abs=0.03), name


async def test_speed_paces_a_file(tmp_path: Path, server: str) -> None:
    audio, _ = layout(("paced words", 0.1, 1.3))  # 1.5 s of audio
    path = tmp_path / "paced.wav"
    path.write_bytes(riff(audio))
    started = time.monotonic()
    result = await pulse("transcribe", path, *remote(server), "--stats", "--speed", "2", env=KEY)
    elapsed = time.monotonic() - started
    assert (result.code, result.lines) == (0, ["paced words"]), result.err
    assert elapsed >= 0.75
    speed = re.search(r"\(([\d.]+)× real time\)", result.err)
    assert speed, result.err
    assert 1.6 <= float(speed[1]) <= 2.2


# -- output formats --------------------------------------------------------------------

SEGMENTS = (
    ("Hello there. How are you?", 0.1, 1.0),  # split at sentence punctuation
    ("one two three four five six seven eight nine ten", 0.1, 1.0),  # by length
    ("slow words keep coming along", 0.5, 1.0),  # by duration
)


async def test_srt_and_vtt_cues_texts_and_times(tmp_path: Path, server: str) -> None:
    audio, words = layout(*SEGMENTS)
    path = tmp_path / "talk.wav"
    path.write_bytes(riff(audio))
    out = tmp_path / "talk.srt"
    srt, vtt, sentences = await concurrently(
        call(
            "transcribe",
            path,
            *remote(server),
            "-f",
            "srt",
            "--max-cue-chars",
            "30",
            "--max-cue-seconds",
            "1.5",
            "-o",
            out,
            env=KEY,
        ),
        call("transcribe", path, *remote(server), "--format", "vtt", env=KEY),
        call(
            "transcribe",
            path,
            *remote(server),
            "-f",
            "srt",
            "--no-word-timestamps",
            "--sentence-timestamps",
            env=KEY,
        ),
    )
    assert srt.code == 0, srt.err
    assert srt.out == ""  # it went to --output
    span = {word: (start, end) for word, start, end in words}

    def cue(first: str, last: str, text: str, sep: str = ",") -> tuple[str, str, str]:
        return (srt_time(span[first][0], sep), srt_time(span[last][1], sep), text)

    assert [c[1:] for c in parse_srt(out.read_text(encoding="utf-8"))] == [
        cue("Hello", "there.", "Hello there."),
        cue("How", "you?", "How are you?"),
        cue("one", "five", "one two three four five"),  # cut evenly, not 27 + 20
        cue("six", "ten", "six seven eight nine ten"),
        cue("slow", "keep", "slow words keep"),
        cue("coming", "along", "coming along"),
    ]
    assert [c[0] for c in parse_srt(out.read_text(encoding="utf-8"))] == [1, 2, 3, 4, 5, 6]
    # WebVTT with the default limits (84 characters, 7 s); long cues wrap onto two lines.
    assert vtt.code == 0, vtt.err
    assert parse_vtt(vtt.out) == [
        cue("Hello", "there.", "Hello there.", "."),
        cue("How", "you?", "How are you?", "."),
        cue("one", "ten", "one two three four five\nsix seven eight nine ten", "."),
        cue("slow", "along", "slow words keep coming along", "."),
    ]
    # From sentence timestamps alone: the sentence's time is spread over its words.
    assert sentences.code == 0, sentences.err
    cues = parse_srt(sentences.out)
    assert [c[3] for c in cues] == [
        "Hello there.",
        "How are you?",
        "one two three four five\nsix seven eight nine ten",
        "slow words keep coming along",
    ]
    assert (cues[0][1], cues[1][2]) == (srt_time(0.0), srt_time(span["you?"][1]))
    assert cues[0][2] == cues[1][1]  # split inside the sentence's span
    assert srt_time(span["there."][0]) < cues[0][2] < srt_time(span["How"][1])


async def test_json_jsonl_text_and_stats(tmp_path: Path, server: str) -> None:
    audio, words = layout(*SEGMENTS[:2])
    path = tmp_path / "talk.wav"
    path.write_bytes(riff(audio))
    document, lines, text = await concurrently(
        call("transcribe", path, *remote(server), "-f", "json", env=KEY),
        call(
            "transcribe",
            path,
            *remote(server),
            "-f",
            "jsonl",
            "--vad-events",
            "--interims",
            env=KEY,
        ),
        call(
            "transcribe",
            path,
            *remote(server),
            "--diarize",
            "--stats",
            "--finalize-after-silence",
            "300",
            env=KEY,
        ),
    )
    assert document.code == 0, document.err
    parsed = json.loads(document.out)
    assert parsed["text"] == f"{SEGMENTS[0][0]} {SEGMENTS[1][0]}"
    assert parsed["language"] == "en"
    assert parsed["duration"] == pytest.approx(len(audio) / (2 * RATE), abs=0.01)
    assert [s["text"] for s in parsed["segments"]] == [SEGMENTS[0][0], SEGMENTS[1][0]]
    first = parsed["segments"][0]
    assert first["start"] == pytest.approx(0.0) and first["end"] == pytest.approx(words[4][2])
    assert [w["word"] for w in first["words"]] == SEGMENTS[0][0].split()  # on by default

    assert lines.code == 0, lines.err
    objects = [json.loads(line) for line in lines.lines]
    kinds = [o["type"] for o in objects]
    assert {"interim", "final", "speech_started", "speech_ended"} <= set(kinds)
    assert [o["text"] for o in objects if o["type"] == "final"] == [s[0] for s in SEGMENTS[:2]]
    assert kinds.index("speech_started") < kinds.index("interim") < kinds.index("final")

    assert text.code == 0, text.err
    assert text.lines == [f"[speaker 0] {s[0]}" for s in SEGMENTS[:2]]
    # --stats: latency of the finalizes the silence detector sent, and the rest.
    assert re.search(
        r"after finalize: p50 \d+ ms, p90 \d+ ms, p99 \d+ ms over 3 finalizes", text.err
    )
    assert "0 reconnects" in text.err and "dropped      none" in text.err
    speed = re.search(r"\(([\d.]+)× real time\)", text.err)  # files go as fast as they can
    assert speed and float(speed[1]) > 3, text.err


async def test_every_setting_reaches_the_server(tmp_path: Path, server: str) -> None:
    path = tmp_path / "settings.wav"
    path.write_bytes(riff(encode("one two three 5551234", trail=1.0)))
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY + "\n", encoding="utf-8")
    result = await pulse(
        "transcribe",
        path,
        *remote(server),
        "--api-key-file",
        key_file,
        "-v",
        "--language",
        "en",
        "--model",
        "pulse",
        "--word-timestamps",
        "--sentence-timestamps",
        "--no-diarize",
        "--redact-pii",
        "--no-redact-pci",
        "--numerals",
        "auto",
        "--keywords",
        "Pulse:2,Smallest",
        "--keywords",
        "token",
        "--full-transcript",
        "--itn",
        "--formatting",
        "--punctuate",
        "--capitalize",
        "--eou-timeout-ms",
        "900",
        "--max-words",
        "2",
        "--finalize-on-words",
        "--vad-events",
        "--endpointing",
        "--external-session-id",
        "cli-test.1",
    )
    assert result.code == 0, result.err
    assert result.lines == ["one two", "three [PHONENUMBER_1]"]  # max_words, redaction
    url = re.search(r"connecting \(attempt 1\) to (\S+)", result.err)
    assert url, result.err
    for param in (
        "model=pulse",
        "language=en",
        "word_timestamps=true",
        "sentence_timestamps=true",
        "full_transcript=true",
        "redact_pii=true",
        "redact_pci=false",
        "numerals=auto",
        "diarize=false",
        "itn_normalize=true",
        "format=true",
        "punctuate=true",
        "capitalize=true",
        "endpointing=true",
        "eou_timeout_ms=900",
        "finalize_on_words=true",
        "max_words=2",
        "vad_events=true",
        "keywords=Pulse:2,Smallest,token",
        "external_session_id=cli-test.1",
    ):
        assert param in url[1], param
    assert GOOD_KEY not in result.err + result.out


# -- errors ----------------------------------------------------------------------------


BAD_FILES = {
    "corrupt.wav": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00",
    "adpcm.wav": riff(b"\0" * 256, tag=0x11, bits=4),
    "rate.wav": riff(encode(WORDS), rate=11025),
    "ok.wav": riff(encode(WORDS, trail=0.2)),
}


def _check_usage_error(args: object, result: Result, expected: str) -> None:
    assert result.code == 2, (args, result)
    assert expected in result.err, (args, result.err)
    assert "Traceback" not in result.err
    assert result.out == ""
    assert BAD_KEY not in result.err
    if "usage:" not in result.err:
        assert len(result.err.strip().splitlines()) == 1, result.err  # one clear line


async def test_input_and_usage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    rates = "(8000, 16000, 22050, 24000, 44100, 48000)"
    cases: list[tuple[tuple[str, ...], Mapping[str, str], bytes, str]] = [
        (("missing.wav",), KEY, b"", "pulse: missing.wav: No such file or directory"),
        (("corrupt.wav",), KEY, b"", "corrupt.wav: the file ends inside the fmt chunk"),
        (("adpcm.wav",), KEY, b"", "IMA ADPCM audio (WAV format tag 0x0011) is not supported"),
        (("rate.wav",), KEY, b"", f"11025 Hz is not a sample rate Pulse accepts {rates}"),
        (
            ("ok.wav",),
            {},
            b"",
            "no API key: set SMALLEST_API_KEY or pass --api-key-file FILE, or use --local",
        ),
        (("ok.wav", "--bogus"), KEY, b"", "unrecognized arguments: --bogus"),
    ]
    results = await concurrently(
        *(
            call("transcribe", *args, env=env, stdin=stdin, cwd=tmp_path)
            for args, env, stdin, _ in cases
        )
    )
    for (args, _, _, expected), result in zip(cases, results, strict=True):
        _check_usage_error(args, result, expected)


def test_more_usage_errors_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checks made before any connection, through the command's own main()."""
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMALLEST_API_KEY", GOOD_KEY)
    cases: list[tuple[tuple[str, ...], str]] = [
        ((str(tmp_path),), "s a directory"),
        (("ok.wav", "--api-key", BAD_KEY), "there is no --api-key option"),
        (("ok.wav", "--eou-timeout-ms", "5"), "invalid --eou-timeout-ms 5: an integer"),
        (("ok.wav", "--sample-rate", "8000"), "--sample-rate 8000 do not match this WAV input"),
        (("ok.wav", "--api-key-file", BAD_KEY), "--api-key-file: cannot read the key file"),
        (("ok.wav", "--language", "xx"), "invalid --language 'xx': one of en, hi"),
        (("ok.wav", "--keywords", "a:b:c"), "invalid --keywords"),
        (("ok.wav", "-f", "srt", "--no-word-timestamps"), "--format srt needs timestamps"),
        (("ok.wav", "-o", "ok.wav"), "is the input file"),
        (("ok.wav", "-o", "no/such/dir/out.txt"), "--output no/such/dir/out.txt: No such file"),
        (("ok.wav", "--local", "--base-url", "ws://127.0.0.1:1"), "--local and --base-url"),
        (("ok.wav", "--base-url", "ws://192.0.2.1:8765"), "plain ws:// would send audio"),
        (("ok.wav", "--base-url", "http://x"), "invalid --base-url http://x: a ws:// or wss://"),
        (("ok.wav", "--region", "india", "--language", "xx"), "invalid --language"),
        (("voice.ogg", "--finalize-after-silence", "300"), "needs PCM or G.711 audio"),
    ]
    (tmp_path / "voice.ogg").write_bytes(ogg_opus_stream(WORDS))
    for args, expected in cases:
        code = main(["transcribe", *args])
        captured = capsys.readouterr()
        _check_usage_error(args, Result(code, captured.out, captured.err), expected)
    for args, expected in [
        (("ok.wav", "-f", "docx"), "invalid choice: 'docx'"),
        (("ok.wav", "--speed", "0"), "'0' must be a number above 0"),
        (("ok.wav", "--realtime", "--speed", "2"), "not allowed with argument"),
        (("ok.wav", "--langauge", "en"), "(did you mean --language?)"),
        ((), "the following arguments are required: PATH"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["transcribe", *args])
        captured = capsys.readouterr()
        _check_usage_error(args, Result(int(exit_.value.code or 0), "", captured.err), expected)


def test_unreadable_inputs_in_process(tmp_path: Path) -> None:
    pcm = encode(WORDS)
    cases = {
        "inconsistent.wav": (riff(pcm, bits=12, channels=3), "the fmt chunk is inconsistent"),
        "empty.wav": (riff(b""), "holds no audio"),
        "nothing.wav": (b"", "empty input"),
        "riff_avi.wav": (b"RIFF\x04\x00\x00\x00AVI ", "a RIFF file of type 'AVI', not WAVE"),
        "big_endian.wav": (b"RIFX\x04\x00\x00\x00WAVE", "big-endian WAV (RIFX)"),
        "no_data.wav": (riff(pcm)[:36], "no data chunk"),
        "data_first.wav": (b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00", "before the fmt"),
        "zero_channels.wav": (riff(pcm, channels=0), "0 channels"),
        "song.mp3": (b"ID3\x04" + b"\0" * 64, "MP3 audio is not supported"),
        "song.flac": (b"fLaC" + b"\0" * 64, "FLAC audio is not supported"),
        "clip.m4a": (b"\0\0\0\x20ftypM4A " + b"\0" * 64, "MP4/M4A audio is not supported"),
        "vorbis.ogg": (
            b"OggS\x00\x02" + b"\0" * 22 + b"\x01vorbis" + b"\0" * 40,
            "Ogg Vorbis audio is not supported",
        ),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError) as error:
            open_source(str(tmp_path / name))
        assert str(error.value).startswith(f"{tmp_path / name}: "), name
        assert expected in str(error.value), (name, str(error.value))
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pcm)
    for options, expected in [
        ({"encoding": "opus"}, "raw Opus packets cannot be read"),
        ({"encoding": "ogg_opus"}, "not an Ogg stream"),
        ({"encoding": "linear16", "sample_rate": 32000}, "32000 Hz is not a sample rate"),
    ]:
        with pytest.raises(InputError, match=re.escape(expected)):
            open_source(str(raw), **options)  # type: ignore[arg-type]


async def test_a_wrong_key_is_exit_3_and_never_printed(
    tmp_path: Path, hello: Path, server: str
) -> None:
    key_file = tmp_path / "wrong-key"
    key_file.write_text(BAD_KEY, encoding="utf-8")
    from_env, from_file = await concurrently(
        call("transcribe", hello, *remote(server), "-v", env={"SMALLEST_API_KEY": BAD_KEY}),
        # The file wins over a (good) key in the environment.
        call("transcribe", hello, *remote(server), "--api-key-file", key_file, env=KEY),
    )
    assert from_env.code == 3, from_env.err
    assert "the API key was refused (HTTP 401" in from_env.err
    assert "check SMALLEST_API_KEY" in from_env.err
    assert from_file.code == 3 and "check the file given to --api-key-file" in from_file.err
    for result in (from_env, from_file):
        assert BAD_KEY not in result.err + result.out
        assert "Traceback" not in result.err


async def test_the_network_giving_up_is_exit_4(hello: Path) -> None:
    port = closed_port()
    result = await pulse(
        "transcribe",
        hello,
        "--base-url",
        f"ws://127.0.0.1:{port}",
        "--reconnect-attempts",
        "2",
        env={"SMALLEST_API_KEY": BAD_KEY},
    )
    assert result.code == 4, result.err
    assert "could not connect" in result.err and "trying again" in result.err
    assert "gave up after 2 attempts" in result.err and "close timed out" not in result.err
    assert BAD_KEY not in result.err and "Traceback" not in result.err


async def test_no_service_before_the_input_ends_is_one_line_and_exit_4(tmp_path: Path) -> None:
    """Nothing listens, and the close of a short input gives up before the
    reconnect policy does: the command says in one line that the service could
    not be reached and why, and blames neither the close nor a turn's final."""
    short = tmp_path / "short.wav"
    short.write_bytes(riff(encode("hi", trail=0.1)))
    port = closed_port()
    result = await pulse(
        "transcribe",
        short,
        "--base-url",
        f"ws://127.0.0.1:{port}",
        env={"SMALLEST_API_KEY": BAD_KEY},
    )
    assert result.code == 4, result.err
    lines = [line for line in result.err.splitlines() if "trying again" not in line]
    # Every dropped second is reported, as what it is: the session failed.
    dropped = [line for line in lines if "will not be transcribed" in line]
    assert dropped and all("the session failed" in line for line in dropped), dropped
    [verdict] = [line for line in lines if line not in dropped]
    assert re.fullmatch(
        rf"pulse: ws://127\.0\.0\.1:{port}: could not reach the service after \d+ failed "
        r"attempts: .+ \(check the network, --base-url and --region\)",
        verdict,
    ), verdict
    for blame in ("close timed out", "close_timeout", "no final within"):
        assert blame not in result.err
    assert result.out == "" and BAD_KEY not in result.err


# -- the command line itself -----------------------------------------------------------


async def test_help_documents_exit_statuses_and_python_m_is_pulse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top = await pulse("--help")
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    sub = Result(0, capsys.readouterr().out, "")
    for result in (top, sub):
        assert result.code == 0
        for status in ("0 ", "2 ", "3 ", "4 ", "130 "):
            assert f"\n  {status}" in result.out
        assert "AuthenticationError, PermissionDeniedError" in result.out
        assert "ConnectionGaveUpError" in result.out
    assert "usage: pulse transcribe PATH [options]" in sub.out
    for option in ("--realtime", "--speed", "--format", "--output", "--stats", "--local"):
        assert option in sub.out
    import pulse_trio.cli as cli  # noqa: PLC0415

    assert cli.__doc__ is not None
    assert "130 interrupted" in cli.__doc__ and "ConnectionGaveUpError" in cli.__doc__


def test_timestamps_wrapping_and_escaping() -> None:
    assert timestamp(3723.4567) == "01:02:03,457"
    assert timestamp(3723.4567, sep=".") == "01:02:03.457"
    assert timestamp(0.0004) == "00:00:00,000" and timestamp(59.9996) == "00:01:00,000"
    assert timestamp(360000.0) == "100:00:00,000"
    event = Transcript(
        text="<b> & 1 -- > x",
        is_final=True,
        words=tuple(
            Word(word=w, start=i, end=i + 0.5)
            for i, w in enumerate(["<b>", "&", "1", "--", ">", "x"])
        ),
    )
    out = make_formatter("vtt").final(event)
    assert out == "00:00:00.000 --> 00:00:05.500\n&lt;b&gt; &amp; 1 -- &gt; x\n\n"
    # A cue never starts before the previous one ends, and never has no duration.
    srt = make_formatter("srt")
    first = srt.final(
        Transcript(text="a.", is_final=True, words=(Word(word="a.", start=1, end=2),))
    )
    second = srt.final(
        Transcript(text="b", is_final=True, words=(Word(word="b", start=1.5, end=1.5),))
    )
    assert "00:00:01,000 --> 00:00:02,000" in first
    assert second == "2\n00:00:02,000 --> 00:00:02,200\nb\n\n"


def test_pulse_emulator_command_still_checks_its_options(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.startswith("ws://127.0.0.1:")  # `pulse emulator` served every test above
    assert main(["emulator", "--port", "70000"]) == 2
    assert "not a port" in capsys.readouterr().err


# -- interruption and terminals ----------------------------------------------------------


@posix_only
def test_first_ctrl_c_finishes_the_transcript_and_exits_130(tmp_path: Path) -> None:
    audio, _ = layout(
        ("first turn", 0.1, 1.0), ("second turn words", 0.3, 1.0), ("never sent", 0.1, 1.0)
    )
    path = tmp_path / "long.wav"
    path.write_bytes(riff(audio))
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "pulse_trio", "transcribe", path),
            *("--local", "--engine", "token", "--realtime"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(None),
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    time.sleep(0.5)  # "second" has been sent, the turn is not finished
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert first == "first turn\n"
    assert out.startswith("second"), out  # the turn in progress was delivered
    assert "never" not in out
    assert "interrupted: finishing the transcript" in err and "Traceback" not in err


@posix_only
def test_second_ctrl_c_stops_at_once(hello: Path) -> None:
    with socket.socket() as listener:  # accepts, then never answers the handshake
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        process = subprocess.Popen(
            [sys.executable, "-m", "pulse_trio", "transcribe", hello, *remote(url)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=command_env({"SMALLEST_API_KEY": BAD_KEY}),
        )
        listener.settimeout(20)
        connection, _ = listener.accept()  # the command is up and connecting
        time.sleep(0.5)  # and has queued the audio: now there is something to finish
        with connection:
            assert process.stderr is not None
            process.send_signal(signal.SIGINT)
            assert "interrupted" in process.stderr.readline()
            time.sleep(0.2)
            assert process.poll() is None  # still finishing: the handshake hangs
            stopped = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert out == ""
    assert time.monotonic() - stopped < 3
    assert "stopped before the transcript was finished" in err and "Traceback" not in err
    assert BAD_KEY not in err


def _read_pty(fd: int) -> bytes:
    data = b""
    while True:
        try:
            more = os.read(fd, 4096)
        except OSError:  # the child closed its end
            return data
        if not more:
            return data
        data += more


@posix_only
def test_on_a_terminal_interims_rewrite_in_place_and_progress_shows(
    tmp_path: Path, server: str
) -> None:
    import pty  # noqa: PLC0415 - POSIX only

    audio, _ = layout(("watch it arrive", 0.15, 0.9))
    path = tmp_path / "live.wav"
    path.write_bytes(riff(audio))
    command = [sys.executable, "-m", "pulse_trio", "transcribe", str(path), *remote(server)]
    # stdout and stderr on the terminal: progress and the live turn on one line.
    master, slave = pty.openpty()
    both = subprocess.Popen(
        [*command, "--realtime"],
        stdout=slave,
        stderr=slave,
        env=command_env({**KEY, "NO_COLOR": "1"}),
    )
    os.close(slave)
    screen = _read_pty(master).decode()
    os.close(master)
    assert both.wait(timeout=20) == 0
    assert "\r\x1b[K" in screen
    assert re.search(r"[\d.]+/1\.5 s sent · [\d.]+ s elapsed · [\d.]+× real time", screen)
    assert "│ watch it" in screen  # the interim, next to the progress
    assert "\r\x1b[Kwatch it arrive\r\n" in screen  # the final replaces the line
    assert "\x1b[2m" not in screen  # NO_COLOR
    assert "live.wav: WAV, 16-bit PCM, 16000 Hz, 1.5 s" in screen
    summary = re.search(
        r"1\.5 s of audio transcribed in ([\d.]+) s \(([\d.]+)× real time\)", screen
    )
    assert summary, screen  # --realtime: paced like a live source
    assert float(summary[1]) >= 1.45 and 0.85 <= float(summary[2]) <= 1.05
    # Only stdout on the terminal: the interim is rewritten there; no progress.
    master, slave = pty.openpty()
    only_out = subprocess.Popen(command, stdout=slave, stderr=subprocess.PIPE, env=command_env(KEY))
    os.close(slave)
    screen = _read_pty(master).decode()
    os.close(master)
    assert only_out.stderr is not None
    err = only_out.stderr.read().decode()
    only_out.stderr.close()
    assert only_out.wait(timeout=20) == 0, err
    assert "\r\x1b[Kwatch" in screen and screen.endswith("\r\x1b[Kwatch it arrive\r\n")
    assert "s sent" not in screen + err
