"""Benchmark of pulse_core's hot paths (a benchmark, not a test: it asserts nothing).

    python bench/core_bench.py [--chunks N] [--parses N]

Prints:
* the cost of the audio path per 20 ms chunk (640 bytes of 16 kHz linear16) on an
  open connection, including coalescing, framing, the replay buffer and its
  eviction, and draining the commands (goal: under 3 us);
* the cost of parsing a 10-word final with word timestamps;
* the same parse by the ``smallestai`` SDK's models, when that package is
  installed, and the ratio (goal: pulse no slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from pulse_core import ConnectionConfig, PulseConnection, parse_server_message

CHUNK = b"\x01\x02" * 320  # 20 ms at 16 kHz, 16-bit

FINAL = json.dumps(
    {
        "type": "transcription",
        "status": "success",
        "session_id": "4b5ae9cb-1234-5678-9abc-def012345678",
        "transcript": "I paid using my card ending in four two one two.",
        "transcription": "I paid using my card ending in four two one two.",
        "is_final": True,
        "is_last": False,
        "from_finalize": True,
        "language": "en",
        "languages": ["en"],
        "words": [
            {"word": word, "start": 0.3 * i, "end": 0.3 * i + 0.25, "confidence": 0.9 + i / 100}
            for i, word in enumerate(
                ["I", "paid", "using", "my", "card", "ending", "in", "four", "two", "one"]
            )
        ],
    }
)


def best_of(runs: int, body: Callable[[], float]) -> float:
    """The lowest of ``runs`` measurements (the least disturbed one)."""
    return min(body() for _ in range(runs))


def audio_path(chunks: int) -> float:
    """Microseconds per chunk of send_audio on an open connection."""
    conn = PulseConnection(ConnectionConfig(api_key="sk_bench", base_url="ws://127.0.0.1:1"))
    conn.start(0.0)
    conn.connection_opened(0.0)
    conn.commands()
    conn.events()
    send = conn.send_audio
    drain = conn.commands
    now = 0.0
    step = 0.02
    # Warm up past the replay bound so eviction is part of the steady state.
    for _ in range(2000):
        now += step
        send(now, CHUNK)
    drain()
    started = time.perf_counter()
    for i in range(chunks):
        now += step
        send(now, CHUNK)
        if i % 8 == 7:
            drain()
    elapsed = time.perf_counter() - started
    return elapsed / chunks * 1e6


def parse(parses: int, fn: Callable[[str], object]) -> float:
    started = time.perf_counter()
    for _ in range(parses):
        fn(FINAL)
    return (time.perf_counter() - started) / parses * 1e6


def sdk_parser() -> Callable[[str], object] | None:
    try:
        from smallestai.core.unchecked_base_model import construct_type  # type: ignore[import-not-found]
        from smallestai.waves.speech_to_text.socket_client import (  # type: ignore[import-not-found]
            SpeechToTextSocketClientResponse,
        )
    except ImportError:
        return None

    def parse_with_sdk(data: str) -> object:
        # What the SDK's socket client does with every message it receives.
        return construct_type(type_=SpeechToTextSocketClientResponse, object_=json.loads(data))

    return parse_with_sdk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--parses", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    per_chunk = best_of(args.runs, lambda: audio_path(args.chunks))
    print(f"audio path: {per_chunk:.2f} us per 20 ms chunk (goal < 3 us), best of {args.runs}")

    ours = best_of(args.runs, lambda: parse(args.parses, parse_server_message))
    print(f"parse 10-word final with word timestamps: {ours:.1f} us (pulse_core)")
    sdk = sdk_parser()
    if sdk is None:
        print("parse by the smallestai SDK: not installed (pip install smallestai to compare)")
        return
    theirs = best_of(args.runs, lambda: parse(args.parses, sdk))
    print(f"parse 10-word final with word timestamps: {theirs:.1f} us (smallestai SDK)")
    ratio = theirs / ours
    print(
        f"ratio: pulse_core is {ratio:.2f}x the SDK's speed ({'goal met' if ratio >= 1 else 'slower'})"
    )
    spread = statistics.pstdev([parse(args.parses // 10, parse_server_message) for _ in range(3)])
    print(f"(pulse_core parse spread across short runs: {spread:.1f} us)")


if __name__ == "__main__":
    main()
