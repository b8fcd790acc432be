"""Transcribe a WAV file with pulse_trio.open_session().

    python examples/transcribe_file.py [FILE.wav] [--local] [--base-url URL] [-v]

With SMALLEST_API_KEY set (and no --local) this talks to the Pulse service, or
to the server at --base-url. Without a key, or with --local, it starts the
local emulator in-process, which recognises *token audio* such as the shipped
examples/hello.wav (made with pulse_trio.emulator.token_audio; see the README).

Finals go to stdout. When the session fails (the network is down, the key is
refused), one line says why on stderr and the exit status is 1; a file that
cannot be read exits with 2. -v shows the session's progress as it goes.
"""

from __future__ import annotations

import argparse
import array
import logging
import os
import sys
import wave
from pathlib import Path

import trio

from pulse_core import SAMPLE_RATES, Closed, Transcript
from pulse_trio import SessionFailedError, open_session
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


async def transcribe(path: Path, *, local: bool, base_url: str | None) -> int:
    audio, encoding, rate = read_wav(path)
    key = os.environ.get("SMALLEST_API_KEY")
    if key and not local:
        return await stream(audio, encoding, rate, key, base_url)
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(Emulator().serve)
        print(
            f"(using the local emulator at {emulator.url()}, engine: token audio)",
            file=sys.stderr,
        )
        status = await stream(audio, encoding, rate, "sk_local_emulator", emulator.url())
        nursery.cancel_scope.cancel()
    return status


async def stream(audio: bytes, encoding: str, rate: int, key: str, base_url: str | None) -> int:
    """Send the audio as if it were live; 0, or 1 when the session fails."""
    try:
        async with open_session(
            key,
            encoding=encoding,
            sample_rate=rate,
            settings={"language": "en"},
            base_url=base_url,
        ) as session:

            @session.event_handler("on_final_transcript")
            def show(event: Transcript) -> None:
                if event.text:
                    print(event.text, flush=True)

            @session.event_handler("on_closed")
            def summary(event: Closed) -> None:
                if event.error is None:
                    s = event.summary
                    print(
                        f"({s.audio_seconds_sent:.1f} s of audio, {s.finals} finals, "
                        f"{s.reconnects} reconnects)",
                        file=sys.stderr,
                    )

            step = int(rate * CHUNK_SECONDS) * (2 if encoding == "linear16" else 4)
            for offset in range(0, len(audio), step):
                await session.send_audio(audio[offset : offset + step])
            # Leaving the block sends close_stream and waits for the last final.
    except SessionFailedError as exc:
        # Caught here, before this example's own nursery (the emulator's) could
        # wrap it in an ExceptionGroup: one line says it all.
        why = str(exc)
        failure = exc.failure
        if failure is not None and failure.reason and failure.reason not in why:
            why += f" (last connection attempt: {failure.reason})"
        print(f"transcribe_file: {why}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Transcribe a WAV file with Pulse.")
    parser.add_argument("file", nargs="?", type=Path, default=HERE / "hello.wav")
    parser.add_argument("--local", action="store_true", help="use the in-process emulator")
    parser.add_argument("--base-url", help="a server other than the service (with a key)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the session's progress")
    args = parser.parse_args()
    # The session logs its reconnects and losses; shown with -v (errors always).
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s"
    )
    try:
        return trio.run(lambda: transcribe(args.file, local=args.local, base_url=args.base_url))
    except (OSError, ValueError, wave.Error) as exc:
        print(f"transcribe_file: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
