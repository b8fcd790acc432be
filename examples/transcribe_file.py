"""Transcribe a WAV file with pulse_trio.open_session().

    python examples/transcribe_file.py [FILE.wav] [--local]

With SMALLEST_API_KEY set (and no --local) this talks to the Pulse service.
Without a key, or with --local, it starts the local emulator in-process, which
recognises *token audio* such as the shipped examples/hello.wav (made with
pulse_trio.emulator.token_audio; see the README).
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import wave
from pathlib import Path

import trio

from pulse_core import SAMPLE_RATES, Closed, Transcript
from pulse_trio import open_session
from pulse_trio.emulator import Emulator

HERE = Path(__file__).resolve().parent
CHUNK_SECONDS = 0.1


def read_wav(path: Path) -> tuple[bytes, str, int]:
    """PCM samples (mono), their encoding and sample rate."""
    with wave.open(str(path), "rb") as wav:
        width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width not in (2, 4):
        raise ValueError(f"{path}: {8 * width}-bit PCM is not supported (16 or 32-bit)")
    if rate not in SAMPLE_RATES:
        raise ValueError(f"{path}: {rate} Hz is not accepted ({', '.join(map(str, SAMPLE_RATES))})")
    if channels > 1:  # the service takes mono: average the channels
        samples = array.array("h" if width == 2 else "i", frames)
        mono = array.array(
            samples.typecode,
            (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)),
        )
        frames = mono.tobytes()
    return frames, "linear16" if width == 2 else "linear32", rate


async def transcribe(path: Path, *, local: bool) -> int:
    audio, encoding, rate = read_wav(path)
    key = os.environ.get("SMALLEST_API_KEY")
    async with trio.open_nursery() as nursery:
        options: dict[str, object] = {}
        if local or not key:
            emulator = await nursery.start(Emulator().serve)
            options = {"base_url": emulator.url()}
            key = "sk_local_emulator"
            print(
                f"(using the local emulator at {emulator.url()}, engine: token audio)",
                file=sys.stderr,
            )
        async with open_session(
            key, encoding=encoding, sample_rate=rate, settings={"language": "en"}, **options
        ) as session:

            @session.event_handler("on_final_transcript")
            def show(event: Transcript) -> None:
                if event.text:
                    print(event.text, flush=True)

            @session.event_handler("on_closed")
            def summary(event: Closed) -> None:
                s = event.summary
                print(
                    f"({s.audio_seconds_sent:.1f} s of audio, {s.finals} finals, {s.reconnects} reconnects)",
                    file=sys.stderr,
                )

            step = int(rate * CHUNK_SECONDS) * (2 if encoding == "linear16" else 4)
            for offset in range(0, len(audio), step):
                await session.send_audio(audio[offset : offset + step])
            # Leaving the block sends close_stream and waits for the last final.
        nursery.cancel_scope.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Transcribe a WAV file with Pulse.")
    parser.add_argument("file", nargs="?", type=Path, default=HERE / "hello.wav")
    parser.add_argument("--local", action="store_true", help="use the in-process emulator")
    args = parser.parse_args()
    try:
        return trio.run(lambda: transcribe(args.file, local=args.local))
    except (OSError, ValueError, wave.Error) as exc:
        print(f"transcribe_file: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
